"""LongVideoBench's subtitles interleaved with the frames, as its authors' loader does (`LongVideoBenchDataset`
in longvideobench/longvideobench_dataset.py, `insert_subtitles_into_frames`; lmms-eval's `longvideobench_val_i`
task runs a copy of the same function with "<image>" in place of each frame).

The release holds one `subtitles/<subtitle_path>` JSON list per video, its entries in one of two forms:
`{"start": "HH:MM:SS.fff", "end": ..., "line": text}` (the video's own captions) or `{"timestamp": [start,
end], "text": text}` (speech recognition; an `end` that is not a float, the last entry's null, means the
video's end: the annotation's `duration`). Times count from the source video's start, so the row's
`starting_timestamp_for_subtitles` is subtracted from each (from `duration` too, as the authors do).

The authors' rule, entry by entry in file order: every frame not yet placed whose time is at most the entry's
midpoint goes first, then the entry's text if some sampled frame lies strictly inside the entry (an entry
shorter than 1 s is widened to the 1 s around its midpoint for this test); frames left at the end follow.

A file that is missing, not JSON or in neither form raises `SubtitleError`, whose `reason` the harness
counts; its question is an error row, never a crash.
"""

from __future__ import annotations

import dataclasses
import json

from liteframe_jax.core import paths

# Why a question's subtitles could not be read (`SubtitleError.reason`).
NOT_IN_ANNOTATION, OUTSIDE_ROOT, MISSING, NOT_JSON, MALFORMED = (
    "no subtitle fields in the annotation row", "outside the data root", "missing", "not JSON", "malformed")


class SubtitleError(ValueError):
    def __init__(self, reason: str, path: str, detail: str = ""):
        super().__init__(f"subtitles {path}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Subtitle:
    start: float  # seconds from the source video's start
    end: float | None  # None: until the video's end (a "timestamp" entry whose end is not a float)
    text: str


def _seconds(stamp: str) -> float:
    """The authors' `timestamp_to_seconds`: "H:M:S.fff" with whole hours and minutes."""
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _entry(entry, k: int) -> Subtitle:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {k} is not an object")
    if "timestamp" in entry:  # the authors look for this key first
        stamp, text = entry["timestamp"], entry.get("text")
        if not isinstance(stamp, list) or len(stamp) != 2:
            raise ValueError(f"entry {k}: 'timestamp' is not a [start, end] pair")
        start, end = stamp
        if isinstance(start, bool) or not isinstance(start, (int, float)):
            raise ValueError(f"entry {k}: start {start!r} is not a number")
        end = end if isinstance(end, float) else None  # the authors' `isinstance(end, float)`: an int ends too
    elif "start" in entry and "end" in entry:
        text = entry.get("line")
        try:
            start, end = _seconds(entry["start"]), _seconds(entry["end"])
        except (AttributeError, ValueError):
            raise ValueError(f"entry {k}: times {entry['start']!r}, {entry['end']!r} are not H:M:S") from None
    else:
        raise ValueError(f"entry {k} has neither 'timestamp' nor 'start' and 'end'")
    if not isinstance(text, str):
        raise ValueError(f"entry {k}: its text ({'text' if 'timestamp' in entry else 'line'}) is not a string")
    return Subtitle(float(start), end, text)


def read(path: str) -> list[Subtitle]:
    """The entries of one subtitle file, in file order."""
    if not paths.isfile(path):
        raise SubtitleError(MISSING, path)
    with paths.open(path, "rb") as f:
        raw = f.read()
    try:
        entries = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SubtitleError(NOT_JSON, path, str(e)) from None
    if not isinstance(entries, list):
        raise SubtitleError(MALFORMED, path, f"a JSON {type(entries).__name__}, not a list of entries")
    try:
        return [_entry(e, k) for k, e in enumerate(entries)]
    except ValueError as e:
        raise SubtitleError(MALFORMED, path, str(e)) from None


def interleave(frame_times: list[float], clip_frames: int, subtitles: list[Subtitle], offset: float,
               duration: float) -> list[int | str]:
    """The video's clips (their index) and subtitle texts in the authors' order, for a model that sees the
    sampled frames at `frame_times` (seconds) in clips of `clip_frames`.

    A clip's frames are encoded together into one block of visual tokens, so a clip is never split: it is
    placed as a frame is, by its first frame's time, and a line whose midpoint falls inside a clip follows the
    whole clip. The first frame is the time the prompt's separators already give the clip's tokens, and the
    text then follows every frame that precedes it, as in the authors' order; only later frames of the same
    clip come before the line too. With one-frame clips (the InternVL3 baseline) this is the authors' rule
    exactly. Whether a line is kept looks at every sampled frame, as theirs does."""
    if clip_frames <= 0 or len(frame_times) % clip_frames:
        raise ValueError(f"{len(frame_times)} frames are not whole clips of {clip_frames}")
    starts = list(frame_times[::clip_frames])
    items, placed = [], 0
    for sub in subtitles:
        start = sub.start - offset
        end = (sub.end if sub.end is not None else duration) - offset
        middle = (start + end) / 2
        while placed < len(starts) and starts[placed] <= middle:
            items.append(placed)
            placed += 1
        if end - start < 1:
            start, end = middle - 0.5, middle + 0.5
        if any(start < t < end for t in frame_times):
            items.append(sub.text)
    return items + list(range(placed, len(starts)))


def render(items: list[int | str], clip_marker: str) -> str:
    """The interleaved list as text, one item a line (the join lmms-eval gives it), each clip written as
    `clip_marker`."""
    return "\n".join(clip_marker if isinstance(x, int) else x for x in items)
