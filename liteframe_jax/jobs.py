"""The jobs table: what `python -m liteframe_jax.main --config=...` can run, keyed by `config.trainer`.

Each job is a function of (config, workdir). Training jobs first resolve what they need that another job
makes (the LMA demo's CTD student), then build their task and run the shared train loop.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from liteframe_jax.core import checkpoint, sharding
from liteframe_jax.core.configs import load_config_file
from liteframe_jax.core.log import log
from liteframe_jax.core.run_dir import RunDir


@dataclasses.dataclass(frozen=True)
class Job:
    run: Callable  # (config, workdir) -> the exit status (None: 0)
    # multi-process capable, with a workdir and the compilation cache (the training jobs, the target cache and
    # evaluation, whose questions are dealt to the processes)
    trains: bool
    default_workdir: Callable  # config -> the run folder when --workdir is not given


def resolve_prerequisites(config, workdir: str) -> None:
    """Jobs another job depends on, run first: `student.init='demo_ctd'` trains the demo's CTD student in
    WORKDIR/ctd (once; a later start reuses it) and points `student.init` at it."""
    if config.trainer == "lma" and config.encoder.kind in ("student", "teacher") and \
            config.student.init == "demo_ctd":
        ctd_dir = RunDir(workdir).demo_ctd
        if not checkpoint.has_checkpoint(ctd_dir):
            log(f"[lma] student.init=demo_ctd: training the demo CTD student first in {ctd_dir}")
            ctd = load_config_file("ctd", "demo")
            ctd.total_steps = int(config.student.demo_ctd_steps)
            train(ctd, ctd_dir)
        config.student.init = ctd_dir


def size_for_devices(config, workdir: str) -> None:
    """`config.sizing`: the fields that decide a step's memory, for this run's chips (train/sizing.py); with
    'auto', the step is compiled from shapes until it fits (the run's own compile then finds it cached)."""
    from liteframe_jax.train import aot, sizing
    target = aot.Target.of(None)
    sizing.apply(config, target.devices, aot.fits_on(target, workdir) if config.get("sizing") == "auto" else None)


def build_task(config, workdir: str):
    mesh = sharding.make_mesh(config.mesh)
    if config.trainer == "ctd":
        from liteframe_jax.train.ctd import CTDTask
        return CTDTask(config, mesh, workdir)
    from liteframe_jax.train.lma import LMATask
    return LMATask(config, mesh, workdir)


def train(config, workdir: str):
    """Run a training job (`ctd` or `lma`); returns (Result, task)."""
    from liteframe_jax.train.loop import train as train_loop
    if config.trainer not in ("ctd", "lma"):
        raise ValueError(f"config.trainer={config.trainer!r} is not a training job; training jobs: ctd, lma")
    resolve_prerequisites(config, workdir)
    size_for_devices(config, workdir)
    task = build_task(config, workdir)
    return train_loop(config, workdir, task), task


def compile_only(config, workdir: str, topology: str | None = None, num_slices: int = 1,
                 answer_frames: tuple[int, ...] = (), answer_only: bool = False) -> None:
    """`--compile_only`: the training job's step compiled ahead of time for this host or a TPU topology, and
    its report (train/aot.py); nothing trains."""
    from liteframe_jax.train.aot import compile_only as compile_step_only
    if config.trainer not in ("ctd", "lma"):
        raise ValueError(f"--compile_only compiles the training jobs (ctd, lma); config.trainer={config.trainer!r}")
    compile_step_only(config, workdir, topology, num_slices, answer_frames, answer_only)


def _train_job(config, workdir: str) -> int | None:
    """The exit status: None when done, `EXIT_PREEMPTED` when a preemption notice stopped the run early."""
    from liteframe_jax.train.preemption import EXIT_PREEMPTED
    result, task = train(config, workdir)
    if result.preempted:
        log(f"preempted at step {result.step}: its checkpoint is in {result.checkpoint_dir}; run the same command "
            f"again to continue (exit status {EXIT_PREEMPTED})")
        return EXIT_PREEMPTED
    print_summary(result, task)
    return None


def _generate_job(config, workdir: str) -> None:
    from liteframe_jax.eval.answer import VideoQA
    del workdir
    for key in ("run", "video", "question"):
        if not config[key]:
            raise ValueError(f"--config.{key} is required")
    qa = VideoQA.from_run(config.run, decoder=config.decoder, keyframes_only=config.keyframes_only)
    print(f"decoder: {qa.decoder} ({qa.decoder_reason})")
    text = qa(config.video, config.question, max_new_tokens=config.max_new_tokens,
              temperature=config.temperature, top_k=config.top_k, seed=config.seed)
    print(f"Q: {config.question}\nA: {text}")


def _eval_job(config, workdir: str) -> None:
    from liteframe_jax.eval import harness, shards, sweep
    from liteframe_jax.eval.answer import VideoQA, internvl_baseline
    m = config.model
    if bool(m.run) == bool(m.internvl):
        raise ValueError("give exactly one of --config.model.run (an LMA run) and --config.model.internvl")
    preprocess = dict(sampling=config.preprocess.sampling, resize=config.preprocess.resize,
                      decoder=config.preprocess.decoder, keyframes_only=config.preprocess.keyframes_only)
    if config.preprocess.image_size and not m.run:
        raise ValueError("--config.preprocess.image_size applies to an LMA run (--config.model.run)")
    model = (VideoQA.from_run(m.run, mlp_kernel=m.mlp_kernel, image_size=config.preprocess.image_size, **preprocess)
             if m.run else
             internvl_baseline(m.internvl, num_frames=m.internvl_frames, mlp_kernel=m.mlp_kernel or "auto",
                               **preprocess))
    if config.benchmark == "demo" and not config.data.root:
        config.data.root = RunDir(m.run).demo_qa
    if config.benchmark == "needle" and not config.data.root:  # generated there on first use
        config.data.root = RunDir(m.run or workdir).needle_test
    if not config.data.root:
        raise ValueError("--config.data.root is required (the benchmark's folder)")
    model = model.on_devices(shards.local_devices(int(config.devices)))  # each batch split over them
    if config.frames:
        if config.benchmark == "needle":
            raise ValueError("--config.frames: the needle test sweeps the counts of --config.needle.frames")
        sweep.run(config, workdir, model)
        return
    if config.benchmark == "needle":
        from liteframe_jax.eval import needle
        needle.evaluate(config, workdir, model)
        return
    harness.evaluate(config, workdir, model)


def _targets_job(config, workdir: str) -> None:
    from liteframe_jax.train.target_cache_job import build
    build(config, workdir)


JOBS = {
    "ctd": Job(_train_job, trains=True, default_workdir=lambda c: os.path.join("runs", "ctd")),
    "lma": Job(_train_job, trains=True, default_workdir=lambda c: os.path.join("runs", "lma")),
    "eval": Job(_eval_job, trains=True, default_workdir=lambda c: os.path.join("runs", f"eval_{c.benchmark}")),
    "generate": Job(_generate_job, trains=False, default_workdir=lambda c: "."),
    "targets": Job(_targets_job, trains=True, default_workdir=lambda c: os.path.join("runs", f"targets_{c.preset}")),
}


def job(config) -> Job:
    if config.trainer not in JOBS:
        raise ValueError(f"config.trainer={config.trainer!r}; known jobs: {sorted(JOBS)}")
    return JOBS[config.trainer]


def print_summary(result, task) -> None:
    lines = [
        "",
        f"done: step {result.step} ({result.origin}); compile {result.compile_seconds:.1f}s, "
        f"train {result.train_seconds:.1f}s",
        f"checkpoint: {result.checkpoint_dir}",
        f"metrics:    {result.metrics_path} (TensorBoard: {RunDir(result.workdir).tensorboard})",
        f"loss curve: {result.curve_path}",
        *task.summary(result),
    ]
    log("\n".join(lines))
