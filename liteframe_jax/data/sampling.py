"""Which frames of a video a model sees: uniform sampling over the whole video, by rule.

- `uniform`: the middle frame of `n` equal segments, `int((i + 0.5) * N / n)` (training, LiteFrame evaluation).
- `internvl`: InternVL's reference video loader (`get_index` in the InternVL model cards and repository):
  segments over the last frame index `N - 1`, `int(seg / 2 + round(seg * i))`, so the InternVL3 baseline
  sees exactly the frames its authors' code picks.

And when each group of them starts (`group_times`): the one rule that training rows and answering both put
into a prompt's timestamp separators.
"""

from __future__ import annotations

import numpy as np

SAMPLING_RULES = ("uniform", "internvl")


def uniform_indices(num_video_frames: int, num_frames: int) -> tuple[int, ...]:
    """Frames sampled uniformly over the whole video: the middle of `num_frames` equal segments."""
    return tuple(int(x) for x in ((np.arange(num_frames) + 0.5) * num_video_frames / num_frames))


def internvl_indices(num_video_frames: int, num_frames: int) -> tuple[int, ...]:
    """InternVL's `get_index` without a time bound: segments of (N - 1) / n frames, the centre of each."""
    segment = float(max(num_video_frames - 1, 0)) / num_frames
    return tuple(int(segment / 2 + np.round(segment * i)) for i in range(num_frames))


def sample_indices(rule: str, num_video_frames: int, num_frames: int) -> tuple[int, ...]:
    if rule == "uniform":
        return uniform_indices(num_video_frames, num_frames)
    if rule == "internvl":
        return internvl_indices(num_video_frames, num_frames)
    raise ValueError(f"unknown frame sampling {rule!r}; choose one of {SAMPLING_RULES}")


def frame_time(index: int, fps: float | None) -> float:
    """A frame's time in seconds: its index over the video's rate (1 frame a second where the rate is unknown)."""
    return index / (fps or 1.0)


def group_times(indices, num_frames: int, visual_groups: int, fps: float | None) -> list[float]:
    """The start time of each visual group of `num_frames` sampled frames: the time of its first frame."""
    per_group = num_frames // visual_groups
    return [frame_time(indices[g * per_group], fps) for g in range(visual_groups)]


def snap_to_keyframes(indices, keyframes) -> tuple[int, ...]:
    """Each index moved to the nearest keyframe (the earlier one on a tie): an explicit, lossy option that
    decodes only keyframes, each on its own; where keyframes are sparser than the sample, frames repeat."""
    keys = np.asarray(sorted(keyframes))
    if not len(keys):
        raise ValueError("the video lists no keyframes to snap to")
    idx = np.asarray(indices)
    after = np.clip(np.searchsorted(keys, idx), 0, len(keys) - 1)
    before = np.clip(after - 1, 0, len(keys) - 1)
    nearer_before = np.abs(idx - keys[before]) <= np.abs(keys[after] - idx)
    return tuple(int(k) for k in np.where(nearer_before, keys[before], keys[after]))


def frames_to_decode(indices, keyframes) -> int:
    """How many frames a decoder must decode to reach `indices`: from each wanted frame's keyframe (at or
    before it) up to it, each frame counted once."""
    keys = np.asarray(sorted(keyframes))
    spans = sorted({(int(keys[max(np.searchsorted(keys, i, side="right") - 1, 0)]), int(i)) for i in indices})
    count, reached = 0, -1
    for start, end in spans:
        start = max(start, reached + 1)
        if end >= start:
            count += end - start + 1
            reached = end
    return count
