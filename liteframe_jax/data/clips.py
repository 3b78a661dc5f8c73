"""Clip specs: which frames of which video make one training example, and the split into train / held-out."""

from __future__ import annotations

import dataclasses
import logging
import os

from liteframe_jax.data import video


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    path: str
    frame_indices: tuple[int, ...]


@dataclasses.dataclass
class ClipIndex:
    clips: list[ClipSpec]
    videos: list[str]
    skipped: dict[str, str]  # path -> why it was unreadable

    def report(self) -> str:
        lines = [f"{len(self.clips)} clips from {len(self.videos)} videos; {len(self.skipped)} unreadable skipped"]
        lines += [f"  skipped {path}: {why}" for path, why in sorted(self.skipped.items())]
        return "\n".join(lines)


def list_videos(source) -> list[str]:
    """A folder (searched recursively for video extensions), one file, or a list of either."""
    if isinstance(source, (list, tuple)):
        return [v for s in source for v in list_videos(s)]
    source = os.path.expanduser(str(source))
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        raise FileNotFoundError(f"video source {source!r} is neither a folder nor a file")
    found = []
    for root, _, files in os.walk(source):
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


def build_index(paths: list[str], num_frames: int, stride: int, hop: int = 0) -> ClipIndex:
    """Probe every video; unreadable ones are skipped and recorded. All unreadable is an error."""
    clips, ok, skipped = [], [], {}
    for path in paths:
        try:
            info = video.probe(path)
        except video.VideoError as e:
            skipped[path] = str(e)
            logging.warning("skipping unreadable video %s", e)
            continue
        ok.append(path)
        clips += [ClipSpec(path, idx) for idx in clip_frame_indices(info.num_frames, num_frames, stride, hop)]
    if not ok:
        raise ValueError(f"none of the {len(paths)} videos could be read:\n" +
                         "\n".join(f"  {p}: {why}" for p, why in skipped.items()))
    return ClipIndex(clips, ok, skipped)


def split_videos(paths: list[str], every_nth: int) -> tuple[list[str], list[str]]:
    """(train, held_out): every `every_nth`-th video of the sorted list is held out (0: none)."""
    paths = sorted(paths)
    if every_nth <= 0:
        return paths, []
    held = [p for i, p in enumerate(paths) if i % every_nth == every_nth - 1]
    return [p for p in paths if p not in held], held
