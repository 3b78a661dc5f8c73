"""Errors said to people in one line: the message on stderr, the traceback (for a bug report) in a file.

The file is the workdir's `error_traceback.txt` when the run has a workdir that exists, else a file in the
system's temporary folder: never the current folder, which is often the repository itself. Exit statuses:
`USAGE` (2) for a mistake in the command line (a flag, a config key or value, a preset), `INPUT` (1) for
files or data that cannot be used, `INTERRUPTED` (130) for a Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback

from liteframe_jax.core import paths, run_dir

USAGE = 2
INPUT = 1
INTERRUPTED = 130


def traceback_path(folder: str | None, process_index: int = 0, process_count: int = 1) -> str:
    """Where a traceback goes: `folder/error_traceback.txt` (one file per process in a multi-process run), or a
    new file in the system's temporary folder when there is no folder."""
    if folder is not None:
        return run_dir.RunDir(folder).traceback(process_index, process_count)
    name = run_dir.traceback_name(process_index, process_count)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(tempfile.gettempdir(), f"liteframe_jax-{stamp}-{os.getpid()}-{name}")


def say(message: str, text: str | None, folder: str | None, *, process_index: int = 0, process_count: int = 1) -> None:
    """`error: message` on stderr, `text` (a traceback) written to its file and the file named; an unwritable
    folder falls back to the temporary folder, and failing that the file is left out, never the error."""
    where = None
    if text:
        for place in ([folder] if folder is not None else []) + [None]:
            try:
                where = traceback_path(place, process_index, process_count)
                paths.write_text(where, text)
                break
            except Exception:  # noqa: BLE001 (an unwritable place must not hide the error itself)
                where = None
    who = f" in process {process_index} of {process_count}" if process_count > 1 else ""
    said = f"error{who}: {message.strip() or 'error'}"
    print(said + (f"\n(traceback in {where})" if where else ""), file=sys.stderr)


def say_exception(error: BaseException, folder: str | None, **kw) -> None:
    say(str(error).strip() or type(error).__name__, "".join(traceback.format_exception(error)), folder, **kw)


def config_file_error(message: str) -> tuple[str, str | None]:
    """(one line, the traceback or None) of absl's message for a config file that failed to load, e.g. an
    unknown preset: ml_collections puts the loader's whole traceback in the flag error's text."""
    head, sep, tail = message.partition("Traceback (most recent call last):")
    if not sep:
        return message.strip().splitlines()[0] if message.strip() else message, None
    flag = head.split(": Error whilst parsing config file", 1)[0].strip()
    last = [line for line in tail.strip().splitlines() if line.strip()][-1]
    kind, _, said = last.partition(": ")
    return f"{flag}: {said or kind}", sep + tail
