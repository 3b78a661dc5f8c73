"""What the block-tail forward (`block_tail.py`) and backward (`block_tail_grad.py`) kernels share: how a row
held as column chunks is summed, how parameter vectors are loaded, and the column chunk for a width."""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp


def row_sum(v):
    """Sum over a row held as column chunks: chunks are added elementwise first, so each statistic needs one
    cross-thread reduction."""
    return jnp.sum(functools.reduce(jnp.add, v), axis=1, keepdims=True)


def vector_loader(refs: dict, chunks: list, hoist: bool):
    """name -> that (D,) parameter vector as float32 (1, chunk) pieces; with `hoist`, each is loaded once per
    program. `refs` maps a name to (ref, leading index): Triton lowering takes one indexer per load, so no
    `ref.at[j]` views."""
    load = lambda name: [refs[name][0][(*refs[name][1], cols)].astype(jnp.float32)[None, :] for cols in chunks]
    hoisted = {name: load(name) for name in refs} if hoist else {}
    return lambda name: hoisted[name] if hoist else load(name)


def column_chunk(width: int) -> int:
    """The largest power of 2 up to 256 that divides `width` (768 -> 256)."""
    return math.gcd(width, 256)
