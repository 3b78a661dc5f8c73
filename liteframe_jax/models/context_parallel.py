"""Sequence (context) parallelism for the LLM: each row's tokens split over the mesh's 'context' axis.

At 2,048-4,096 frames (32-65k visual tokens) one row's activations and attention scores no longer fit one
chip, and more FSDP cannot help: it splits parameters, not a row. With `mesh.context` = c > 1
(core/sharding.py) the LLM's hidden states are split along the sequence into c contiguous blocks
(`split_sequence`). The per-token layers (projections, MLP, norms) need nothing more; attention
(`attention`) gathers the whole row's keys and values over 'context' (with grouped-query attention they are
num_heads / num_kv_heads times smaller than the queries) and runs the device's queries over them a key block
at a time with an online softmax, so a device holds a (T / c) x block score matrix per head, never T x T.
Each block's scores are recomputed in the backward pass rather than kept, and the all-gather's backward is
a reduce-scatter of the keys' and values' gradients.

Masking is `qwen2.attention_mask`'s rule, from positions (causal, valid keys, sliding window), so
right-padded rows stay exact; a query that sees no key averages every key, as XLA's attention does.
`take_positions` reads a few positions (the LMA loss's answer tokens) out of a split sequence, each device
looking only at its own block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from liteframe_jax.core import sharding
from liteframe_jax.core.sharding import CONTEXT

KEY_BLOCK = 1024  # keys per online-softmax step: the score block is (T / c) x KEY_BLOCK per head


def splits(mesh) -> bool:
    """Whether `mesh` splits rows along their tokens."""
    return sharding.context_size(mesh) > 1


def _rows(mesh):
    return sharding.batch_axes(mesh) or None


def split_sequence(x: jax.Array, mesh) -> jax.Array:
    """x (B, T, ...) laid out rows over the batch axes, tokens over 'context' (unchanged without the axis)."""
    if not splits(mesh):
        return x
    spec = P(_rows(mesh), CONTEXT, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _check(what: str, b: int, t: int, mesh) -> None:
    c, split = sharding.context_size(mesh), sharding.batch_split(mesh)
    if t % c:
        raise ValueError(f"{what}: rows of {t} tokens do not split over mesh.context={c}; make every length "
                         f"bucket (data.buckets) a multiple of {c}")
    if b % split:
        raise ValueError(f"{what}: a batch of {b} does not split over the {split} devices of mesh axes "
                         f"{sharding.batch_axes(mesh)}")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array, valid: jax.Array | None, *,
              scale: float, window: int, mesh, block: int = KEY_BLOCK) -> jax.Array:
    """Grouped-query attention over whole rows whose tokens `mesh` splits over 'context':
    q (B, T, H, D), k / v (B, T, KV, D), positions (B, T) int, valid (B, T) bool (None: all) -> (B, T, H, D).
    Rows stay over the batch axes, heads over 'tensor' where it divides both the query and key/value heads
    (contiguous head blocks keep each query head with its key/value head)."""
    b, t, heads, _ = q.shape
    _check("context-parallel attention", b, t, mesh)
    valid = jnp.ones((b, t), bool) if valid is None else valid
    tensor = mesh.shape.get("tensor", 1)
    split_heads = tensor > 1 and heads % tensor == 0 and k.shape[2] % tensor == 0
    x, tok = P(_rows(mesh), CONTEXT, "tensor" if split_heads else None, None), P(_rows(mesh), CONTEXT)
    local = functools.partial(_gathered, scale=scale, window=window, block=block)
    return jax.shard_map(local, mesh=mesh, in_specs=(x, x, x, tok, tok), out_specs=x)(q, k, v, positions, valid)


def _gathered(q, k, v, positions, valid, *, scale, window, block):
    """One device's block of queries against the whole row's keys, gathered over 'context' in token order."""
    k, v, k_pos, k_valid = (jax.lax.all_gather(a, CONTEXT, axis=1, tiled=True) for a in (k, v, positions, valid))
    return blockwise(q, k, v, positions, k_pos, k_valid, scale=scale, window=window, block=block)


def _key_block(length: int, block: int) -> int:
    """The largest divisor of `length` not above `block` (bucket lengths are round numbers)."""
    return max(d for d in range(1, min(length, block) + 1) if length % d == 0)


def blockwise(q, k, v, q_pos, k_pos, k_valid, *, scale: float, window: int, block: int = KEY_BLOCK):
    """Attention by key blocks with an online softmax: q (b, tq, H, D), k / v (b, S, KV, D), q_pos (b, tq),
    k_pos / k_valid (b, S) -> (b, tq, H, D). Scores and the softmax are float32, as in XLA's attention."""
    b, tq, heads, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    kb = _key_block(s, block)
    n = s // kb
    qg = q.reshape(b, tq, kv_heads, heads // kv_heads, d)
    blocks = lambda x: x.reshape(b, n, kb, *x.shape[2:]).swapaxes(0, 1)  # (n, b, kb, ...): the scan's steps
    # XLA's attention fills masked scores with this finite value (not -inf), so a query that sees no key
    # gets the mean of every value; the same here keeps such rows equal and the arithmetic free of inf - inf.
    neg = jnp.asarray(-0.7 * jnp.finfo(jnp.float32).max, jnp.float32)

    def step(carry, kv):
        o, m, l = carry  # unnormalised output (b, KV, G, tq, D), running max and sum (b, KV, G, tq)
        kj, vj, pos, ok = kv
        scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, kj, preferred_element_type=jnp.float32) * scale
        mask = (pos[:, None, :] <= q_pos[:, :, None]) & ok[:, None, :]  # qwen2.attention_mask's rule
        if window:
            mask &= (q_pos[:, :, None] - pos[:, None, :]) < window
        scores = jnp.where(mask[:, None, None], scores, neg)
        # the result does not depend on the shift m: no gradient through it
        m_new = jnp.maximum(m, jax.lax.stop_gradient(scores.max(-1)))
        p = jnp.exp(scores - m_new[..., None])
        fade = jnp.exp(m - m_new)
        o = o * fade[..., None] + jnp.einsum("bkgqs,bskd->bkgqd", p.astype(vj.dtype), vj,
                                             preferred_element_type=jnp.float32)
        return (o, m_new, l * fade + p.sum(-1)), None

    # zeros_like the queries: under shard_map the carry then varies over the same mesh axes as the step's output
    o = jnp.zeros_like(qg.transpose(0, 2, 3, 1, 4), jnp.float32)
    init = (o, o[..., 0] + neg, o[..., 0])
    # checkpointed: the backward pass recomputes each block's scores instead of keeping all of them
    (o, _, l), _ = jax.lax.scan(jax.checkpoint(step), init, tuple(map(blocks, (k, v, k_pos, k_valid))))
    y = o / l[..., None]
    return y.transpose(0, 3, 1, 2, 4).reshape(b, tq, heads, d).astype(q.dtype)


def take_positions(h: jax.Array, where: jax.Array, mesh) -> jax.Array:
    """h (B, T, D) at positions where (B, K) -> (B, K, D), as `jnp.take_along_axis`. With the tokens split over
    'context', each device reads the positions inside its own block and a sum over 'context' joins them, so
    no device gathers the whole sequence."""
    if not splits(mesh):
        return jnp.take_along_axis(h, where[..., None], axis=1)
    _check("answer positions", h.shape[0], h.shape[1], mesh)
    rows = _rows(mesh)

    def local(h, where):
        t = h.shape[1]
        at = where - jax.lax.axis_index(CONTEXT) * t
        inside = (at >= 0) & (at < t)
        got = jnp.take_along_axis(h, jnp.clip(at, 0, t - 1)[..., None], axis=1)
        return jax.lax.psum(jnp.where(inside[..., None], got, jnp.zeros_like(got)), CONTEXT)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(rows, CONTEXT, None), P(rows, None)),
                         out_specs=P(rows, None, None))(h, where)
