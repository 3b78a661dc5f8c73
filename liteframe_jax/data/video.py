"""Video files through PyAV: probing (frame count, size) and decoding chosen frames, resized, as uint8 RGB."""

from __future__ import annotations

import dataclasses

import av
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".gif")


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int


def probe(path: str) -> VideoInfo:
    """Open the file, count its video frames and decode the first one, so broken files fail here."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            num_frames = stream.frames
            if num_frames <= 0:  # containers without a frame count (webm, mkv): count packets
                num_frames = sum(1 for p in container.demux(stream) if p.size > 0)
                container.seek(0)
            first = next(container.decode(stream), None)
            if first is None or num_frames <= 0:
                raise VideoError(f"{path}: no decodable frame")
            fps = float(stream.average_rate) if stream.average_rate else 0.0
            return VideoInfo(path, int(num_frames), fps, first.width, first.height)
    except VideoError:
        raise
    except Exception as e:  # PyAV raises a family of FFmpeg errors; all mean "unreadable"
        raise VideoError(f"{path}: {type(e).__name__}: {e}") from e


def _frames_from(container, stream, first: int):
    """(index, frame) pairs from frame `first` on (earlier ones may appear too).

    Seeks to the keyframe at or before `first` when the stream has a constant frame rate and timestamps,
    numbering frames by their timestamps; otherwise decodes from the start, numbering by position.
    """
    rate, tb = stream.average_rate, stream.time_base
    start = stream.start_time or 0
    can_seek = first > 0 and rate and tb and stream.guessed_rate == rate
    if can_seek:
        target = start + int(first / (rate * tb))
        container.seek(target, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                break  # no timestamps after all: fall through to positional numbering below
            yield int(round(float((frame.pts - start) * tb * rate))), frame
        else:
            return
        container.seek(0, stream=stream)
    yield from enumerate(container.decode(stream))


def decode_frames(path: str, indices, size: int) -> np.ndarray:
    """Frames at `indices` (non-decreasing, may repeat) resized to size x size RGB: (len, size, size, 3) uint8.

    The resize is a plain stretch to a square (as InternVL's preprocessing does), done by FFmpeg's swscale.
    If the file ends before an index, the last decoded frame stands in for the missing ones.
    """
    indices = [int(i) for i in indices]
    wanted = set(indices)
    last_wanted = max(indices)
    frames: dict[int, np.ndarray] = {}
    last = None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in _frames_from(container, stream, min(indices)):
                if i in wanted:
                    last = frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
                    frames[i] = last
                if i >= last_wanted:
                    break
    except Exception as e:
        raise VideoError(f"{path}: decoding failed: {type(e).__name__}: {e}") from e
    if last is None:
        raise VideoError(f"{path}: none of the frames {indices[:3]}... could be decoded")
    return assemble(indices, frames, last)


def assemble(indices, frames: dict[int, np.ndarray], last: np.ndarray) -> np.ndarray:
    """Stack `frames[i]` for `indices`; an index past the end of the file repeats the frame before it (or
    `last`, the final decoded frame, when none of the earlier ones exist)."""
    out, prev = [], None
    for i in indices:
        prev = frames.get(i, prev if prev is not None else last)
        out.append(prev)
    return np.stack(out)
