"""Which frames of a video a model sees: uniform sampling over the whole video, by rule.

- `uniform`: the middle frame of `n` equal segments, `int((i + 0.5) * N / n)` (training, LiteFrame evaluation).
- `internvl`: InternVL's reference video loader (`get_index` in the InternVL model cards and repository):
  segments over the last frame index `N - 1`, `int(seg / 2 + round(seg * i))`, so the InternVL3 baseline
  sees exactly the frames its authors' code picks.
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
