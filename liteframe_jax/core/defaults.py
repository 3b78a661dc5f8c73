"""Config pieces every job reads the same way, as data: the mesh, the one sharding rule table, the kernels."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# logical axis -> mesh axes (core/sharding.py); one table for every model
SHARDING_RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor"),
                  ("vocab", "tensor"), ("norm", None))


def mesh() -> ml_collections.ConfigDict:
    """('data', 'fsdp', 'tensor') sizes; -1: the remaining devices; num_devices > 0: only the first N."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1))


def kernels(block_tail: str | None = "xla") -> ml_collections.ConfigDict:
    """How the models run (not what they compute):
    attention   None: XLA decides; 'cudnn': flash attention on GPU (`jax.nn.dot_product_attention`)
    mlp         'xla' | 'pallas': the frozen vision tower's fc1 + GELU as one Hopper kernel (bfloat16, inference
                only: the CTD teacher, the LMA encoder; models/fused_mlp.py)
    block_tail  'xla' | 'pallas': each student block's LayerNorm / temporal-convolution tail as one GPU kernel,
                forward and backward (models/block_tail.py); unset: the same as `mlp`
    A CPU refuses 'pallas' with the reason."""
    c = ml_collections.ConfigDict()
    c.attention = config_dict.placeholder(str)
    c.mlp = "xla"
    c.block_tail = block_tail if block_tail is not None else config_dict.placeholder(str)
    return c
