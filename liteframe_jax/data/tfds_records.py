"""Reading the videos of a TFDS video dataset (`data/tfds_videos.py` builds them): `tfds:NAME` lists a run's
videos as `tfds:<dataset folder>#<record>`, and such a path opens as the record's bytes, which PyAV decodes like
a file's."""

from __future__ import annotations

import functools
import io
import os

BUILDER = "liteframe_videos"
PREFIX = "tfds:"
VERSION = "1.0.0"


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def dataset_dir(name: str, data_dir: str | None = None) -> str:
    return os.path.join(data_dir or default_data_dir(), BUILDER, name, VERSION)


def tfds_module():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ModuleNotFoundError("data.videos='tfds:...' needs tensorflow-datasets (pip install -r "
                                  "requirements.txt); TensorFlow itself is not needed") from e
    return tfds


def record_paths(spec: str, data_dir: str | None = None) -> list[str]:
    """`tfds:NAME` -> the paths a run reads its videos by, one per record, in record order."""
    name = spec[len(PREFIX):]
    folder = dataset_dir(name, data_dir)
    if not os.path.isfile(os.path.join(folder, "dataset_info.json")):
        raise FileNotFoundError(f"data.videos={spec!r}: no TFDS dataset at {folder}; build it with python -m "
                                f"liteframe_jax.data.tfds_videos --videos=FOLDER --name={name}"
                                + ("" if data_dir else " (or set data.tfds_data_dir)"))
    return [f"{PREFIX}{folder}#{i}" for i in range(len(data_source(folder)))]


def is_record(path: str) -> bool:
    return path.startswith(PREFIX)


@functools.lru_cache(maxsize=None)
def data_source(folder: str):
    """The dataset's random-access reader, opened once per process (Grain workers open their own)."""
    return tfds_module().builder_from_directory(folder).as_data_source(split="train")


def open_record(path: str) -> io.BytesIO:
    """`tfds:<dataset folder>#<record>` -> the video's bytes as a file object PyAV reads."""
    folder, _, index = path[len(PREFIX):].rpartition("#")
    source = data_source(folder)
    i = int(index)
    if not 0 <= i < len(source):
        raise IndexError(f"{path}: the dataset has {len(source)} records")
    return io.BytesIO(source[i]["video"])
