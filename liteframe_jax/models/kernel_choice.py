"""`config.kernels` entries of 'auto' -> the kernels this platform runs best, each with the reason it was picked.

    attention   'cudnn' (flash attention) on a GPU computing in bfloat16 / float16, else XLA's (None)
    mlp         'pallas' (fused fc1 + GELU) for a frozen vision tower on a Hopper GPU in bfloat16, else 'xla';
                a tower that trains keeps 'xla' (the fused kernel's backward recomputes with XLA, slower)
    block_tail  'pallas' (the student block's fused tail, forward and backward) on a Hopper GPU, else 'xla'

An explicit choice is passed through unchanged: a platform that cannot run it refuses it where the model is
built, with the reason.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liteframe_jax.models import block_tail, fused_mlp

AUTO = "auto"


def _hopper_problem() -> str | None:
    if jax.default_backend() != "gpu":
        return f"no GPU (backend {jax.default_backend()})"
    device = jax.devices()[0]
    cc = str(getattr(device, "compute_capability", ""))
    return None if cc.startswith("9") else f"{device.device_kind} is not a Hopper GPU"


def _attention(dtype) -> tuple[str | None, str]:
    if jax.default_backend() != "gpu":
        return None, f"XLA's: no GPU (backend {jax.default_backend()})"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return None, f"XLA's: cuDNN flash attention needs bfloat16 or float16, compute is {jnp.dtype(dtype).name}"
    return "cudnn", "cuDNN flash attention (a GPU, half-precision compute)"


def _mlp(dtype, tower_trains: bool) -> tuple[str, str]:
    if tower_trains:
        return "xla", "xla: the vision tower trains here (the fused kernel is for frozen towers)"
    problem = fused_mlp.device_problem(dtype)
    return ("xla", f"xla: the fused MLP {problem}") if problem else ("pallas", "pallas: Hopper GPU, bfloat16")


def _block_tail() -> tuple[str, str]:
    problem = _hopper_problem() or block_tail.device_problem()
    return ("xla", f"xla: {problem}") if problem else ("pallas", "pallas: Hopper GPU")


def resolve(kernels, dtype, *, tower_trains: bool = False) -> tuple[dict, list[str]]:
    """(the kernels config as a dict with every 'auto' replaced, one line per replaced entry saying what was
    picked and why). `tower_trains`: the vision tower whose MLP `mlp` names is trained by this job."""
    chosen = dict(kernels.to_dict() if hasattr(kernels, "to_dict") else kernels)
    said = []
    if chosen.get("attention") == AUTO:
        chosen["attention"], why = _attention(dtype)
        said.append(f"kernels.attention=auto -> {why}")
    if chosen.get("mlp") == AUTO:
        chosen["mlp"], why = _mlp(dtype, tower_trains)
        said.append(f"kernels.mlp=auto -> {why}")
    if chosen.get("block_tail") == AUTO:
        chosen["block_tail"], why = _block_tail()
        said.append(f"kernels.block_tail=auto -> {why}")
    return chosen, said
