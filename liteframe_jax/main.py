"""Entry point: `python -m liteframe_jax.main --config=configs/ctd.py[:preset] [--workdir=DIR] [--config.x=y]`.

Loads the ml_collections config (locked, so a misspelt override is an error naming the key), sets up
multi-host JAX when launched on several processes, and dispatches on `config.trainer`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from liteframe_jax.jobs import print_summary, run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/ctd.py:demo.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, plots. Default: runs/<trainer>.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs (or set by the cluster).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


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


def answer(config) -> None:
    from liteframe_jax.eval.answer import VideoQA
    for key in ("run", "video", "question"):
        if not config[key]:
            raise app.UsageError(f"--config.{key} is required")
    qa = VideoQA.from_run(config.run)
    text = qa(config.video, config.question, max_new_tokens=config.max_new_tokens,
              temperature=config.temperature, top_k=config.top_k, seed=config.seed)
    print(f"Q: {config.question}\nA: {text}")


def evaluate(config, workdir: str) -> None:
    from liteframe_jax.eval import harness
    from liteframe_jax.eval.answer import VideoQA, internvl_baseline
    m = config.model
    if bool(m.run) == bool(m.internvl):
        raise app.UsageError("give exactly one of --config.model.run (an LMA run) and --config.model.internvl")
    preprocess = dict(sampling=config.preprocess.sampling, resize=config.preprocess.resize)
    model = (VideoQA.from_run(m.run, mlp_kernel=m.mlp_kernel, **preprocess) if m.run else
             internvl_baseline(m.internvl, num_frames=m.internvl_frames, mlp_kernel=m.mlp_kernel or "xla",
                               **preprocess))
    if config.benchmark == "demo" and not config.data.root:
        config.data.root = os.path.join(m.run, "demo_qa")
    if not config.data.root:
        raise app.UsageError("--config.data.root is required (the benchmark's folder)")
    harness.evaluate(config, workdir, model)


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/ctd.py")
    if config.trainer == "generate":
        return answer(config)
    if config.trainer == "eval":
        return evaluate(config, _WORKDIR.value or os.path.join("runs", f"eval_{config.benchmark}"))
    maybe_initialize_distributed()
    workdir = _WORKDIR.value or os.path.join("runs", config.trainer)
    os.makedirs(workdir, exist_ok=True)
    logging.set_verbosity(logging.ERROR)  # our own progress lines go to stdout
    result, task = run(config, workdir)
    print_summary(result, task)


if __name__ == "__main__":
    sys.exit(app.run(main))
