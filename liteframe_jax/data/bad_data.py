"""Bad data, counted by reason: what a run skips, the report that names each file once, and the ceilings that
stop a run whose data has gone wrong.

At start-up a run stops when more than `data.max_bad_fraction` of its videos cannot be used. Mid-run, an
example whose video fails to decode (changed or deleted after it was indexed) is skipped and counted, and the
run stops when `data.max_bad_in_a_row` examples in a row fail: the files went away, or a bucket stopped
answering, and skipping on would only burn the accelerators.
"""

from __future__ import annotations

import dataclasses
import sys

import jax

# Why a video or an example cannot be used, in the order reports list them. Examples that fail mid-run travel
# through the data workers as an index into this tuple.
EMPTY = "empty file"
NOT_A_VIDEO = "not a video"
TRUNCATED = "truncated or corrupt"
CODEC = "unsupported codec"
NO_FRAMES = "no decodable frame"
TOO_SHORT = "shorter than one clip"
TOO_LONG = "longer than data.max_video_minutes"
MISSING = "missing"
MID_RUN = "failed to decode mid-run"
NO_TARGET = "no cached target"
UNREADABLE = "unreadable"  # recorded without a reason (a video index written by an earlier version)
REASONS = (EMPTY, NOT_A_VIDEO, TRUNCATED, CODEC, NO_FRAMES, TOO_SHORT, TOO_LONG, MISSING, MID_RUN, NO_TARGET,
           UNREADABLE)


def code(reason: str) -> int:
    return REASONS.index(reason)


def slug(reason: str) -> str:
    """A metric name's part: 'shorter than one clip' -> 'shorter_than_one_clip'."""
    return reason.replace("data.", "").replace(" ", "_").replace("-", "_")


class TooMuchBadData(ValueError):
    """More bad data than the configured ceiling: the message is the report."""


@dataclasses.dataclass
class Tally:
    """Counts by reason, with the first few files of each (and why, in a word) for the report."""

    what: str = "videos"
    shown: int = 5
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    first: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, reason: str, name: str, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        names = self.first.setdefault(reason, [])
        if len(names) < self.shown:
            names.append(f"{name} ({detail})" if detail else name)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _ordered(self) -> list[str]:
        return sorted(self.counts, key=lambda r: REASONS.index(r) if r in REASONS else len(REASONS))

    def summary(self) -> str:
        """'3 videos skipped: 1 empty file, 2 not a video' (or '0 videos skipped')."""
        parts = ", ".join(f"{self.counts[r]} {r}" for r in self._ordered())
        return f"{self.total} {self.what} skipped" + (f": {parts}" if parts else "")

    def report(self) -> str:
        """The summary, then each reason with the first files it holds (each file named once)."""
        lines = [self.summary()]
        for reason in self._ordered():
            more = self.counts[reason] - len(self.first[reason])
            lines.append(f"  {reason}: " + ", ".join(self.first[reason]) + (f" and {more} more" if more else ""))
        return "\n".join(lines)

    def metrics(self, prefix: str) -> dict[str, int]:
        return {f"{prefix}_{slug(r)}": n for r, n in self.counts.items()}


def check_fraction(tally: Tally, seen: int, max_fraction: float, where: str) -> None:
    """Stop (TooMuchBadData) when more than `max_fraction` of the `seen` items of `where` were skipped."""
    if seen and tally.total > max_fraction * seen:
        raise TooMuchBadData(
            f"{where}: {tally.total} of {seen} {tally.what} ({tally.total / seen:.1%}) cannot be used, more than "
            f"data.max_bad_fraction={max_fraction:g} allows. Fix or remove them, or raise "
            f"--config.data.max_bad_fraction to train on the rest.\n{tally.report()}")


class MidRun:
    """Examples leaving the data pipeline, watched for ones that failed to decode: each counted by reason,
    its file named once in the log, and the run stopped after `max_in_a_row` failures in a row. `name_of(index)`
    names the file of an example by its index in the run's list."""

    def __init__(self, name_of, max_in_a_row: int, what: str = "clips"):
        self.name_of, self.max_in_a_row = name_of, int(max_in_a_row)
        self.tally = Tally(what)
        self.in_a_row = 0
        self._named: set[str] = set()

    def observe(self, reason_code: int, index: int) -> bool:
        """Whether the example is usable (`reason_code` < 0); counts the ones that are not."""
        if reason_code < 0:
            self.in_a_row = 0
            return True
        reason = REASONS[reason_code]
        name = self.name_of(index)
        self.tally.add(reason, name)
        self.in_a_row += 1
        if name not in self._named:
            self._named.add(name)
            who = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
            print(f"{who}skipping {self.tally.what[:-1]} {index} of {name}: {reason} "
                  f"({self.tally.total} skipped since this start)", file=sys.stderr, flush=True)
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise TooMuchBadData(
                f"{self.in_a_row} {self.tally.what} in a row failed to decode (data.max_bad_in_a_row="
                f"{self.max_in_a_row}): the data went away or changed since the run started. Fix it and run the "
                f"same command: the run continues from its last checkpoint.\n{self.tally.report()}")
        return False
