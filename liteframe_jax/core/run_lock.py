"""One run per workdir: `WORKDIR/run.lock` names the run that holds it (host, process id, start time) and the
time of its last heartbeat, rewritten every `HEARTBEAT_S` while it runs.

A second run into the workdir is refused in one line naming the holder. A lock left by a run that is gone is
taken over, saying whose it was: on the same host when its process no longer exists (or the process id now
belongs to a later process), from another host when its heartbeat is older than `STALE_AFTER_S`, a time that
tolerates clocks a few minutes apart. In a multi-process run only process 0 holds the lock: one holder per run.

The lock goes through `core.paths`, so a workdir in a bucket is locked too. A local lock is created
exclusively (`paths.write_new`); an object store has no exclusive create through fsspec, so there (and after
taking over a stale lock, where two runs may both judge it stale) the run writes its lock, waits `SETTLE_S`
and reads it back: of two runs that raced, the one whose write landed last keeps the lock and the other is
refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator

from liteframe_jax.core import paths, run_dir

LOCK_NAME = run_dir.LOCK
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # another host's lock with no heartbeat for this long belongs to a run that is gone
SETTLE_S = {"local": 0.2, "remote": 2.0}  # time for a racing run's write to land before the read-back


class WorkdirInUse(ValueError):
    """A live run holds the workdir (a ValueError: the entry point says it in one line)."""


@dataclasses.dataclass
class Holder:
    host: str
    pid: int
    started: float  # when the run took the lock (seconds since the epoch)
    heartbeat: float
    token: str  # tells two holders apart even when host and process id repeat

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}, started {_when(self.started)}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def lock_path(workdir: str) -> str:
    return run_dir.RunDir(workdir).lock


def read_holder(path: str) -> Holder | None:
    """The lock's holder; None when there is no lock or it cannot be read as one (a lock half-written by a
    killed run holds nothing)."""
    try:
        fields = json.loads(paths.read_text(path))
        return Holder(host=str(fields["host"]), pid=int(fields["pid"]), started=float(fields["started"]),
                      heartbeat=float(fields["heartbeat"]), token=str(fields["token"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def _process_start(pid: int) -> tuple[float, str] | None:
    """(start time since the epoch, state letter) of a local process from /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), fields[0]


def why_gone(holder: Holder, now: float | None = None) -> str | None:
    """Why the run holding the lock is no longer running, or None when it may be."""
    now = time.time() if now is None else now
    if holder.host != socket.gethostname():
        age = now - holder.heartbeat
        if age < STALE_AFTER_S:
            return None
        return f"no heartbeat for {age:.0f} s (a run elsewhere is taken for gone after {STALE_AFTER_S:.0f} s)"
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return f"process {holder.pid} no longer exists"
    except PermissionError:  # another user's process: it exists
        pass
    start = _process_start(holder.pid)
    if start is not None and start[1] == "Z":
        return f"process {holder.pid} has ended"
    if start is not None and start[0] > holder.started + 2.0:  # the id was given to a later process
        return f"process {holder.pid} no longer exists (its id now belongs to a later process)"
    return None


class RunLock:
    """The lock of one workdir, held from `acquire` to `release`, its heartbeat kept by a daemon thread."""

    def __init__(self, workdir: str, say=print):
        self.workdir, self.path, self._say = paths.resolve(workdir), lock_path(workdir), say
        now = time.time()
        self.holder = Holder(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
        self._stop = threading.Event()
        self._thread = None

    def acquire(self) -> "RunLock":
        paths.makedirs(self.workdir)
        took_over = False
        if not paths.write_new(self.path, self.holder.to_json()):
            current = read_holder(self.path)
            if current is not None:
                why = why_gone(current)
                if why is None:
                    raise self._in_use(current)
                self._say(f"{self.workdir}: taking over the lock of {current.describe()}: {why}")
            else:
                self._say(f"{self.workdir}: taking over {self.path}, which names no run (cut short by a kill)")
            paths.write_text(self.path, self.holder.to_json())
            took_over = True
        if took_over or paths.is_remote(self.path):
            time.sleep(SETTLE_S["remote" if paths.is_remote(self.path) else "local"])
            current = read_holder(self.path)
            if current is None or current.token != self.holder.token:
                raise self._in_use(current)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat")
        self._thread.start()
        return self

    def _in_use(self, current: Holder | None) -> WorkdirInUse:
        who = current.describe() if current is not None else "another run starting at the same time"
        return WorkdirInUse(f"{self.workdir} is in use by the run of {who} (lock {self.path}): wait for it to end, "
                            "stop it, or give another --workdir")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = read_holder(self.path)
            if current is not None and current.token != self.holder.token:
                self._say(f"warning: {self.path} was taken over by the run of {current.describe()}, which judged "
                          "this run gone; two runs now write into this workdir")
                return
            self.holder.heartbeat = time.time()
            try:
                paths.write_text(self.path, self.holder.to_json())
            except OSError:  # a lost connection to the bucket: the next beat tries again
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            paths.remove(self.path)


_HELD: dict[str, RunLock] = {}  # workdir -> the lock this process holds on it


@contextlib.contextmanager
def hold(workdir: str, process_index: int = 0, say=print) -> Iterator[RunLock | None]:
    """The workdir's lock for the time of the block, taken by process 0 of a run only. Within a block that
    holds it already (the entry point holds it over the whole job, the train loop over its run) it is kept."""
    key = paths.resolve(workdir)
    if process_index != 0 or key in _HELD:
        yield _HELD.get(key)
        return
    lock = _HELD[key] = RunLock(workdir, say=say).acquire()
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()
