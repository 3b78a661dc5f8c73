"""Clip specs: which frames of which video make one training example, and the split into train / held-out."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.data import bad_data, video, video_index


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    path: str
    frame_indices: tuple[int, ...]


class ClipTable(Sequence):
    """The clips of many videos held per video (frame count, index of its first clip), not per clip: memory
    grows with the videos, not with their length, so a million long videos' clips fit in memory and pickle
    quickly to data workers. `table[i]` is a ClipSpec."""

    def __init__(self, videos: list[str], video_frames, num_frames: int, stride: int, hop: int):
        self.videos, self.video_frames = list(videos), np.asarray(video_frames, np.int64)
        self.num_frames, self.stride = int(num_frames), int(stride)
        span = (self.num_frames - 1) * self.stride + 1
        self.hop = int(hop) or span
        per_video = np.where(self.video_frames < span, 1, (self.video_frames - span) // self.hop + 1)
        self.first_clip = np.concatenate([[0], np.cumsum(per_video)]).astype(np.int64)  # video v: [f[v], f[v+1])

    def __len__(self) -> int:
        return int(self.first_clip[-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if i < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} of {len(self)}")
        v = int(np.searchsorted(self.first_clip, i, side="right")) - 1
        start, last = (i - int(self.first_clip[v])) * self.hop, int(self.video_frames[v]) - 1
        return ClipSpec(self.videos[v], tuple(min(start + k * self.stride, last) for k in range(self.num_frames)))

    def __add__(self, other):
        return list(self) + list(other)

    def __radd__(self, other):
        return list(other) + list(self)


def clip_table(frames_by_video: dict[str, int], num_frames: int, stride: int, hop: int) -> ClipTable:
    """`clip_frame_indices` of every video, as a ClipTable."""
    return ClipTable(list(frames_by_video), [frames_by_video[v] for v in frames_by_video], num_frames, stride, hop)


@dataclasses.dataclass
class ClipIndex:
    clips: Sequence[ClipSpec]
    videos: list[str]
    skipped: dict[str, video.Unreadable]  # path -> why it cannot be used

    @property
    def tally(self) -> bad_data.Tally:
        return _tally(self.skipped)

    def report(self) -> str:
        """How many clips of how many videos, then the skipped videos by reason, each named once."""
        lines = [f"{len(self.clips)} clips from {len(self.videos)} videos; {self.tally.summary()}"]
        return "\n".join(lines + self.tally.report().splitlines()[1:])


def list_videos(source) -> list[str]:
    """A folder (searched recursively for video extensions), one file, or a list of either."""
    if isinstance(source, (list, tuple)):
        return [v for s in source for v in list_videos(s)]
    source = str(source) if paths.is_remote(source) else os.path.expanduser(str(source))
    if paths.isfile(source):
        return [source]
    if not paths.isdir(source):
        raise FileNotFoundError(f"video source {source!r} is neither a folder nor a file")
    found = []
    for root, _, files in paths.walk(source):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(video.VIDEO_EXTENSIONS)]
    if not found:
        raise FileNotFoundError(f"no video files ({', '.join(video.VIDEO_EXTENSIONS)}) under {source!r}")
    return sorted(found)


def clip_frame_indices(num_frames_in_video: int, num_frames: int, stride: int, hop: int) -> list[tuple[int, ...]]:
    """Clips of `num_frames` frames `stride` apart, starting every `hop` frames (hop 0: back to back).

    A video shorter than one clip gives one clip whose tail repeats its last frame.
    """
    span = (num_frames - 1) * stride + 1
    hop = hop or span
    if num_frames_in_video < span:
        return [tuple(min(i * stride, num_frames_in_video - 1) for i in range(num_frames))]
    return [tuple(start + i * stride for i in range(num_frames))
            for start in range(0, num_frames_in_video - span + 1, hop)]


def build_index(videos: list[str], num_frames: int, stride: int, hop: int = 0, infos: dict | None = None,
                max_minutes: float = 0.0) -> ClipIndex:
    """The clips of `videos`. Unreadable ones, ones shorter than one clip and (with `max_minutes` > 0) longer
    ones are skipped, counted by reason; all of them skipped is an error. `infos` ({path: VideoInfo or
    video.Unreadable}, from `video_index.index_videos`) saves probing them here."""
    infos = infos if infos is not None else video_index.probe_all(videos)
    span = (num_frames - 1) * stride + 1
    skipped = {}
    for v in videos:
        info = infos[v]
        if not isinstance(info, video.VideoInfo):
            skipped[v] = info
        elif info.num_frames < span:
            skipped[v] = video.Unreadable(bad_data.TOO_SHORT, f"{info.num_frames} frames, a clip spans {span}")
        elif max_minutes and info.fps and info.num_frames / info.fps > 60 * max_minutes:
            seconds = info.num_frames / info.fps
            skipped[v] = video.Unreadable(bad_data.TOO_LONG, f"{seconds / 60:.1f} min ({seconds:.0f} s)")
    ok = [v for v in videos if v not in skipped]
    if not ok:
        raise ValueError(f"none of the {len(videos)} videos can be used: {_tally(skipped).report()}")
    return ClipIndex(clip_table({v: infos[v].num_frames for v in ok}, num_frames, stride, hop), ok, skipped)


def _tally(skipped: dict) -> bad_data.Tally:
    tally = bad_data.Tally("videos")
    for path, why in skipped.items():
        tally.add(why.reason, path, why.detail)
    return tally


def split_videos(paths: list[str], every_nth: int) -> tuple[list[str], list[str]]:
    """(train, held_out): every `every_nth`-th video of the sorted list is held out (0: none)."""
    paths = sorted(paths)
    if every_nth <= 0:
        return paths, []
    held = [p for i, p in enumerate(paths) if i % every_nth == every_nth - 1]
    return [p for p in paths if p not in held], held
