"""What every Grain worker process does first: leave SIGINT and SIGTERM to the main process, and end itself
once the main process is gone.

A preemption notice (SLURM, a terminal's Ctrl-C, `kill` of a process group) reaches every process of the job.
A worker that died of it would leave a shared-memory batch behind and make the main process report a broken
pipeline while it is still saving its checkpoint; instead the main process finishes the step, saves, and
closes the iterator, which stops the workers through Grain's own stop event. A worker whose main process was
killed outright (kill -9) would otherwise wait forever on a queue nobody reads.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_ORPHAN_POLL_SECONDS = 1.0


def init_worker(worker_index: int, worker_count: int) -> None:
    """Grain's `worker_init_fn` (module level: spawned workers import it by name)."""
    del worker_index, worker_count
    parent = os.getppid()

    def on_signal(signum, frame):
        del frame
        if os.getppid() != parent:  # nobody left to stop us through the pipeline
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="orphan-watch").start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_ORPHAN_POLL_SECONDS)
    os._exit(0)
