"""Decoded-clip cache: one pass per video gives the same frames as per-clip decoding, and a run reading
the cache sees exactly the batches the decoding pipeline gives."""

import os

import numpy as np
import pytest
from helpers import make_videos

from liteframe_jax.data import bad_data, clip_cache, clips, demo, pipeline, video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache_videos")
    return make_videos(folder, count=3, num_frames=30) + demo.sample_clips()[1:2]


def test_one_pass_decoding_equals_per_clip_decoding(videos):
    for path in videos:
        n = video.probe(path).num_frames
        # overlapping clips, a clip past the end (tail repeats the last frame), clips out of order
        wanted = [(0, 2, 4), (3, 4, 5), (n - 3, n - 1, n + 2), (1, 1, 2)]
        got = dict(clip_cache.decode_clips_in_one_pass(path, wanted, 24))
        assert sorted(got) == [0, 1, 2, 3]
        for k, idx in enumerate(wanted):
            np.testing.assert_array_equal(got[k], video.decode_frames(path, idx, 24))


def test_cache_reads_back_the_decoding_pipeline_batches(videos, tmp_path):
    index = clips.build_index(videos, num_frames=4, stride=2)
    gone = tmp_path / "gone.mp4"
    gone.write_bytes(open(videos[0], "rb").read())
    doomed = clips.build_index([str(gone)], num_frames=4, stride=2).clips
    os.remove(gone)  # readable at index time, unreadable when the cache is built
    all_clips = index.clips + doomed
    cache = clip_cache.build(all_clips, str(tmp_path / "cache"), 16, workers=2)
    assert len(cache) == len(all_clips)
    assert str(gone) in cache.meta["errors"] and f"{len(doomed)} unreadable" in cache.summary()
    assert sum(not ok for v in cache.meta["valid"] for ok in v) == len(doomed)
    for i, c in enumerate(index.clips):
        np.testing.assert_array_equal(cache[i]["frames"], video.decode_frames(c.path, c.frame_indices, 16))
    assert cache[len(index.clips)] == pipeline.dropped(bad_data.MID_RUN)

    decoded = iter(pipeline.train_dataset(all_clips, size=16, batch_size=3, seed=5))
    cached = iter(pipeline.train_dataset(all_clips, size=16, batch_size=3, seed=5,
                                         cache=clip_cache.ClipCache(str(tmp_path / "cache")), num_workers=2))
    for _ in range(4):
        np.testing.assert_array_equal(next(decoded)["frames"], next(cached)["frames"])
    cached.close()


def test_cache_of_other_data_is_refused_with_the_difference(videos, tmp_path):
    index = clips.build_index(videos[:2], num_frames=4, stride=2)
    folder = str(tmp_path / "c")
    clip_cache.build(index.clips, folder, 16, workers=1)
    with pytest.raises(ValueError, match="frame size 16 cached, 32 wanted"):
        clip_cache.open_or_build(index.clips, folder, 32)
    other = clips.build_index(videos[:2], num_frames=4, stride=3).clips
    with pytest.raises(ValueError, match="clips cached|other videos or frame indices"):
        clip_cache.open_or_build(other, folder, 16)
    with pytest.raises(FileExistsError):
        clip_cache.build(index.clips, folder, 16)
    with pytest.raises(FileNotFoundError, match="is not built"):
        clip_cache.open_or_build(index.clips, str(tmp_path / "none"), 16, may_build=False)
