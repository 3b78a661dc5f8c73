"""Weak scaling of the CTD training step over the devices of one host (`python -m liteframe_jax.bench scaling`).

For 1, 2, 4, ... devices (powers of 2 up to all visible ones), the CTD step of `bench ctd` runs data-parallel
on a ('data', 'fsdp', 'tensor') mesh from `train/sharding.py` with a fixed batch per device: parameters and
optimizer state replicated, the batch split over 'data', gradients averaged by the all-reduce that XLA
inserts. Rows give samples/s, MFU against the ceiling of all devices used, the compiled step's memory per
device, and the efficiency against one device (samples/s at N / (N x samples/s at 1)); the target for
data-parallel CTD is at least 90%.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liteframe_jax.train import sharding


def device_counts(available: int) -> list[int]:
    counts, n = [], 1
    while n <= available:
        counts.append(n)
        n *= 2
    return counts


def bench_scaling(ceiling, small, impl, modes=("online teacher", "cached targets"), tail_kernel="xla"):
    """Yields one row per (mode, device count); `ceiling` is one device's bfloat16 matmul FLOP/s."""
    # the CTD bench's setup and timing (imported here: the bench's entry module imports this one)
    from liteframe_jax.bench.__main__ import BF16, _adamw_step, _compile_and_time, ctd_setup, random_frames

    per_device = {"online teacher": 1 if small else 16, "cached targets": 1 if small else 32}
    for mode in modes:
        single = None
        for n in device_counts(len(jax.devices())):
            mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, num_devices=n))
            setup = ctd_setup(small, impl, tail_kernel, mesh)  # the student's kernels split the batch over `mesh`
            t, size = setup["frames_per_clip"], setup["size"]
            loss_fn, per_sample = setup["modes"][mode]
            batch = per_device[mode] * n
            replicated = sharding.replicated(mesh)
            put_batch = lambda a: jax.device_put(a, sharding.batch_sharding(mesh, a.ndim))
            frames = put_batch(random_frames(batch, t, size))
            if mode == "online teacher":
                extra = jax.device_put(setup["t_params"], replicated)
            else:  # random targets of the teacher's shape: the step's cost does not depend on their values
                shape = jax.eval_shape(setup["targets"], setup["t_params"], frames).shape
                extra = put_batch(jax.random.normal(jax.random.key(n), shape, BF16))
            s_params = jax.device_put(setup["s_params"], replicated)
            tx, step = _adamw_step(loss_fn)
            state = (jax.tree.map(jnp.copy, s_params), jax.device_put(tx.init(s_params), replicated))
            try:
                sec, compile_s, step_gib = _compile_and_time(step, state, extra, frames)
            except Exception as e:  # e.g. out of memory: reported, not hidden
                yield {"bench": "scaling", "mode": mode, "devices": n, "batch": batch,
                       "error": f"{type(e).__name__}: {str(e)[:300]}"}
                continue
            samples_per_s = batch / sec
            if n == 1:
                single = samples_per_s
            yield {"bench": "scaling", "mode": mode, "attention": impl or "xla", "student_tail_kernel": tail_kernel,
                   "devices": n, "batch": batch,
                   "batch_per_device": per_device[mode], "ms": sec * 1e3, "samples_per_s": samples_per_s,
                   "mfu": per_sample * batch / sec / (ceiling * n), "step_gib_per_device": step_gib,
                   "compile_s": compile_s,
                   "efficiency": None if single is None else samples_per_s / (n * single)}
            del extra, state, frames, setup
