"""Entry point: `python -m liteframe_jax.main --config=configs/ctd.py[:preset] [--workdir=DIR] [--config.x=y]`.

Loads the ml_collections config (locked, so a misspelt override is an error naming the key), sets up
multi-host JAX when launched on several processes and the persistent compilation cache, and dispatches on
`config.trainer` through the jobs table (jobs.py). Exit status 0 when done; 75 when a preemption notice
(SIGTERM) stopped a training run after a checkpoint of its last step (train/preemption.py): run the same
command again to continue.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from liteframe_jax import jobs
from liteframe_jax.core import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/ctd.py:demo.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, plots. Default: runs/<trainer>.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs (or set by the cluster).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_CACHE = flags.DEFINE_string("compilation_cache", None, "Folder of JAX's persistent compilation cache for training "
                             "jobs (default: WORKDIR/compilation_cache; 'off' turns it off).")


def enable_compilation_cache(workdir: str) -> None:
    """JAX's persistent compilation cache, so a resumed or repeated run loads its compiled step instead of
    compiling it again: `--compilation_cache` (default WORKDIR/compilation_cache; 'off': none). A
    JAX_COMPILATION_CACHE_DIR in the environment is left as it is."""
    import jax
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or _CACHE.value == "off":
        return
    jax.config.update("jax_compilation_cache_dir", _CACHE.value or os.path.join(workdir, "compilation_cache"))


def maybe_initialize_distributed() -> None:
    """jax.distributed for multi-process runs: explicit flags, or the cluster's environment (TPU/SLURM)."""
    import jax
    if _COORDINATOR.value or _NUM_PROCESSES.value or os.environ.get("LITEFRAME_DISTRIBUTED") == "auto":
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # cross-process collectives on CPU need gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if _COORDINATOR.value or _NUM_PROCESSES.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif os.environ.get("LITEFRAME_DISTRIBUTED") == "auto":
        jax.distributed.initialize()


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/ctd.py")
    try:
        job = jobs.job(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    try:
        workdir = paths.resolve(_WORKDIR.value or job.default_workdir(config))
    except (ValueError, ModuleNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    logging.set_verbosity(logging.ERROR)  # our own progress lines go to stdout
    if job.trains:
        maybe_initialize_distributed()
        paths.makedirs(workdir)
        enable_compilation_cache(workdir)
    return job.run(config, workdir)


if __name__ == "__main__":
    sys.exit(app.run(main))
