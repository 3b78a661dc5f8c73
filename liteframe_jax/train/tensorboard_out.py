"""TensorBoard event files in a bucket, written through `core.paths` (the same backends as the rest of a run).

tensorboardX's own `gs://` writer needs google-cloud-storage and uploads its whole file again when the writer
is garbage-collected, even after `close` (at interpreter exit, after the bucket may be gone). This one
uploads at tensorboardX's flushes and at `close`, once.
"""

from __future__ import annotations

import io

from liteframe_jax.core import paths


class BucketEventFile:
    """One event file: its bytes kept in memory, the object rewritten whole at each flush."""

    def __init__(self, path: str):
        self.path, self._buffer, self._closed, self._dirty = path, io.BytesIO(), False, False

    def write(self, data: bytes) -> None:
        self._buffer.write(data)
        self._dirty = True

    def flush(self) -> None:
        if self._dirty and not self._closed:
            with paths.open(self.path, "wb") as f:
                f.write(self._buffer.getvalue())
            self._dirty = False

    def close(self) -> None:
        self.flush()
        self._closed = True


class _Factory:
    def open(self, path: str) -> BucketEventFile:
        return BucketEventFile(path)

    def directory_check(self, path: str) -> None:
        paths.resolve(path)  # object stores have no folders; the backend is checked


def register_bucket_writers() -> None:
    """Route tensorboardX's writers for every URL scheme `core.paths` knows through it."""
    from tensorboardX import record_writer
    for scheme in paths.BACKENDS:
        record_writer.register_writer_factory(scheme, _Factory())
