"""Config pieces every job reads the same way, as data: the mesh, the one sharding rule table, the kernels."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# logical axis -> mesh axes (core/sharding.py); one table for every model
SHARDING_RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor"),
                  ("vocab", "tensor"), ("norm", None))


def mesh() -> ml_collections.ConfigDict:
    """('data', 'fsdp', 'tensor') sizes; -1: the remaining devices; num_devices > 0: only the first N;
    slices: TPU slices (or processes) that `data` spans over DCN, -1: as many as the devices span;
    context: devices that split each LMA row's tokens (sequence parallelism for long videos; 1: none);
    weights_over_context: the weights split over 'context' as well as 'fsdp' (core/sharding.py `rules_for`)."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1, weights_over_context=False,
                                          num_devices=-1, slices=-1))


def kernels(block_tail: str | None = "auto") -> ml_collections.ConfigDict:
    """How the models run (not what they compute); 'auto' (the default) picks what this platform runs best and
    says so at start (models/kernel_choice.py):
    attention   'auto' | None: XLA decides | 'cudnn': flash attention on GPU (`jax.nn.dot_product_attention`) |
                'splash': the LLM's causal attention as a Pallas TPU kernel (models/kernels/tpu_attention.py)
    mlp         'auto' | 'xla' | 'pallas': a frozen vision tower's fc1 + GELU as one Hopper kernel (bfloat16,
                inference only: the CTD teacher, the LMA encoder; models/kernels/fused_mlp.py)
    block_tail  'auto' | 'xla' | 'pallas': each student block's LayerNorm / temporal-convolution tail as one GPU
                kernel, forward and backward (models/kernels/block_tail.py); unset: the same as `mlp`
    tower_attention  'auto' | 'xla' | 'splash': the vision towers' (non-causal) attention on a TPU as the splash
                kernel: less memory than XLA's for a trained tower, more FLOPs (BENCHMARKS.md, TPU kernels);
                'auto' keeps XLA's and train/sizing.py turns it on where a step needs it to fit a chip (on a GPU
                the towers follow `attention`)
    A platform that cannot run an explicit 'pallas', 'cudnn' or 'splash' refuses it with the reason."""
    c = ml_collections.ConfigDict()
    c.attention = config_dict.FieldReference("auto", field_type=str)  # None allowed: XLA's own attention
    c.mlp = "auto"
    c.tower_attention = "auto"
    c.block_tail = block_tail if block_tail is not None else config_dict.placeholder(str)
    return c
