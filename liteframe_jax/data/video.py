"""Video files through PyAV: probing (frame count, size) and decoding chosen frames, resized, as uint8 RGB."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses

import av
import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.data import bad_data, tfds_records

RESIZE_FILTERS = ("bilinear", "bicubic")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".gif")


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded: the message names the file, `reason` is one of
    `bad_data.REASONS` and `detail` says what failed without the file's name."""

    def __init__(self, path: str, detail: str, reason: str = bad_data.UNREADABLE):
        super().__init__(f"{path}: {detail}")
        self.path, self.detail, self.reason = path, detail, reason


class NoFramesError(VideoError):
    """None of the asked-for frames exist: the file ends before the first of them."""

    def __init__(self, path: str, detail: str):
        super().__init__(path, detail, bad_data.NO_FRAMES)


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """Why a probed video cannot be used (what the video index records in place of a VideoInfo)."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int


@contextlib.contextmanager
def open_container(path: str):
    """A PyAV input container of a local file (FFmpeg reads it itself), of an object in a bucket (read in
    ranges through its file object) or of a record of a TFDS video dataset (`data/tfds_records.py`)."""
    source = tfds_records.open_record(path) if tfds_records.is_record(path) else paths.for_reading(path)
    try:
        with av.open(source) as container:
            yield container
    finally:
        if not isinstance(source, str):
            source.close()


# The first bytes of the containers FFmpeg is asked to read here: a file that starts like one of them but
# cannot be opened is truncated or corrupt, any other is not a video at all.
_CONTAINER_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV", b"GIF8", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"\x47")
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


def _looks_like_a_container(head: bytes) -> bool:
    return head[4:8] in _MP4_BOXES or head.startswith(_CONTAINER_MAGIC)


def _unopenable(path: str, error: Exception) -> VideoError:
    """Why FFmpeg could not open `path`: empty, not a video, or a video container that is cut short or damaged."""
    detail = f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"  # FFmpeg's str names the file
    if tfds_records.is_record(path):
        return VideoError(path, detail, bad_data.TRUNCATED)
    try:
        if paths.getsize(path) == 0:
            return VideoError(path, "the file is empty", bad_data.EMPTY)
        with paths.open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return VideoError(path, "no such file", bad_data.MISSING)
    except OSError:
        return VideoError(path, detail)
    return VideoError(path, detail, bad_data.TRUNCATED if _looks_like_a_container(head) else bad_data.NOT_A_VIDEO)


def _last_frame_reached(container, stream, num_frames: int) -> bool:
    """Whether the stream holds (about) the frames its header counts: seek to the last one's keyframe and
    decode from there. A file cut short keeps its header, so it only shows where its data ends. A second of
    frames may be missing (headers and edit lists disagree by a few frames); more is a truncated file."""
    rate = float(stream.average_rate)
    last = -1
    container.seek(stream.start_time + int((num_frames - 1) / (stream.average_rate * stream.time_base)),
                   stream=stream, backward=True, any_frame=False)
    try:
        for frame in container.decode(stream):
            if frame.pts is not None:
                last = max(last, int(round(float((frame.pts - stream.start_time) * stream.time_base * rate))))
    except av.error.FFmpegError:
        pass  # damaged data near the end: judged by what was decoded before it
    return last >= num_frames - 1 - max(1.0, rate)


def probe(path: str) -> VideoInfo:
    """Open the file, count its video frames, decode the first one and check that the last one is there, so
    broken files fail here; the VideoError's `reason` says how (`bad_data.REASONS`)."""
    try:
        with open_container(path) as container:
            if not container.streams.video:
                raise VideoError(path, "no video stream", bad_data.NOT_A_VIDEO)
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise VideoError(path, "this FFmpeg has no decoder for its video codec", bad_data.CODEC)
            num_frames = counted = stream.frames
            if num_frames <= 0:  # containers without a frame count (webm, mkv): count packets
                num_frames = sum(1 for p in container.demux(stream) if p.size > 0)
                container.seek(0)
            first = next(container.decode(stream), None)
            if first is None or num_frames <= 0:
                raise VideoError(path, "no decodable frame", bad_data.NO_FRAMES)
            if counted > 1 and _seekable(stream) and first.pts is not None \
                    and not _last_frame_reached(container, stream, num_frames):
                raise VideoError(path, f"its header counts {num_frames} frames but the data ends well before the "
                                 "last", bad_data.TRUNCATED)
            fps = float(stream.average_rate) if stream.average_rate else 0.0
            return VideoInfo(path, int(num_frames), fps, first.width, first.height)
    except VideoError:
        raise
    except FileNotFoundError:
        raise VideoError(path, "no such file", bad_data.MISSING) from None
    except av.error.FFmpegError as e:
        raise _unopenable(path, e) from e
    except Exception as e:  # anything else FFmpeg or a bucket raises means "unreadable"
        raise VideoError(path, f"{type(e).__name__}: {e}") from e


# Between two wanted frames further apart than this, seek to the later one's keyframe instead of decoding
# every frame up to it: a uniform sample of 64 frames from an hour of video is one frame in ~1,700.
# Encoders place keyframes every 2-10 s (60-300 frames at 30 fps). Once two keyframes have been seen, the
# longest interval between them is the limit instead: a seek then lands at most that far before the
# frame it goes for, so it decodes fewer frames than going on would.
SEEK_GAP = 300


def _seekable(stream) -> bool:
    """Frames can be numbered by timestamp and reached by seeking: a constant frame rate and a time base."""
    rate, tb = stream.average_rate, stream.time_base
    return bool(rate and tb and stream.guessed_rate == rate)


def _frames_from(container, stream, first: int):
    """(index, frame) pairs from frame `first` on (earlier ones may appear too).

    Seeks to the keyframe at or before `first` when the stream has a constant frame rate and timestamps,
    numbering frames by their timestamps; otherwise decodes from the start, numbering by position.
    """
    rate, tb = stream.average_rate, stream.time_base
    start = stream.start_time or 0
    if first > 0 and _seekable(stream):
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


def _resized(frame, size: int, resize: str) -> np.ndarray:
    """One decoded frame stretched to size x size RGB uint8: `bilinear` through FFmpeg's swscale (fast; the
    training pipeline's), `bicubic` through PIL as torchvision's `Resize(BICUBIC)` does on a PIL image
    (InternVL's reference preprocessing)."""
    if resize == "bilinear":
        return frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
    if resize == "bicubic":
        from PIL import Image
        return np.asarray(frame.to_image().resize((size, size), Image.Resampling.BICUBIC))
    raise ValueError(f"unknown resize filter {resize!r}; choose one of {RESIZE_FILTERS}")


def _wanted_frames(path: str, indices, size: int, resize: str):
    """(index, frame resized to size x size RGB) for each distinct index of `indices` (non-decreasing) as decoding
    first reaches it, in increasing order but for a seek that lands behind. Where the stream can seek, gaps of
    more than `SEEK_GAP` frames between wanted frames are skipped by seeking."""
    if resize not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize filter {resize!r}; choose one of {RESIZE_FILTERS}")
    wanted = {int(i) for i in indices}
    pending = sorted(wanted)
    reached: set[int] = set()
    k = 0  # pending[k] is the next wanted index not yet reached
    try:
        with open_container(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            seekable = _seekable(stream)
            jumped_from = None  # the index a seek left from
            hold_until = -1  # no seeking before this index (a seek that landed behind where it left)
            last_key, key_interval = None, None  # keyframe spacing seen so far
            while k < len(pending):
                jumped = False
                for i, frame in _frames_from(container, stream, pending[k]):
                    if frame.pts is None:
                        seekable = False  # numbered by position from the start: never seek again
                    if frame.key_frame:
                        if last_key is not None and i > last_key:
                            key_interval = max(key_interval or 0, i - last_key)
                        last_key = i
                    if jumped_from is not None:
                        if i <= jumped_from:  # the keyframe lies behind: decode on to the target instead
                            hold_until = pending[k]
                        jumped_from = None
                    if i in wanted and i not in reached:
                        reached.add(i)
                        yield i, _resized(frame, size, resize)
                    while k < len(pending) and pending[k] <= i:
                        k += 1
                    if k == len(pending):
                        break
                    gap_limit = SEEK_GAP if key_interval is None else min(SEEK_GAP, key_interval)
                    # at a keyframe spacing or more ahead, a seek lands no further back than decoding on
                    if seekable and i >= hold_until and pending[k] - i >= gap_limit:
                        jumped, jumped_from, last_key = True, i, None  # the next keyframe seen is no pair
                        break
                if not jumped:
                    break  # every wanted frame reached, or the file ended before the rest
    except Exception as e:
        raise VideoError(path, f"decoding failed: {type(e).__name__}: {e}") from e


def keyframe_indices(path: str) -> list[int]:
    """The indices (in display order) of the video's keyframes, read from its packets: nothing is decoded."""
    try:
        with open_container(path) as container:
            stream = container.streams.video[0]
            pts, key = [], []
            for packet in container.demux(stream):
                if packet.pts is not None:  # the flushing packet at the end has none
                    pts.append(packet.pts)
                    key.append(packet.is_keyframe)
    except Exception as e:
        raise VideoError(path, f"reading its packets failed: {type(e).__name__}: {e}") from e
    rank = np.empty(len(pts), int)
    rank[np.argsort(pts, kind="stable")] = np.arange(len(pts))
    return sorted(int(rank[j]) for j in range(len(pts)) if key[j])


def decode_frames(path: str, indices, size: int, resize: str = "bilinear") -> np.ndarray:
    """Frames at `indices` (non-decreasing, may repeat) resized to size x size RGB: (len, size, size, 3) uint8.

    The resize is a plain stretch to a square (as InternVL's preprocessing does) with the `resize` filter.
    If the file ends before an index, the last decoded frame stands in for the missing ones. Where the
    stream can seek, gaps of more than `SEEK_GAP` frames between wanted frames are skipped by seeking.
    """
    indices = [int(i) for i in indices]
    frames: dict[int, np.ndarray] = {}
    last = None
    for i, frame in _wanted_frames(path, indices, size, resize):
        frames[i] = last = frame
    if last is None:
        raise NoFramesError(path, f"none of the frames {indices[:3]}... could be decoded")
    return assemble(indices, frames, last)


def stream_frames(path: str, indices, size: int, chunk: int, resize: str = "bilinear"):
    """`decode_frames` as it goes: (chunk, size, size, 3) uint8 arrays of consecutive `indices`, each yielded
    as soon as its frames are decoded, so a consumer (the encoder, clip by clip) starts before the last frame
    is read. Concatenated they equal `decode_frames(path, indices, size, resize)`."""
    indices = [int(i) for i in indices]
    frames: dict[int, np.ndarray] = {}
    last, sent = None, 0
    for i, frame in _wanted_frames(path, indices, size, resize):
        frames[i] = last = frame
        while sent < len(indices) and all(j in frames for j in indices[sent:sent + chunk]):
            yield np.stack([frames[j] for j in indices[sent:sent + chunk]])
            sent += chunk
    if last is None:
        raise NoFramesError(path, f"none of the frames {indices[:3]}... could be decoded")
    rest = assemble(indices, frames, last)[sent:]  # past the end of the file: as decode_frames fills them
    for s in range(0, len(rest), chunk):
        yield rest[s:s + chunk]


def decode_frames_split(path: str, indices, size: int, workers: int, resize: str = "bilinear") -> np.ndarray:
    """`decode_frames` with `indices` cut into `workers` consecutive runs, decoded at once by threads (each
    opens the file and seeks to its own run): one request's frames from one long video. A run past the
    end of the file repeats the frame before it, as `decode_frames` does."""
    indices = [int(i) for i in indices]
    runs = [list(r) for r in np.array_split(indices, max(1, min(workers, len(indices)))) if len(r)]

    def run(r):
        try:
            return decode_frames(path, r, size, resize)
        except NoFramesError:
            if r[0] == indices[0]:
                raise
            return None  # the file ends before this run: filled from the run before it below

    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        parts = list(pool.map(run, runs))
    for j, (r, part) in enumerate(zip(runs, parts)):
        if part is None:
            parts[j] = np.repeat(parts[j - 1][-1:], len(r), axis=0)
    return np.concatenate(parts)


def assemble(indices, frames: dict[int, np.ndarray], last: np.ndarray) -> np.ndarray:
    """Stack `frames[i]` for `indices`; an index past the end of the file repeats the frame before it (or
    `last`, the final decoded frame, when none of the earlier ones exist)."""
    out, prev = [], None
    for i in indices:
        prev = frames.get(i, prev if prev is not None else last)
        out.append(prev)
    return np.stack(out)
