"""The video index: probed once (in parallel, shared between processes), stored, reused; the clip table."""

import pickle
import threading

import pytest
from helpers import make_videos

from liteframe_jax.data import clips, video, video_index


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index_videos")
    made = make_videos(folder, count=4, num_frames=20)
    broken = folder / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    return made + [str(broken)]


def _counting_probe(monkeypatch):
    probed = []
    real = video.probe

    def probe(path):
        probed.append(path)
        return real(path)
    monkeypatch.setattr(video, "probe", probe)
    return probed


def test_a_second_start_probes_only_new_videos(videos, tmp_path, monkeypatch):
    probed = _counting_probe(monkeypatch)
    folder = str(tmp_path / "video_index")
    first = video_index.index_videos(videos[:3] + videos[4:], folder, threads=2)
    assert sorted(probed) == sorted(videos[:3] + videos[4:])
    assert first[videos[0]].num_frames == 20 and first[videos[4]].reason == "not a video"  # why, kept
    probed.clear()
    again = video_index.index_videos(videos, folder)  # one video more: only it is probed
    assert probed == [videos[3]]
    assert again == {**first, videos[3]: again[videos[3]]} and again[videos[3]].num_frames == 20
    probed.clear()
    assert video_index.index_videos(videos, folder) == again and probed == []
    assert video_index.index_videos(videos, None) == again and len(probed) == len(videos)  # 'off': no index


def test_processes_share_the_probing_and_all_get_every_video(videos, tmp_path, monkeypatch):
    probed = _counting_probe(monkeypatch)
    folder, count = str(tmp_path / "shared"), 2
    barriers, results = {}, [None] * count
    lock = threading.Lock()

    def barrier(name):
        with lock:
            b = barriers.setdefault(name, threading.Barrier(count))
        b.wait(timeout=60)

    def process(i):
        results[i] = video_index.index_videos(videos, folder, threads=1, process_index=i, process_count=count,
                                              barrier=barrier)
    threads = [threading.Thread(target=process, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(probed) == sorted(videos)  # each video probed once, by one of the two
    assert results[0] == results[1] and set(results[0]) == set(videos)
    assert len([n for n in video_index.load(folder)]) == len(videos)


def test_clip_table_equals_the_clip_list_and_pickles():
    frames = {"a.mp4": 5, "b.mp4": 40, "c.mp4": 29, "d.mp4": 1}
    for num_frames, stride, hop in [(8, 1, 0), (8, 4, 0), (4, 2, 3), (4, 3, 7)]:
        table = clips.clip_table(frames, num_frames, stride, hop)
        want = [clips.ClipSpec(v, idx) for v, n in frames.items()
                for idx in clips.clip_frame_indices(n, num_frames, stride, hop)]
        assert list(table) == want and len(table) == len(want) and table[-1] == want[-1]
        assert list(pickle.loads(pickle.dumps(table))) == want
    with pytest.raises(IndexError):
        table[len(table)]


def test_build_index_uses_the_index_and_reports_unreadable(videos, tmp_path):
    infos = video_index.index_videos(videos, str(tmp_path / "idx"))
    index = clips.build_index(videos, num_frames=4, stride=2, infos=infos)
    assert index.videos == videos[:4] and list(index.skipped) == [videos[4]]
    assert len(index.clips) == 4 * len(clips.clip_frame_indices(20, 4, 2, 0))
