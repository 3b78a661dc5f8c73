"""Paths that are local files or objects in a bucket (`gs://`, `s3://`): every file a run reads or writes
goes through these functions, so a workdir, a video folder or an annotation file can live in object storage.

Local paths become absolute paths; a URL stays a URL (`os.path.abspath('gs://b/run')` would silently make a
local folder named `gs:`) and is served by `etils.epath`, whose object-store backends need an fsspec package
(gcsfs for `gs://`, s3fs for `s3://`): without it, the error names the package to install. Object stores
have no appending and no atomic rename, so `AppendFile` rewrites the object and `replace` copies.
"""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import functools
import glob as glob_lib
import importlib.util
import os
import shutil
import tempfile
import time
from typing import IO, Iterator

from etils import epath

# URL scheme -> the Python package that serves it (through fsspec, which epath uses without TensorFlow)
BACKENDS = {"gs": "gcsfs", "s3": "s3fs"}


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


@functools.lru_cache(maxsize=None)
def _check_backend(scheme: str, example: str) -> None:
    if scheme not in BACKENDS:
        raise ValueError(f"{example}: {scheme}:// is not a supported location (local paths, "
                         f"{', '.join(s + '://' for s in BACKENDS)} are)")
    package = BACKENDS[scheme]
    if importlib.util.find_spec(package) is None and importlib.util.find_spec("tensorflow") is None:
        raise ModuleNotFoundError(f"{example} is in object storage ({scheme}://), which needs the {package} "
                                  f"package: pip install {package}")


def resolve(path) -> str:
    """The canonical string of a path: absolute for a local one, the URL (without a trailing /) for a remote
    one, whose backend is checked here, so a missing package fails before any work."""
    text = os.fspath(path)
    if not is_remote(text):
        return os.path.abspath(os.path.expanduser(text))
    scheme, rest = text.split("://", 1)
    _check_backend(scheme, text)
    return f"{scheme}://{rest.rstrip('/')}"


def as_epath(path) -> epath.Path:
    return epath.Path(resolve(path))


def isabs(path) -> bool:
    return is_remote(path) or os.path.isabs(os.fspath(path))


def within(root, path) -> bool:
    """Whether `path` lies under the folder `root` once `..` and (locally) symbolic links are resolved: what
    an annotation file names may not reach files outside the data root it was given."""
    if is_remote(root) or is_remote(path):
        import posixpath

        def split(p):
            scheme, _, rest = os.fspath(p).partition("://")
            return scheme, posixpath.normpath("/" + rest)
        (scheme, base), (path_scheme, normal) = split(root), split(path)
        return scheme == path_scheme and (normal == base or normal.startswith(base.rstrip("/") + "/"))
    base = os.path.realpath(root)
    return os.path.commonpath([base, os.path.realpath(path)]) == base


def exists(path) -> bool:
    return os.path.exists(path) if not is_remote(path) else as_epath(path).exists()


def isfile(path) -> bool:
    return os.path.isfile(path) if not is_remote(path) else as_epath(path).is_file()


def isdir(path) -> bool:
    return os.path.isdir(path) if not is_remote(path) else as_epath(path).is_dir()


def makedirs(path) -> None:
    """A folder and its parents (object stores have no folders: nothing to do there)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
    else:
        resolve(path)


def open(path, mode: str = "r") -> IO:  # noqa: A001 (the builtin's name on purpose: a drop-in)
    if not is_remote(path):
        return builtins.open(path, mode)
    if "a" in mode:
        raise ValueError(f"{path}: object stores cannot append to a file; use paths.AppendFile")
    return as_epath(path).open(mode)


def read_text(path) -> str:
    with open(path) as f:
        return f.read()


def write_text(path, text: str) -> None:
    """The whole file at once: complete or (on a crash, locally) the previous version, never half of it."""
    if is_remote(path):
        as_epath(path).write_text(text)  # an object appears whole when its upload ends
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with builtins.open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_new(path, text: str) -> bool:
    """Write the whole file only where none exists: whether it was written. Locally this is exclusive (written
    under another name, then hard-linked: the link fails when the file exists), so of two writers one wins.
    Object stores reached through fsspec offer no exclusive create: there it is a check then a write, and a
    caller that needs one winner reads the file back after a while (core/run_lock.py)."""
    if is_remote(path):
        if exists(path):
            return False
        as_epath(path).write_text(text)
        return True
    tmp = f"{path}.new{os.getpid()}"
    with builtins.open(tmp, "w") as f:
        f.write(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


class AppendFile:
    """Text added to the end of a file (a JSONL log), on disk at each `flush`. A local file is appended to; a
    bucket's object, which cannot be, is rewritten whole from the text kept here (read once at the start), at
    most every `upload_every_s` seconds (and at `flush(force=True)` and `close`), so that a long log does not
    cost its whole size in uploads at every line."""

    def __init__(self, path, upload_every_s: float = 0.0):
        self.path, self.upload_every_s = path, upload_every_s
        self._text = (read_text(path) if exists(path) else "") if is_remote(path) else None
        self._file = None if is_remote(path) else builtins.open(path, "a")
        self._uploaded_at, self._pending = time.monotonic(), False

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
        else:
            self._text, self._pending = self._text + text, True

    def flush(self, force: bool = False) -> None:
        if self._file is not None:
            self._file.flush()
        elif self._pending and (force or time.monotonic() - self._uploaded_at >= self.upload_every_s):
            write_text(self.path, self._text)
            self._uploaded_at, self._pending = time.monotonic(), False

    def close(self) -> None:
        self.flush(force=True)
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def listdir(path) -> list[str]:
    """The names in a folder, sorted."""
    if not is_remote(path):
        return sorted(os.listdir(path))
    return sorted(p.name for p in as_epath(path).iterdir())


def walk(path) -> Iterator[tuple[str, list[str], list[str]]]:
    if not is_remote(path):
        yield from os.walk(path)
        return
    scheme = os.fspath(path).split("://", 1)[0]
    for root, dirs, files in as_epath(path).walk():
        root = str(root)  # fsspec's walk leaves the scheme out: put it back
        yield (root if is_remote(root) else f"{scheme}://{root.lstrip('/')}"), list(dirs), list(files)


def glob(pattern: str) -> list[str]:
    """Sorted matches of a pattern where `**` spans folders (epath's own glob refuses `**` on buckets)."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern, recursive=True))
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    root = "/".join(parts[:fixed])
    if not isdir(root):
        return []
    out = []
    for folder, dirs, files in walk(root):
        out += [os.path.join(folder, n) for n in dirs + files if _match(os.path.join(folder, n), pattern)]
    return sorted(out)


def _match(path: str, pattern: str) -> bool:
    if "**" not in pattern:
        return fnmatch.fnmatchcase(path, pattern) and path.count("/") == pattern.count("/")
    return fnmatch.fnmatchcase(path, pattern.replace("**/", "*").replace("**", "*"))


def getsize(path) -> int:
    return os.path.getsize(path) if not is_remote(path) else as_epath(path).stat().length


def remove(path) -> None:
    if not is_remote(path):
        os.remove(path)
    else:
        as_epath(path).unlink()


def copy(src, dst) -> None:
    """A file to another place, either of them local or remote."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
        return
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def replace(src, dst) -> None:
    """Move src over dst: atomic on a local disk; on a bucket a copy then a delete (dst is whole either way)."""
    if not is_remote(src) and not is_remote(dst):
        os.replace(src, dst)
        return
    copy(src, dst)
    remove(src)


@contextlib.contextmanager
def local_copy(path) -> Iterator[str]:
    """A local file with the contents of `path`, for libraries that need a file name (a memory map, a
    tokenizer): the path itself when it is local, a temporary download (removed afterwards) otherwise."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix="liteframe_") as folder:
        target = os.path.join(folder, os.path.basename(os.fspath(path)))
        copy(path, target)
        yield target


def for_reading(path):
    """What a reader that takes a file name or a file object gets (PyAV, NumPy): the name of a local file,
    which lets it do its own I/O, or an open binary file of a remote one (seekable, read in ranges)."""
    return os.fspath(path) if not is_remote(path) else as_epath(path).open("rb")
