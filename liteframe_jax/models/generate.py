"""Batched generation with the Qwen2 KV cache: greedy or sampling, stop tokens, a max-new-tokens limit.

Prompts are left-padded (`valid` marks real tokens), so every sequence's next token is written at the same
cache slot; positions count real tokens only, so padding never shifts RoPE.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _pick(logits, rng, temperature: float, top_k: int):
    if temperature <= 0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "pad_id"))
def generate(graphdef, params, embeds, valid, stop_ids, rng, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, pad_id: int = 0):
    """embeds (B, P, D) left-padded prompt embeddings, valid (B, P) -> (tokens (B, max_new_tokens), lengths (B,)).

    `graphdef`/`params` describe a Qwen2 module. Tokens after a stop token are `pad_id`; the stop token itself
    is included in the output and counted in `lengths`. temperature 0 is greedy decoding.
    """
    llm = nnx.merge(graphdef, params)
    b, p = valid.shape
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    cache = llm.init_cache(b, p + max_new_tokens)
    h, cache = llm.hidden(embeds, positions, valid, cache, prefill=True)
    next_pos = positions[:, -1] + 1
    rng, sub = jax.random.split(rng)
    token = _pick(llm.logits(h[:, -1]), sub, temperature, top_k)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, stop_ids)
    lengths = jnp.ones((b,), jnp.int32)

    def cond(carry):
        i, _, _, _, done, *_ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, pos, cache, done, out, lengths, rng = carry
        h, cache = llm.hidden(llm.embed_tokens(token[:, None]), pos[:, None], jnp.ones((b, 1), bool), cache)
        rng, sub = jax.random.split(rng)
        new = _pick(llm.logits(h[:, 0]), sub, temperature, top_k)
        new = jnp.where(done, pad_id, new)
        out = out.at[:, i].set(new)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(new, stop_ids)
        return i + 1, new, pos + 1, cache, done, out, lengths, rng

    carry = (jnp.ones((), jnp.int32), token, next_pos, cache, done, out, lengths, rng)
    _, _, _, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, carry)
    return out, lengths
