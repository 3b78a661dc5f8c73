"""A folder of videos as a TFDS dataset: built without TensorFlow in TFDS's ArrayRecord layout, read back by
TFDS's own reader, and a CTD run on `tfds:NAME` logs exactly the losses of the run on the folder."""

import json
import os

import pytest
import tensorflow_datasets as tfds
from helpers import make_videos, tiny_ctd_config

from liteframe_jax.data import tfds_records, tfds_videos
from liteframe_jax.jobs import train as run


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_a_folder_as_a_tfds_dataset_trains_as_the_folder(tmp_path):
    videos = tmp_path / "videos"
    make_videos(videos, count=3, num_frames=24)
    make_videos(videos / "more", count=1, num_frames=16, seed=1)
    data_dir = tmp_path / "tensorflow_datasets"
    folder = tfds_videos.build(str(videos), "my_videos", str(data_dir))
    assert folder == str(data_dir / "liteframe_videos" / "my_videos" / "1.0.0")
    assert {"dataset_info.json", "features.json", "liteframe_videos-train.array_record-00000-of-00001"} <= set(
        os.listdir(folder))

    # TFDS's own reader, by name: every file once, as its bytes, in the folder's sorted order
    source = tfds.data_source("liteframe_videos/my_videos", split="train", data_dir=str(data_dir))
    files = sorted(os.path.relpath(os.path.join(r, f), videos) for r, _, fs in os.walk(videos) for f in fs)
    assert len(source) == len(files) == 4
    for i, name in enumerate(files):
        assert source[i]["path"].decode() == name
        assert source[i]["video"] == (videos / name).read_bytes()

    on_folder, on_tfds = tmp_path / "folder", tmp_path / "tfds"
    run(tiny_ctd_config(str(videos), total_steps=2), str(on_folder))
    run(tiny_ctd_config("tfds:my_videos", total_steps=2, **{"data.tfds_data_dir": str(data_dir)}), str(on_tfds))
    assert _losses(str(on_tfds)) == _losses(str(on_folder))  # the same clips, decoded from the same bytes

    with pytest.raises(FileNotFoundError, match="no TFDS dataset at .*liteframe_videos/nothing/1.0.0; build it"):
        tfds_records.record_paths("tfds:nothing", str(data_dir))
