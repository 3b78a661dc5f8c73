"""The jitted train step (gradient accumulation, the non-finite guard, metrics) and its ahead-of-time compile
with a memory report. Training runs it; the benches time exactly it."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from liteframe_jax.core import sharding
from liteframe_jax.train.state import StateLayout, merge


def _tree_norm(tree) -> jax.Array:
    return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def micro_batches(x: jax.Array, accum: int, layout: NamedSharding) -> jax.Array:
    """(B, ...) -> (accum, B // accum, ...), micro-batch i holding rows i, i + accum, i + 2 * accum, ...

    The batch is split over the devices in contiguous blocks of rows. Strided micro-batches take the same
    number of rows from every block, so each micro-batch stays spread over all the devices with no data moved;
    contiguous ones (rows [i * B / accum, (i + 1) * B / accum)) would sit on 1/accum of the devices, and XLA
    would reshuffle every micro-batch (more memory and collectives, and a TPU compiler failure in a
    reduce-scatter fusion). The step's batch, and so its data order, is the same either way. Each micro-batch
    keeps the batch's `layout` (its input sharding)."""
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, NamedSharding(layout.mesh, P(None, *layout.spec)))


def input_shardings(task, batch_spec: dict) -> dict[str, NamedSharding]:
    """The step's batch layout: rows over the batch axes, and the arrays the task names (`Task.over_context`)
    split along their second axis over 'context' too."""
    split = task.over_context()
    return {k: sharding.batch_sharding(task.mesh, len(v.shape), over_context=k in split)
            for k, v in batch_spec.items()}


def make_train_step(config, task, layout: StateLayout, key, batch_sh: dict[str, NamedSharding]):
    """(state, frozen, batch) -> (state, metrics); `frozen` is (the task's frozen parts, the model's); `batch_sh`
    the batch's layout (`input_shardings`), which each micro-batch keeps."""
    accum = int(config.get("grad_accum_steps", 1))
    graphdef, tx, schedule = layout.graphdef, layout.tx, layout.schedule

    def grads_of(params, frozen, batch, rng):
        task_frozen, frozen_model = frozen
        prepared = jax.lax.stop_gradient(task.prepare(task_frozen, batch, rng))

        def loss_fn(p):
            return task.loss(nnx.merge(graphdef, merge(p, frozen_model)), batch, prepared, rng)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def train_step(state, frozen, batch):
        rng = jax.random.fold_in(key, state["step"])
        if accum == 1:
            (loss, aux), grads = grads_of(state["params"], frozen, batch, rng)
        else:
            micro = {k: micro_batches(x, accum, batch_sh[k]) for k, x in batch.items()}

            def body(carry, xs):
                i, mb = xs
                # Tied to this micro-batch, the weights are no longer loop invariants that XLA may gather whole
                # before the loop (FSDP-sharded frozen weights above all) and hold for the whole step.
                params, frozen_now, mb = jax.lax.optimization_barrier((state["params"], frozen, mb))
                (l, a), g = grads_of(params, frozen_now, mb, jax.random.fold_in(rng, i))
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
        params = keep(params, state["params"])
        new_state = {"step": state["step"] + 1, "params": params,
                     "opt_state": keep(opt_state, state["opt_state"]),
                     "nonfinite_streak": jnp.where(ok, 0, state["nonfinite_streak"] + 1),
                     "skipped": state["skipped"] + (~ok).astype(jnp.int32)}
        metrics = {"loss": loss, "lr": schedule(state["step"]), "grad_norm": grad_norm,
                   "param_norm": _tree_norm(params), "update_norm": _tree_norm(updates), **aux}
        return new_state, metrics

    return train_step


@dataclasses.dataclass
class CompiledStep:
    jitted: object  # for batch shapes other than the spec's (length buckets), compiled once each by jit
    compiled: object
    batch_spec: dict
    batch_sh: dict
    compile_seconds: float
    memory: dict | None  # bytes: arguments, outputs, temporaries, aliased; None where the backend says nothing

    def __call__(self, state, frozen, batch):
        same = all(tuple(batch[k].shape) == tuple(v.shape) for k, v in self.batch_spec.items())
        return (self.compiled if same else self.jitted)(state, frozen, batch)

    @property
    def step_gib(self) -> float | None:
        """What one step needs on a device: arguments + outputs + temporaries, less donated buffers."""
        m = self.memory
        return None if m is None else (m["arguments"] + m["outputs"] + m["temporaries"] - m["aliased"]) / 2 ** 30

    def memory_report(self) -> str:
        if self.memory is None:
            return "memory analysis unavailable on this backend"
        gib = {k: v / 2 ** 30 for k, v in self.memory.items()}
        return (f"per-device memory: arguments {gib['arguments']:.2f} GiB, outputs {gib['outputs']:.2f} GiB, "
                f"temporaries {gib['temporaries']:.2f} GiB, aliased {gib['aliased']:.2f} GiB")


def device_memory_limit() -> int | None:
    """Bytes a device of this process may allocate (None where the backend does not say: the CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def check_fits(step: CompiledStep, config, limit_bytes: int | None) -> None:
    """Stop before step 1 when XLA's plan for the compiled step needs more memory on a device than the device
    has, naming the config fields that would bring it down (`check_memory=False` tries anyway)."""
    if step.memory is None or not limit_bytes or not config.get("check_memory", True):
        return
    need = step.step_gib * 2 ** 30
    if need <= limit_bytes:
        return
    raise MemoryError(
        f"the train step needs {need / 2 ** 30:.2f} GiB per device but the device has {limit_bytes / 2 ** 30:.2f} "
        f"GiB ({step.memory_report()}): it would run out of memory at step 1. {memory_advice(config)}; or set "
        "--config.check_memory=False to try anyway")


def memory_advice(config) -> str:
    """The config fields that bring a step's memory per device down, with their values."""
    fixes = [f"batch_size (now {config.batch_size}; smaller: it is the global batch over all processes)"]
    if "grad_accum_steps" in config:
        fixes.append(f"grad_accum_steps (now {config.grad_accum_steps}; more micro-batches per step)")
    if "remat" in config:
        fixes.append(f"remat (now {config.remat!r}; 'full' recomputes the LLM's activations in the backward pass)")
    fixes.append(f"mesh.fsdp (now {config.mesh.fsdp}; more devices share the parameters and optimizer state)")
    fixes.append(f"mesh.tensor (now {config.mesh.tensor}; the heads and MLPs split over devices)")
    if "sizing" in config and config.sizing != "auto":
        fixes.append(f"sizing (now {config.sizing!r}; 'auto' compiles and moves down these until the step fits)")
    return "Change --config." + ", --config.".join(fixes)


def compile_train_step(config, task, layout: StateLayout, frozen, frozen_sh, key) -> CompiledStep:
    """The train step, jitted with donated state and compiled ahead of time for the task's batch spec."""
    mesh = task.mesh
    accum = int(config.get("grad_accum_steps", 1))
    batch_spec = task.batch_spec()
    devices = sharding.batch_split(mesh)
    for k, v in batch_spec.items():
        if v.shape[0] % accum or (v.shape[0] // accum) % devices:
            raise ValueError(f"batch_size {v.shape[0]} cannot be split into grad_accum_steps={accum} micro-batches "
                             f"that each spread over the {devices} batch devices (mesh.data x mesh.fsdp): "
                             f"batch_size must be a multiple of {accum * devices}")
    batch_sh = input_shardings(task, batch_spec)
    jitted = jax.jit(make_train_step(config, task, layout, key, batch_sh),
                     in_shardings=(layout.state_sh, frozen_sh, batch_sh),
                     out_shardings=(layout.state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
    t0 = time.perf_counter()
    lowered = jitted.lower(layout.abstract, frozen, {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k])
                                                     for k, v in batch_spec.items()})
    try:
        compiled = lowered.compile()
    except Exception as e:  # a TPU compiler refuses a program that cannot fit its HBM
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
            raise
        raise MemoryError(f"the train step does not fit the device (XLA: {text.strip().splitlines()[0][:300]}). "
                          f"{memory_advice(config)}") from None
    seconds = time.perf_counter() - t0
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend reports memory
        m = None
    memory = None if m is None else {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
                                     "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes}
    return CompiledStep(jitted, compiled, batch_spec, batch_sh, seconds, memory)
