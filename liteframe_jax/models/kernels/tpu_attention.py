"""Pallas TPU splash attention for the LLM's causal grouped-query attention over right-padded rows (and, for
measurement, the vision towers' non-causal attention: `bench/tpu_attention.py`).

XLA's attention on TPU builds the whole (heads, T, T) score matrix per layer: at the LMA `paper` rows
(12,288 tokens, 28 heads) that is 28 x 12,288^2 scores per row and layer, and activations per chip do not
shrink with more FSDP. Splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) computes the
same softmax block by block, skips the blocks the causal mask removes, and keeps only (heads, T) statistics
for its backward pass. BENCHMARKS.md (TPU kernels) has what this saves at the paper's shape.

Masking keeps `qwen2.attention_mask`'s rule for training rows (positions increasing with the index over the
valid tokens, as right-padded rows with positions 0..T-1 have): a query sees the valid keys at or before it.
Valid keys are the segment id 1 of the key sequence and padding 0, while every query is in segment 1, so the
kernel's mask is causal AND key-valid, exactly XLA's; padded queries get the same outputs as under XLA.

Inside a sharded `jax.jit` the kernel, a Mosaic custom call that XLA's partitioner cannot split, runs under
`shard_map`: rows over the batch axes ('data', 'fsdp'), heads over 'tensor' where it divides both the query
and the key/value heads (contiguous head blocks keep each query head with its key/value head).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from liteframe_jax.core import sharding

NAME = "splash"
# The vision towers' non-causal attention through the same kernel (`kernels.tower_attention=splash`): its own
# name, so that the LLM's 'splash' leaves the towers on XLA's attention.
TOWER_NAME = "splash_tower"
# Rows shorter than this keep XLA's attention. Splash's backward recomputes the scores in two kernels (9
# block products against XLA's 6), which the skipped blocks above the diagonal repay only from 4 blocks of
# 512 a side: at 1,024 tokens it does 1.1x XLA's attention FLOPs and saves 0.15 of 0.77 GiB of temporaries
# per layer, at 4,096 0.84x and 1.26 against 3.77 GiB (v5p, BENCHMARKS.md, TPU kernels).
MIN_TOKENS = 2048
LANES = 128  # the kernel's key blocks are multiples of the TPU's 128 lanes; rows are padded to them
_interpret = False


@contextlib.contextmanager
def interpreted():
    """Run splash attention in Pallas interpret mode (any device; for tests on CPU against XLA's numbers)."""
    global _interpret
    before, _interpret = _interpret, True
    try:
        yield
    finally:
        _interpret = before


def device_problem(device=None) -> str | None:
    """Why `device` (default: the first of `jax.devices()`) cannot run splash attention, or None."""
    if _interpret:
        return None
    device = device or jax.devices()[0]
    if device.platform != "tpu":
        return f"runs on TPUs only (the device is {device.platform}: {device.device_kind})"
    return None


def _block(length: int) -> int:
    """The largest of 512 / 256 / 128 dividing `length` (a multiple of 128): larger blocks keep the MXU busy."""
    return next(b for b in (512, 256, LANES) if length % b == 0)


def _kernel(heads: int, length: int, causal: bool, window: int):
    shape = (length, length)
    if window:
        mask = splash.LocalMask(shape, (window - 1, 0), 0)
    else:
        mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
    b = _block(length)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=_interpret)


def _local(q, k, v, valid, *, scale: float, causal: bool, window: int):
    """One device's rows: q (b, T, H, D), k / v (b, T, KV, D), valid (b, T) bool -> (b, T, H, D)."""
    b, t, heads, _ = q.shape
    length = -(-t // LANES) * LANES
    pad = [(0, 0), (0, length - t), (0, 0), (0, 0)]
    # The kernel takes (heads, T, D) per row and applies no scale of its own.
    q, k, v = (jnp.pad(x, pad).transpose(0, 2, 1, 3) for x in (q * jnp.asarray(scale, q.dtype), k, v))
    kv_ids = jnp.pad(valid, [(0, 0), (0, length - t)]).astype(jnp.int32)  # padding: segment 0, seen by none
    ids = splash.SegmentIds(q=jnp.ones((b, length), jnp.int32), kv=kv_ids)
    y = jax.vmap(_kernel(heads, length, causal, window))(q, k, v, ids)
    return y.transpose(0, 2, 1, 3)[:, :t]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None, *, scale: float,
              causal: bool = True, window: int = 0, mesh=None) -> jax.Array:
    """GQA attention over valid keys: q (B, T, H, D), k / v (B, T, KV, D), valid (B, T) bool (None: all) ->
    (B, T, H, D). `causal`: each query sees the keys at or before it; `window` > 0 (causal): the last
    `window` of them only. `mesh`: the mesh a sharded jit runs on (None: one device)."""
    b, t, heads, _ = q.shape
    precision = str(jax.config.jax_default_matmul_precision or "default")
    if not _interpret and jnp.dtype(q.dtype).itemsize == 2 and precision not in ("default", "bfloat16", "fastest"):
        # The kernel's matmuls (its backward's too, traced later) take the global precision; Mosaic rejects a
        # float32 one on 16-bit operands, whose products are exact in float32 at the default precision anyway.
        raise ValueError(f"splash attention on {jnp.dtype(q.dtype).name} needs the default matmul precision, "
                         f"jax_default_matmul_precision is {precision!r}")
    valid = jnp.ones((b, t), bool) if valid is None else valid
    local = lambda q, k, v, valid: _local(q, k, v, valid, scale=scale, causal=causal, window=window)
    batch = sharding.batch_axes(mesh)
    tensor = mesh.shape.get("tensor", 1) if mesh is not None else 1
    split_heads = tensor > 1 and heads % tensor == 0 and k.shape[2] % tensor == 0
    if not batch and not split_heads:
        return local(q, k, v, valid)
    if b % sharding.batch_split(mesh):
        raise ValueError(f"splash attention: a batch of {b} does not split over the {sharding.batch_split(mesh)} "
                         f"devices of mesh axes {batch}")
    rows = batch or None
    spec = P(rows, None, "tensor" if split_heads else None, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P(rows, None)), out_specs=spec,
                         check_vma=False)(q, k, v, valid)
