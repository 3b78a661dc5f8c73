"""Stopping cleanly when the machine is taken away or the user presses Ctrl-C.

SIGTERM (what a spot / preemptible VM, SLURM and Kubernetes send before they stop a job) ends the run after the
step in flight, with a checkpoint of the state and the data position at that step, and exit status
`EXIT_PREEMPTED`; the same command then continues from there. A Ctrl-C (SIGINT, which a terminal sends to every
process of the job, data workers included: they leave it to the main process, data/workers.py) does the same
and ends with `EXIT_INTERRUPTED`, as a shell expects of a Ctrl-C; a second Ctrl-C stops at once without a
checkpoint (`Interrupted` unwinds the loop, which stops the data workers on its way out).

In a multi-process run every process must stop after the same step, or their checkpoints would disagree:
there JAX's coordination service is the one that hears the notice (it listens for SIGTERM in every process,
and on Cloud TPU for the maintenance events) and `multihost_utils.reached_preemption_sync_point(step)` says,
identically on every process, at which step to stop. A Ctrl-C there is passed to the service as the SIGTERM
it listens for. A single process listens for both signals itself.
"""

from __future__ import annotations

import os
import signal
import threading

import jax

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure; run the same command again
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a Ctrl-C


class Interrupted(SystemExit):
    """The run stopped on Ctrl-C. A SystemExit, so it passes every `except Exception` on its way out and
    ends the program with `EXIT_INTERRUPTED` and no traceback."""

    def __init__(self, message: str):
        super().__init__(EXIT_INTERRUPTED)
        self.message = message


def _sync_point_available() -> bool:
    if jax.process_count() == 1:
        return False
    try:
        from jax._src import distributed
        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


def _say(text: str) -> None:
    # os.write, not print: a signal handler may run in the middle of another print to the same stream
    os.write(2, (text + "\n").encode())


class PreemptionWatch:
    """`with PreemptionWatch() as watch:` ... `if watch.reached(step): save and stop`; `watch.interrupted` says
    whether it was a Ctrl-C (then exit with `EXIT_INTERRUPTED`, else `EXIT_PREEMPTED`)."""

    def __init__(self):
        self.noticed = False
        self.interrupted = False
        self._sync = _sync_point_available()
        self._previous = {}

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():
            if not self._sync:
                self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self.noticed = True

    def _on_sigint(self, signum, frame) -> None:
        del signum, frame
        if self.interrupted:
            if jax.process_index() == 0:
                _say("Ctrl-C again: stopping now, without a checkpoint of the step in flight; the same command "
                     "continues from the last checkpoint")
            raise Interrupted("Ctrl-C again: stopped at once, without a checkpoint of the step in flight")
        self.interrupted = True
        if jax.process_index() == 0:
            _say("Ctrl-C: finishing the step in flight and saving a checkpoint of it (Ctrl-C again stops at once, "
                 "without one)")
        if self._sync:
            os.kill(os.getpid(), signal.SIGTERM)  # the coordination service's notice: every process stops together
        else:
            self.noticed = True

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (the same answer on every process)."""
        if self._sync:
            from jax.experimental import multihost_utils
            self.noticed = self.noticed or multihost_utils.reached_preemption_sync_point(step)
        return self.noticed
