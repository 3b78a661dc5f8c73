"""The one train-loop skeleton shared by CTD and LMA.

A `Task` says what is trained (its model), what is frozen (e.g. the teacher), what a batch is, how the
loss is computed and how held-out data is scored. This file does the rest, the same way for every task:
shape-first init under shardings, the resume order, an AOT-compiled jitted step with donated state, the NaN
guard, metrics and progress, Orbax checkpoints with the data iterator, and the final summary.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import os
import re
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from liteframe_jax.convert.mapping import flatten, unflatten
from liteframe_jax.models.layers import pure_dict
from liteframe_jax.train import checkpoint, metrics as metrics_lib, optim, sharding


class Task(abc.ABC):
    """What a trainer adds to the skeleton: its model, frozen parts, data, loss and evaluation."""

    name: str = "task"

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh

    @abc.abstractmethod
    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The trainable model (every nnx.Param in it is trained)."""

    def frozen(self) -> tuple[Any, Any]:
        """(arrays on the mesh, their shardings) of the frozen parts; never saved, never optimised."""
        return None, None

    @abc.abstractmethod
    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Global shapes and dtypes of one training batch."""

    @abc.abstractmethod
    def train_dataset(self):
        """This process's Grain IterDataset of local batches (dicts of numpy arrays)."""

    def prepare(self, frozen, batch, rng):
        """Work outside the gradient (e.g. the teacher's targets); runs inside the jitted step."""
        return None

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch, prepared, rng) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar float32 loss, extra metrics) for one batch."""

    def eval_batches(self) -> Iterator[tuple[dict, np.ndarray]]:
        """(local batch, mask of real rows) over the held-out set; empty when there is none."""
        return iter(())

    def eval_sums(self, model: nnx.Module, frozen, batch, mask) -> dict[str, jax.Array]:
        """Per-batch sums over masked rows; `count` must be among them."""
        raise NotImplementedError

    def evaluate(self, graphdef, params, frozen) -> dict[str, float]:
        """Held-out metrics for the whole model's `params`: by default, `eval_sums` averaged over
        `eval_batches`. Tasks that generate text override this."""
        if not hasattr(self, "_eval_step"):
            self._eval_step = jax.jit(lambda p, f, b, m: self.eval_sums(nnx.merge(graphdef, p), f, b, m))
        totals: dict[str, float] = {}
        for local, mask in self.eval_batches():
            batch = sharding.global_batch({**local, "mask": mask}, self.mesh)
            mask = batch.pop("mask")
            for k, v in jax.device_get(self._eval_step(params, frozen, batch, mask)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count", 0.0)
        return {k: v / count for k, v in totals.items()} if count else {}

    def trainable_patterns(self) -> list[str]:
        """Regexes over parameter paths ('llm/layer_0/attn/q/dense/kernel'); matching ones are trained, the
        rest of the model is frozen: kept out of the optimizer state and of checkpoints, rebuilt at start."""
        return [".*"]

    def pretrained_params(self, paths: dict[str, tuple]) -> dict[str, np.ndarray]:
        """{path: array} from pretrained sources (an LLM folder, a CTD run) for the model's parameters
        `paths` ({path: shape}); applied at every start to frozen parts and at a fresh start to trained ones."""
        return {}

    def init_from_params(self, source: dict, target: dict) -> dict:
        """Map a checkpoint's params onto this model's (for `init_from`); default: same paths and shapes."""
        return match_params(source, target)

    def summary(self, result: dict) -> list[str]:
        return []


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


def match_params(source: dict, target: dict) -> dict:
    """Take every source leaf whose path and shape match the target; count and report the rest."""
    src, dst = flatten(source), flatten(target)
    out, taken = {}, 0
    for path, leaf in dst.items():
        if path in src and tuple(np.shape(src[path])) == tuple(leaf.shape):
            out[path] = src[path]
            taken += 1
        else:
            out[path] = leaf
    if taken == 0:
        raise ValueError("init_from: no parameter of the checkpoint matches this model by name and shape")
    logging.info("init_from: %d of %d parameters taken from the checkpoint", taken, len(dst))
    metrics_lib.log(f"init_from: {taken} of {len(dst)} parameters taken from the checkpoint")
    return unflatten(out)


class _IteratorSnapshot:
    """The data iterator's position at save time: Orbax may write items after the loop has moved on."""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._state


def _tree_norm(tree) -> jax.Array:
    return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def _split(tree: dict, trainable: set[str]) -> tuple[dict, dict]:
    flat = flatten(tree)
    return (unflatten({k: v for k, v in flat.items() if k in trainable}),
            unflatten({k: v for k, v in flat.items() if k not in trainable}))


def _merge(a: dict, b: dict) -> dict:
    return unflatten({**flatten(a), **flatten(b)})


def _place(tree: dict, overrides: dict[str, np.ndarray], shardings: dict) -> dict:
    """Replace leaves of a device tree by host arrays (placed with the leaf's sharding)."""
    flat, flat_sh = flatten(tree), flatten(shardings)
    for path, value in overrides.items():
        if path in flat:
            if tuple(value.shape) != tuple(flat[path].shape):
                raise ValueError(f"pretrained parameter {path!r} has shape {value.shape}, the model's is "
                                 f"{flat[path].shape}")
            flat[path] = jax.device_put(np.asarray(value, flat[path].dtype), flat_sh[path])
    return unflatten(flat)


def _write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def train(config, workdir: str, task: Task) -> Result:
    mesh = task.mesh
    key = jax.random.key(config.seed)
    total_steps = int(config.total_steps)
    _write_config(config, workdir)

    # --- shapes first: the model, which of it trains, shardings of both parts and of the optimizer state ---
    graphdef, abstract_model_state = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    full_sh = sharding.param_shardings(abstract_model_state, config.sharding_rules, mesh)
    paths = {k: tuple(v.shape) for k, v in flatten(pure_dict(abstract_model_state)).items()}
    patterns = task.trainable_patterns()
    trainable = {p for p in paths if any(re.search(pat, p) for pat in patterns)}
    if not trainable:
        raise ValueError(f"no parameter matches the trainable patterns {patterns}; paths look like "
                         f"{sorted(paths)[:5]}")
    param_sh, frozen_model_sh = _split(full_sh, trainable)
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
    replicated = sharding.replicated(mesh)

    def fresh_state(params):
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                "nonfinite_streak": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

    def init_full(rng):
        return pure_dict(nnx.state(task.build_model(nnx.Rngs(rng))))

    abstract = jax.eval_shape(lambda k: fresh_state(_split(init_full(k), trainable)[0]), key)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_sh,
                                   transform_non_params=lambda _: replicated,
                                   is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    state_sh = {"step": replicated, "params": param_sh, "opt_state": opt_sh,
                "nonfinite_streak": replicated, "skipped": replicated}
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    num_trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    num_all = sum(int(np.prod(s)) for s in paths.values())
    metrics_lib.log(f"[{task.name}] parameters: {num_trained / 1e6:.2f}M trained of {num_all / 1e6:.2f}M, on mesh "
                    f"{dict(mesh.shape)} ({jax.process_count()} process(es), {jax.device_count()} devices)")

    # --- the model at init: random, then pretrained parts; frozen parts are rebuilt this way at every start ---
    full = jax.jit(init_full, out_shardings=full_sh)(key)
    full = _place(full, task.pretrained_params(paths), full_sh)
    init_params, frozen_model = _split(full, trainable)
    del full
    task_frozen, task_frozen_sh = task.frozen()
    frozen, frozen_sh = (task_frozen, frozen_model), (task_frozen_sh, frozen_model_sh)

    # --- data and the resume order ---
    data_iter = iter(task.train_dataset())
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints, async_save=config.async_checkpointing)
    own = ckpt.latest_step()
    if own is not None:
        state = ckpt.restore(own, abstract, data_iter)
        origin = f"resumed from this workdir at step {own}"
    elif config.resume_from:
        other = checkpoint.Checkpointer(config.resume_from, keep=config.keep_checkpoints)
        step = other.latest_step()
        if step is None:
            raise FileNotFoundError(f"resume_from: no checkpoint in {checkpoint.checkpoint_dir(config.resume_from)}")
        state = other.restore(step, abstract, data_iter)
        other.close()
        origin = f"resumed from {config.resume_from} at step {step}"
    elif config.init_from:
        source, step = checkpoint.restore_params(config.init_from)
        params = task.init_from_params(source, jax.device_get(init_params))
        params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), params, param_sh)
        state = jax.jit(fresh_state, out_shardings=state_sh)(params)
        origin = f"parameters initialised from {config.init_from} (step {step})"
    else:
        state = jax.jit(fresh_state, out_shardings=state_sh, donate_argnums=0)(init_params)
        origin = "initialised from scratch"
    del init_params
    start_step = int(jax.device_get(state["step"]))
    metrics_lib.log(f"[{task.name}] {origin}; training steps {start_step} -> {total_steps}")

    # --- the step: gradient accumulation over micro-batches with lax.scan ---
    accum = int(config.get("grad_accum_steps", 1))

    def grads_of(params, frozen, batch, rng):
        task_frozen, frozen_model = frozen
        prepared = jax.lax.stop_gradient(task.prepare(task_frozen, batch, rng))

        def loss_fn(p):
            return task.loss(nnx.merge(graphdef, _merge(p, frozen_model)), batch, prepared, rng)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def train_step(state, frozen, batch):
        rng = jax.random.fold_in(key, state["step"])
        if accum == 1:
            (loss, aux), grads = grads_of(state["params"], frozen, batch, rng)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, xs):
                i, mb = xs
                (l, a), g = grads_of(state["params"], frozen, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (l, a, g)), None

            zeros = jax.eval_shape(lambda: grads_of(state["params"], frozen,
                                                    jax.tree.map(lambda x: x[0], micro), rng))
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (zeros[0][0], zeros[0][1], zeros[1]))
            (loss, aux, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            loss, aux, grads = jax.tree.map(lambda x: x / accum, (loss, aux, grads))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = _tree_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        new_state = {"step": state["step"] + 1, "params": keep(params, state["params"]),
                     "opt_state": keep(opt_state, state["opt_state"]),
                     "nonfinite_streak": jnp.where(ok, 0, state["nonfinite_streak"] + 1),
                     "skipped": state["skipped"] + (~ok).astype(jnp.int32)}
        metrics = {"loss": loss, "lr": schedule(state["step"]), "grad_norm": grad_norm,
                   "param_norm": _tree_norm(params), "update_norm": _tree_norm(updates), **aux}
        return new_state, metrics

    batch_spec = task.batch_spec()
    for k, v in batch_spec.items():
        if v.shape[0] % accum:
            raise ValueError(f"batch {k} of {v.shape[0]} rows cannot be split into {accum} micro-batches")
    batch_sh = {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch_spec.items()}
    jitted = jax.jit(train_step, in_shardings=(state_sh, frozen_sh, batch_sh),
                     out_shardings=(state_sh, replicated), donate_argnums=(0,))
    t0 = time.perf_counter()
    spec_shapes = {k: tuple(v.shape) for k, v in batch_spec.items()}
    compiled = jitted.lower(abstract, frozen, {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k])
                                               for k, v in batch_spec.items()}).compile()
    compile_seconds = time.perf_counter() - t0
    metrics_lib.log(f"[{task.name}] step compiled in {compile_seconds:.1f}s; {_memory_report(compiled)}")

    def step_fn(state, batch):  # other batch shapes (length buckets) compile once each through jit's cache
        same = all(tuple(batch[k].shape) == s for k, s in spec_shapes.items())
        return (compiled if same else jitted)(state, frozen, batch)

    evaluate = lambda params: task.evaluate(graphdef, _merge(params, frozen_model), task_frozen)
    writer = metrics_lib.MetricWriter(workdir, total_steps)
    eval_at_start = None
    if config.eval_at_start and start_step == 0:
        eval_at_start = evaluate(state["params"])
        if eval_at_start:
            writer.write(0, {f"eval_{k}": v for k, v in eval_at_start.items()})

    # --- the loop: no host sync except at log, eval and checkpoint steps ---
    writer.start(start_step)
    last_metrics, eval_metrics, t_train = {}, {}, time.perf_counter()
    step = start_step
    for step in range(start_step + 1, total_steps + 1):
        batch = sharding.global_batch(next(data_iter), mesh)
        state, metrics = step_fn(state, batch)
        if step % config.log_every == 0 or step == total_steps:
            last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            streak, skipped = (int(x) for x in jax.device_get((state["nonfinite_streak"], state["skipped"])))
            if streak >= config.nan_patience:
                raise FloatingPointError(
                    f"step {step}: the loss or gradients were non-finite for {streak} steps in a row "
                    f"({skipped} skipped in all); last metrics {last_metrics}. Lower optimizer.lr or check the data.")
            last_metrics.update(steps_per_sec=writer.steps_per_sec(step), skipped_steps=skipped)
            writer.write(step, last_metrics)
        if config.eval_every and step % config.eval_every == 0 and step != total_steps:
            eval_metrics = evaluate(state["params"])
            writer.write(step, {f"eval_{k}": v for k, v in eval_metrics.items()})
        if step % config.checkpoint_every == 0 or step == total_steps:
            ckpt.save(step, state, _IteratorSnapshot(data_iter))
    train_seconds = time.perf_counter() - t_train
    if step == total_steps:
        eval_metrics = evaluate(state["params"])
        if eval_metrics:
            writer.write(total_steps, {f"eval_{k}": v for k, v in eval_metrics.items()})
    ckpt.close()
    writer.close()
    if hasattr(data_iter, "close"):  # stops Grain's worker processes and frees their shared memory
        data_iter.close()
    curve = metrics_lib.plot_loss_curve(workdir, f"{task.name}: {config.get('preset', '')}".strip(": "))
    return Result(workdir=workdir, step=int(jax.device_get(state["step"])), origin=origin,
                  checkpoint_dir=ckpt.directory, metrics_path=writer.path, curve_path=curve, eval=eval_metrics,
                  eval_at_start=eval_at_start, last_metrics=last_metrics, compile_seconds=compile_seconds,
                  train_seconds=train_seconds, params=_merge(state["params"], frozen_model))


def _memory_report(compiled) -> str:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend reports memory
        m = None
    if m is None:
        return "memory analysis unavailable on this backend"
    gib = lambda b: b / 2 ** 30
    return (f"per-device memory: arguments {gib(m.argument_size_in_bytes):.2f} GiB, outputs "
            f"{gib(m.output_size_in_bytes):.2f} GiB, temporaries {gib(m.temp_size_in_bytes):.2f} GiB, "
            f"aliased {gib(m.alias_size_in_bytes):.2f} GiB")
