"""The one train-loop skeleton shared by CTD and LMA.

A `Task` (train/task.py) says what is trained, what is frozen, what a batch is, how the loss is computed and
how held-out data is scored. This file does the rest, the same way for every task:
shape-first init under shardings, the resume order, an AOT-compiled jitted step with donated state, the NaN
guard, metrics and progress, Orbax checkpoints with the data iterator, and the final summary.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from liteframe_jax.assembly import run_folder
from liteframe_jax.core import checkpoint, paths, run_lock, sharding
from liteframe_jax.core.log import log
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.core.tree import flatten
from liteframe_jax.data import bad_data
from liteframe_jax.train import metrics as metrics_lib
from liteframe_jax.train import preemption
from liteframe_jax.train import state as state_lib
from liteframe_jax.train import step as step_lib
from liteframe_jax.train.task import Task


@dataclasses.dataclass
class Result:
    workdir: str
    step: int
    origin: str
    checkpoint_dir: str
    metrics_path: str
    curve_path: str | None
    eval: dict
    eval_at_start: dict | None
    last_metrics: dict
    compile_seconds: float
    train_seconds: float
    params: dict | None = None  # the whole model's final parameters (trained and frozen parts)
    preempted: bool = False  # stopped early by a preemption notice, with a checkpoint of the last step
    saved_step: int | None = None  # the run's latest checkpoint at its end


class _IteratorSnapshot:
    """The data iterator's position at save time: Orbax may write items after the loop has moved on."""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._state


def _resume(ckpt, step: int, abstract, data_iter, task: Task, config):
    """The state at `step` and the data iterator at the batch after it. A checkpoint written by another
    number of processes holds no position for this one: each process's stream then starts after the
    `step * batch_size` examples that the run's global batches took (its share of them), which is where
    the saved run was unless some example failed to decode and was dropped before this step."""
    state, positioned = ckpt.restore(step, abstract, data_iter)
    if positioned:
        return state, data_iter
    saved = sorted(ckpt.saved_process_counts(step))
    if not saved:
        raise FileNotFoundError(f"{ckpt.directory}/{step} holds no data position (no data/process_*.json)")
    local = task.local_batch
    log(f"[{task.name}] step {step} was saved by {saved[0]} process(es), this run has {jax.process_count()}: "
        f"the data continues after the {step * int(config.batch_size)} examples of its {step} global batches "
        "(the same batches unless examples were dropped before it)")
    if hasattr(data_iter, "close"):
        data_iter.close()
    return state, iter(task.train_dataset(start=step * local))


def _chosen_step(ckpt, config) -> int | None:
    """The step to resume from in `ckpt`: `config.resume_step` when set (one of its saved steps), else the
    latest; None when it has no checkpoint."""
    wanted, steps = config.get("resume_step"), ckpt.all_steps()
    if wanted is None or not steps:
        return ckpt.latest_step()
    if wanted not in steps:
        raise ValueError(f"--config.resume_step={wanted}: {ckpt.directory} has no checkpoint of that step; it has "
                         f"{', '.join(map(str, steps))}")
    marker = _resumed_marker(ckpt)
    if wanted < steps[-1] and paths.exists(marker) and json.loads(paths.read_text(marker)).get("step") == wanted:
        # the same command run again must not go back to the same step and set aside what it trained since
        raise ValueError(f"--config.resume_step={wanted} was used already: the run went back to step {wanted} and "
                         f"has trained to step {steps[-1]} since. Drop --config.resume_step to continue from step "
                         f"{steps[-1]} (or remove {marker} to go back to step {wanted} once more)")
    return wanted


def _resumed_marker(ckpt) -> str:
    """Where a run that went back to an earlier checkpoint (`resume_step`) records the step it went back to."""
    return ckpt.run.resumed_from


def _record_going_back(ckpt, step: int, later: list[int]) -> None:
    if jax.process_index() == 0:
        paths.write_text(_resumed_marker(ckpt), json.dumps({"step": step, "set_aside": later,
                                                            "time": time.strftime("%Y-%m-%d %H:%M:%S")}))


def _write_config(config, workdir: str, spec) -> None:
    if jax.process_index() == 0:
        RunDir(workdir).write_config(config.to_json_best_effort(indent=2))
    if spec is not None:
        run_folder.write_spec(workdir, spec)


def _frozen_from_run(workdir: str, frozen_paths: set[str]) -> dict[str, np.ndarray]:
    """A resumed run's frozen parameters from its own frozen/ folder (written at its first start)."""
    saved = flatten(checkpoint.read_tree(checkpoint.frozen_dir(workdir)))
    missing = sorted(frozen_paths - set(saved))
    if missing:
        raise ValueError(f"{RunDir(workdir).frozen} does not hold {len(missing)} of the parameters that this config keeps "
                         f"frozen, e.g. {missing[:3]}: was train.trainable changed since the run started?")
    return {k: saved[k] for k in frozen_paths}


def train(config, workdir: str, task: Task) -> Result:
    """Train `task` in `workdir`; a Ctrl-C ends it, after a checkpoint of the step in flight, in
    `preemption.Interrupted` (exit status 130). The run holds the workdir's lock (core/run_lock.py) throughout,
    and the data iterator is closed on every way out, which stops Grain's worker processes and frees their shared
    memory."""
    opened = []  # the data iterators made, whichever way the run ends
    try:
        with run_lock.hold(workdir, jax.process_index(), say=log), preemption.PreemptionWatch() as watch:
            result = _train(config, workdir, task, watch, opened)
    finally:
        for data_iter in opened:
            if hasattr(data_iter, "close"):
                data_iter.close()
    if watch.interrupted and result.preempted:
        where = (f"checkpoint {result.saved_step} is in {result.checkpoint_dir}" if result.saved_step is not None
                 else "nothing was saved yet")
        log(f"[{task.name}] interrupted (Ctrl-C) after step {result.step}: {where}; run the same command again to "
            f"continue (exit status {preemption.EXIT_INTERRUPTED})")
        raise preemption.Interrupted(f"interrupted after step {result.step}")
    return result


def _train(config, workdir: str, task: Task, watch, opened: list) -> Result:
    mesh = task.mesh
    key = jax.random.key(config.seed)
    total_steps = int(config.total_steps)
    _write_config(config, workdir, task.spec)
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints, async_save=config.async_checkpointing)
    own = _chosen_step(ckpt, config)
    if own is None and config.get("resume_step") is not None and not config.resume_from:
        raise ValueError(f"--config.resume_step={config.resume_step}: {ckpt.directory} has no checkpoint to resume "
                         "from (and --config.resume_from is unset)")

    # --- shapes first: the model, which of it trains, shardings of both parts and of the optimizer state ---
    lay = state_lib.layout(config, task, key)
    paths, trainable, abstract = lay.paths, lay.trainable, lay.abstract
    log(f"[{task.name}] parameters: {lay.num_trained / 1e6:.2f}M trained of {lay.num_params / 1e6:.2f}M, "
        f"on mesh {dict(mesh.shape)} ({jax.process_count()} process(es), {jax.device_count()} devices)")

    # --- the model at init: random, then pretrained parts (at a resume, the frozen ones from the run itself) ---
    full = lay.random_model(key)
    frozen_saved = checkpoint.has_tree(checkpoint.frozen_dir(workdir))
    if own is not None and frozen_saved:
        pretrained = _frozen_from_run(workdir, set(paths) - trainable)
    else:
        pretrained = task.pretrained_params(paths)
    full = state_lib.place(full, pretrained, lay.full_sh)
    del pretrained
    init_params, frozen_model = state_lib.split(full, trainable)
    del full
    frozen_model = lay.frozen_as_kept(frozen_model)
    if flatten(frozen_model) and not frozen_saved:  # the run folder keeps the whole model
        checkpoint.save_tree(checkpoint.frozen_dir(workdir), frozen_model)
    task_frozen, task_frozen_sh = task.frozen()
    frozen, frozen_sh = (task_frozen, frozen_model), (task_frozen_sh, lay.frozen_model_sh)

    # --- data and the resume order ---
    data_iter = iter(task.train_dataset())
    opened.append(data_iter)
    if own is not None:
        state, data_iter = _resume(ckpt, own, abstract, data_iter, task, config)
        opened.append(data_iter)
        origin = f"resumed from this workdir at step {own}"
        later = ckpt.set_aside_after(own)  # only once `own` has been read whole: --config.resume_step=own
        if later:
            _record_going_back(ckpt, own, later)
            log(f"[{task.name}] resume_step={own}: the later checkpoints (steps {', '.join(map(str, later))}) are "
                f"moved to {ckpt.run.checkpoints_set_aside}/; this run saves those steps again")
    elif config.resume_from:
        other = checkpoint.Checkpointer(config.resume_from, keep=config.keep_checkpoints)
        step = _chosen_step(other, config)
        if step is None:
            raise FileNotFoundError(f"resume_from: no checkpoint in {checkpoint.checkpoint_dir(config.resume_from)}")
        state, data_iter = _resume(other, step, abstract, data_iter, task, config)
        opened.append(data_iter)
        other.close()
        origin = f"resumed from {config.resume_from} at step {step}"
    elif config.init_from:
        source, step = checkpoint.restore_params(config.init_from)
        params = task.init_from_params(source, jax.device_get(init_params))
        params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), params, lay.param_sh)
        state = jax.jit(lay.fresh_state, out_shardings=lay.state_sh)(params)
        origin = f"parameters initialised from {config.init_from} (step {step})"
    else:
        state = jax.jit(lay.fresh_state, out_shardings=lay.state_sh, donate_argnums=0)(init_params)
        origin = "initialised from scratch"
    del init_params
    start_step = int(jax.device_get(state["step"]))
    log(f"[{task.name}] {origin}; training steps {start_step} -> {total_steps}")

    # --- the step, compiled ahead of time for the task's batch spec ---
    step_fn = step_lib.compile_train_step(config, task, lay, frozen, frozen_sh, key)
    compile_seconds = step_fn.compile_seconds
    log(f"[{task.name}] step compiled in {compile_seconds:.1f}s; {step_fn.memory_report()}")
    step_lib.check_fits(step_fn, config, step_lib.device_memory_limit())

    evaluate = lambda params: task.evaluate(lay.graphdef, state_lib.merge(params, frozen_model), task_frozen)
    # rows past the step this run starts from were logged by an attempt that did not reach its next checkpoint:
    # this run logs those steps again
    writer = metrics_lib.MetricWriter(workdir, total_steps, start_step=start_step)
    eval_at_start = None
    if config.eval_at_start and start_step == 0:
        eval_at_start = evaluate(state["params"])
        if eval_at_start:
            writer.write(0, {f"eval_{k}": v for k, v in eval_at_start.items()})

    # --- the loop: no host sync except at log, eval and checkpoint steps (and a preemption notice) ---
    writer.start(start_step)
    t_train = time.perf_counter()
    step, last_metrics, eval_metrics = start_step, {}, {}
    if not watch.noticed:  # a notice while the run was being built stops it before its first step
        state, step, last_metrics, eval_metrics = _loop(
            config, state, start_step, total_steps, step_fn=step_fn, frozen=frozen, data_iter=data_iter, mesh=mesh,
            writer=writer, ckpt=ckpt, evaluate=evaluate, watch=watch, task=task, workdir=workdir)
    train_seconds = time.perf_counter() - t_train
    preempted = watch.noticed and step < total_steps
    if preempted and not watch.interrupted:
        log(f"[{task.name}] preempted: stopped after step {step} with a checkpoint of it; the same command "
            "continues from there")
    elif step == total_steps:
        eval_metrics = evaluate(state["params"])
        if eval_metrics:
            writer.write(total_steps, {f"eval_{k}": v for k, v in eval_metrics.items()})
    ckpt.close()
    saved_step = ckpt.latest_step()
    writer.close()
    curve = metrics_lib.plot_loss_curve(workdir, f"{task.name}: {config.get('preset', '')}".strip(": "))
    return Result(workdir=workdir, step=int(jax.device_get(state["step"])), origin=origin,
                  checkpoint_dir=ckpt.directory, metrics_path=writer.path, curve_path=curve, eval=eval_metrics,
                  eval_at_start=eval_at_start, last_metrics=last_metrics, compile_seconds=compile_seconds,
                  train_seconds=train_seconds, params=state_lib.merge(state["params"], frozen_model),
                  preempted=preempted, saved_step=saved_step)


def _host_only(local: dict) -> tuple[dict, np.ndarray | None]:
    """(the batch the step takes, the `_index` of its rows): keys starting with '_' describe the batch's
    examples for reports and never reach the device."""
    return {k: v for k, v in local.items() if not k.startswith("_")}, local.get("_index")


def _gathered(rows: np.ndarray) -> np.ndarray:
    """This process's rows of something, concatenated over the run's processes (all must call it)."""
    if jax.process_count() == 1:
        return rows
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(rows, tiled=True))


def _bad_data_metrics(watch) -> dict:
    """Clips or rows skipped mid-run, by reason, summed over processes (all must call it)."""
    if watch is None:
        return {}
    counts = _gathered(np.asarray([watch.tally.counts.get(r, 0) for r in bad_data.REASONS], np.int64)[None])
    counts = counts.sum(0)
    out = {f"skipped_{bad_data.slug(r)}": int(n) for r, n in zip(bad_data.REASONS, counts) if n}
    return {"skipped_examples": int(counts.sum()), **out}


@jax.jit
def _all_finite(params) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(params)]).all()


def _nonfinite_report(workdir, step, streak, skipped, metrics, ckpt, recent, task) -> str:
    """WORKDIR/nonfinite_report.json: what a run that stopped on non-finite steps needs to be reproduced, and
    the path it was written to."""
    bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
    batches = []
    for s, indices in recent:
        if s > step - streak and indices is not None:
            batches.append({"step": s, "examples": task.describe_examples(_gathered(np.asarray(indices)))})
    report = {"step": step, "non_finite_steps_in_a_row": streak, "skipped_in_all": skipped,
              "non_finite_metrics": bad, "metrics": {k: float(v) for k, v in metrics.items()},
              "last_checkpoint": ckpt.latest_step(),
              "reproduce": "the run's checkpoints hold only finite parameters; resuming from last_checkpoint gives "
                           "the same batches, so the steps below run again with the examples listed",
              "batches": batches}
    path = RunDir(workdir).nonfinite_report
    if jax.process_index() == 0:
        paths.write_text(path, json.dumps(report, indent=1))
    return path


def _loop(config, state, start_step: int, total_steps: int, *, step_fn, frozen, data_iter, mesh, writer, ckpt,
          evaluate, watch, task, workdir):
    """Steps `start_step + 1` .. `total_steps`, or until a preemption notice (then a checkpoint of the last step):
    (state, last step, last logged metrics, last held-out metrics)."""
    last_metrics, eval_metrics, step = {}, {}, start_step
    recent = collections.deque(maxlen=int(config.log_every) + int(config.nan_patience))  # (step, example indices)
    # The loop's host time spent getting each batch (the workers' queue, then assembling the batch), as a share
    # of the loop's time (evaluation and saving left out) and per batch. Steps run asynchronously, so the device
    # waits for data only when a batch takes about as long as a step: the per-batch time against the step's is
    # the headroom, the share near 1 means the input pipeline is the bottleneck.
    waited = busy = 0.0
    fetched = 0
    for step in range(start_step + 1, total_steps + 1):
        began = time.perf_counter()
        local, indices = _host_only(next(data_iter))
        waited += time.perf_counter() - began
        fetched += 1
        recent.append((step, indices))
        state, metrics = step_fn(state, frozen, sharding.global_batch(local, mesh, task.over_context()))
        stop = watch.reached(step)
        if step % config.log_every == 0 or step == total_steps or stop:
            last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            streak, skipped = (int(x) for x in jax.device_get((state["nonfinite_streak"], state["skipped"])))
            if streak >= config.nan_patience:
                report = _nonfinite_report(workdir, step, streak, skipped, last_metrics, ckpt, recent, task)
                bad = ", ".join(k for k, v in last_metrics.items() if not np.isfinite(v))
                raise FloatingPointError(
                    f"step {step}: the loss or gradients were non-finite for {streak} steps in a row ({skipped} "
                    f"skipped in all; non-finite: {bad}). Lower optimizer.lr or check the data: {report} lists "
                    f"the examples of those steps; checkpoint {ckpt.latest_step()} is the last, with finite "
                    "parameters")
            busy += time.perf_counter() - began
            last_metrics.update(steps_per_sec=writer.steps_per_sec(step), skipped_steps=skipped,
                                input_wait_fraction=waited / busy, input_ms_per_batch=waited / fetched * 1e3,
                                **_bad_data_metrics(task.data_watch))
            writer.write(step, last_metrics)
            waited = busy = 0.0
            fetched = 0
        else:
            busy += time.perf_counter() - began
        if config.eval_every and step % config.eval_every == 0 and step != total_steps:
            eval_metrics = evaluate(state["params"])
            writer.write(step, {f"eval_{k}": v for k, v in eval_metrics.items()})
        if step % config.checkpoint_every == 0 or step == total_steps or stop:
            # the step's guard keeps the parameters finite; a checkpoint must never hold a NaN or Inf either way
            if not bool(jax.device_get(_all_finite(state["params"]))):
                raise FloatingPointError(f"step {step}: the parameters hold NaN or Inf; not saved (checkpoint "
                                         f"{ckpt.latest_step()} is the last)")
            ckpt.save(step, state, _IteratorSnapshot(data_iter))
            writer.sync()
        if stop:
            break
    return state, step, last_metrics, eval_metrics
