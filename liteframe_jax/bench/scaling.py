"""Weak scaling of the CTD training step over the devices of one host (`python -m liteframe_jax.bench scaling`).

For 1, 2, 4, ... devices (powers of 2 up to all visible ones), the real `CTDTask` step of `bench ctd` runs
data-parallel on a ('data', 'fsdp', 'tensor') mesh from `core/sharding.py` with a fixed batch per device:
parameters and optimizer state replicated, the batch split over 'data', gradients averaged by the all-reduce
that XLA inserts. Rows give samples/s, MFU against the ceiling of all devices used, the compiled step's memory
per device, and the efficiency against one device (samples/s at N / (N x samples/s at 1)); the target for
data-parallel CTD is at least 90%.
"""

from __future__ import annotations

import tempfile

import jax

from liteframe_jax.bench import flops as flops_lib
from liteframe_jax.bench.training import ctd_config, time_train_step
from liteframe_jax.core import sharding


def device_counts(available: int) -> list[int]:
    counts, n = [], 1
    while n <= available:
        counts.append(n)
        n *= 2
    return counts


def bench_scaling(ceiling, small, impl, tail_kernel="xla", teacher_mlp_kernel="xla", counts=None):
    """Yields one row per device count (`counts`, default: powers of 2 up to all); `ceiling` is one device's
    bfloat16 matmul FLOP/s."""
    from liteframe_jax.train.ctd import CTDTask
    per_device = 1 if small else 16
    single = None
    for n in counts or device_counts(len(jax.devices())):
        batch = per_device * n
        config = ctd_config(small, impl, tail_kernel, teacher_mlp_kernel, batch, devices=n)
        try:
            task = CTDTask(config, sharding.make_mesh(config.mesh), tempfile.mkdtemp(), with_data=False)
            r = time_train_step(config, task, iters=3 if small else 10)
        except Exception as e:  # e.g. out of memory: reported, not hidden
            yield {"bench": "scaling", "mode": "online teacher", "devices": n, "batch": batch,
                   "error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        per_sample = (flops_lib.teacher_per_frame(task.teacher_vit_config, task.target_shape[-1]) * task.num_frames
                      + 3 * flops_lib.student_per_clip(task.student_cfg))
        samples_per_s = batch / r["sec"]
        if n == 1:
            single = samples_per_s
        yield {"bench": "scaling", "mode": "online teacher", "attention": impl or "xla",
               "student_tail_kernel": tail_kernel, "devices": n, "batch": batch, "batch_per_device": per_device,
               "ms": r["sec"] * 1e3, "samples_per_s": samples_per_s, "mfu": per_sample * batch / r["sec"] / (ceiling * n),
               "step_gib_per_device": r["step_gib"], "compile_s": r["compile_s"], "batch_devices": r["batch_devices"],
               "efficiency": None if single is None else samples_per_s / (n * single)}
        del task
