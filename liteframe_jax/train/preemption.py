"""Stopping cleanly when the machine is taken away: SIGTERM (what a spot / preemptible VM, SLURM and Kubernetes
send before they stop a job) ends the run after the step in flight, with a checkpoint of the state and the data
position at that step, and exit status `EXIT_PREEMPTED`; the same command then continues from there.

In a multi-process run every process must stop after the same step, or their checkpoints would disagree:
there JAX's coordination service is the one that hears the notice (it listens for SIGTERM in every process,
and on Cloud TPU for the maintenance events) and `multihost_utils.reached_preemption_sync_point(step)` says,
identically on every process, at which step to stop. A single process listens for SIGTERM itself.
"""

from __future__ import annotations

import signal
import threading

import jax

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure; run the same command again


def _sync_point_available() -> bool:
    if jax.process_count() == 1:
        return False
    try:
        from jax._src import distributed
        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


class PreemptionWatch:
    """`with PreemptionWatch() as watch:` ... `if watch.reached(step): save and stop`."""

    def __init__(self):
        self.noticed = False
        self._sync = _sync_point_available()
        self._previous = None

    def __enter__(self) -> "PreemptionWatch":
        if not self._sync and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self.noticed = True

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (the same answer on every process)."""
        if self._sync:
            from jax.experimental import multihost_utils
            self.noticed = self.noticed or multihost_utils.reached_preemption_sync_point(step)
        return self.noticed
