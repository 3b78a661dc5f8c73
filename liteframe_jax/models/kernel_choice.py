"""`config.kernels` entries of 'auto' -> the kernels the target device runs best, each with the reason it was picked.

The target is the device the step is compiled for (`device`, by default the first of `jax.devices()`), not the
host: a compile for a TPU topology on a CPU host picks the TPU's kernels.

    attention   'cudnn' (flash attention) on a GPU computing in bfloat16 / float16; 'splash' (Pallas splash
                attention for the LLM's causal attention, `models/kernels/tpu_attention.py`; the vision towers keep
                XLA's) on a TPU; else XLA's (None)
    mlp         'pallas' (fused fc1 + GELU) for a frozen vision tower on a Hopper GPU in bfloat16, else 'xla';
                a tower that trains keeps 'xla' (the fused kernel's backward recomputes with XLA, slower)
    block_tail  'pallas' (the student block's fused tail, forward and backward) on a Hopper GPU, else 'xla'
    tower_attention  'xla': the towers' attention as `attention` picks for them (cuDNN on a GPU, XLA's on a TPU);
                'splash' (set, or by train/sizing.py where a step needs it to fit) runs the towers' attention as
                the splash kernel on a TPU. `tower_attention_impl` gives what a tower is built with.

An explicit choice is passed through unchanged: a platform that cannot run it refuses it where the model is
built, with the reason; an explicit 'splash' for a device that is not a TPU is refused here already.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liteframe_jax.models.kernels import block_tail, fused_mlp, tpu_attention

AUTO = "auto"


def _not_gpu(device) -> str | None:
    return None if device.platform == "gpu" else f"no GPU (the device is {device.platform}: {device.device_kind})"


def _hopper_problem(device) -> str | None:
    if problem := _not_gpu(device):
        return problem
    cc = str(getattr(device, "compute_capability", ""))
    return None if cc.startswith("9") else f"{device.device_kind} is not a Hopper GPU"


def _attention(dtype, device) -> tuple[str | None, str]:
    if device.platform == "tpu":
        # BENCHMARKS.md (TPU kernels): one Qwen2.5-7B layer at 12,288 tokens on v5p needs 3.1 GiB of
        # temporaries per chip with splash against 26.5 GiB with XLA's attention.
        return tpu_attention.NAME, (
            f"splash: Pallas splash attention for the LLM's causal attention on {device.device_kind} (XLA's "
            f"builds heads x T^2 scores per layer: 8.4x the temporaries at 12,288 tokens; rows under "
            f"{tpu_attention.MIN_TOKENS:,} tokens keep XLA's); the vision towers follow kernels.tower_attention")
    if problem := _not_gpu(device):
        return None, f"XLA's: {problem}"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return None, f"XLA's: cuDNN flash attention needs bfloat16 or float16, compute is {jnp.dtype(dtype).name}"
    return "cudnn", "cuDNN flash attention (a GPU, half-precision compute)"


def _mlp(dtype, tower_trains: bool, device) -> tuple[str, str]:
    if tower_trains:
        return "xla", "xla: the vision tower trains here (the fused kernel is for frozen towers)"
    problem = _not_gpu(device) or fused_mlp.device_problem(dtype)
    return ("xla", f"xla: the fused MLP {problem}") if problem else ("pallas", "pallas: Hopper GPU, bfloat16")


def _block_tail(device) -> tuple[str, str]:
    problem = _hopper_problem(device) or block_tail.device_problem()
    return ("xla", f"xla: {problem}") if problem else ("pallas", "pallas: Hopper GPU")


def resolve(kernels, dtype, *, tower_trains: bool = False, device=None) -> tuple[dict, list[str]]:
    """(the kernels config as a dict with every 'auto' replaced, one line per replaced entry saying what was
    picked and why). `tower_trains`: the vision tower whose MLP `mlp` names is trained by this job. `device`:
    a device of the mesh the step is compiled for (default: the first of `jax.devices()`)."""
    device = device or jax.devices()[0]
    chosen = dict(kernels.to_dict() if hasattr(kernels, "to_dict") else kernels)
    said = []
    if chosen.get("attention") == AUTO:
        chosen["attention"], why = _attention(dtype, device)
        said.append(f"kernels.attention=auto -> {why}")
    elif chosen.get("attention") == tpu_attention.NAME and (problem := tpu_attention.device_problem(device)):
        raise ValueError(f"kernels.attention=splash {problem}; use 'auto' or None (XLA's)")
    if chosen.get("mlp") == AUTO:
        chosen["mlp"], why = _mlp(dtype, tower_trains, device)
        said.append(f"kernels.mlp=auto -> {why}")
    if chosen.get("block_tail") == AUTO:
        chosen["block_tail"], why = _block_tail(device)
        said.append(f"kernels.block_tail=auto -> {why}")
    tower = chosen.get("tower_attention")
    if tower == AUTO:
        chosen["tower_attention"] = "xla"
        if device.platform == "tpu":
            said.append("kernels.tower_attention=auto -> xla: the vision towers' attention stays XLA's (splash "
                        "saves memory at about 1.5x their attention FLOPs: train/sizing.py sets it where a step "
                        "needs it to fit)")
    elif tower == "splash" and (problem := tpu_attention.device_problem(device)):
        raise ValueError(f"kernels.tower_attention=splash {problem}; use 'auto' or 'xla'")
    elif tower not in (None, "xla", "splash"):
        raise ValueError(f"unknown kernels.tower_attention {tower!r}; choose 'auto', 'xla' or 'splash'")
    return chosen, said


def tower_attention_impl(chosen: dict) -> str | None:
    """The attention implementation a vision tower is built with, from `resolve`'s choices: the splash kernel
    where `tower_attention` is 'splash', else what `attention` names (the LLM's 'splash' leaves towers on XLA's)."""
    if chosen.get("tower_attention") == "splash":
        return tpu_attention.TOWER_NAME
    return chosen.get("attention")
