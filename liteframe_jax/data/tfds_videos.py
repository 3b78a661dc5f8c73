"""A folder of videos as a TensorFlow Datasets dataset (ArrayRecord; built and read without TensorFlow), and CTD
input from it: `--config.data.videos=tfds:NAME`.

  python -m liteframe_jax.data.tfds_videos --videos=/data/videos --name=my_videos [--data_dir=DIR]

builds `DIR/liteframe_videos/my_videos/1.0.0/` (DIR: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`): one
record per video file with its encoded bytes as they are (no re-encoding) and its path relative to the folder,
in sorted path order, so a run on the dataset sees the clips in the order a run on the folder does. Any TFDS
reader opens it (`tfds.data_source('liteframe_videos/my_videos', data_dir=DIR)`); a run reads it through
`data/tfds_records.py`.
"""

from __future__ import annotations

import functools
import os

from liteframe_jax.core import paths
from liteframe_jax.data import clips
from liteframe_jax.data.tfds_records import VERSION, data_source, default_data_dir, tfds_module


@functools.lru_cache(maxsize=None)  # TFDS registers a builder class by name once per process
def _builder_class():
    tfds = tfds_module()
    import numpy as np

    class LiteframeVideos(tfds.core.GeneratorBasedBuilder):
        """One record per video file: its bytes and its path relative to the folder."""

        VERSION = tfds.core.Version(VERSION)

        def __init__(self, *, videos: str | None = None, **kwargs):
            self._videos = videos
            super().__init__(**kwargs)

        def _info(self):
            # disable_shuffling: records in the sorted order of their paths, record i the folder's i-th video
            return tfds.core.DatasetInfo(
                builder=self, description="Video files as they are (encoded bytes) with their relative paths.",
                disable_shuffling=True,
                features=tfds.features.FeaturesDict({"video": tfds.features.Tensor(shape=(), dtype=np.object_),
                                                     "path": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            del dl_manager
            if not self._videos:
                raise ValueError("building a liteframe_videos dataset needs the folder of videos (--videos)")
            return {"train": self._generate_examples(self._videos)}

        def _generate_examples(self, folder):
            for path in clips.list_videos(folder):
                relative = os.path.relpath(path, folder)
                with paths.open(path, "rb") as f:
                    yield relative, {"video": f.read(), "path": relative}

    return LiteframeVideos


def build(videos: str, name: str, data_dir: str | None = None) -> str:
    """Build dataset `name` from the folder `videos`; returns its folder. An existing dataset of that name is
    kept (TFDS does not rebuild a prepared version)."""
    tfds = tfds_module()
    builder = _builder_class()(videos=videos, config=tfds.core.BuilderConfig(name=name),
                               data_dir=data_dir or default_data_dir(), file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_dir)


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m liteframe_jax.data.tfds_videos", description=__doc__.split("\n")[0])
    parser.add_argument("--videos", required=True, help="the folder of videos (searched recursively)")
    parser.add_argument("--name", required=True, help="the dataset's name: data.videos=tfds:NAME reads it")
    parser.add_argument("--data_dir", default=None, help="TFDS data folder (default $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    folder = build(args.videos, args.name, args.data_dir)
    print(f"{folder}: {len(data_source(folder))} videos; train on it with --config.data.videos=tfds:{args.name}"
          + (f" --config.data.tfds_data_dir={args.data_dir}" if args.data_dir else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
