"""The Qwen2 / Qwen2.5 decoder in Flax NNX: grouped-query attention with q/k/v biases, RoPE, RMSNorm,
SwiGLU, tied or untied embeddings, per-layer sliding-window attention, and a KV cache for generation.

Masks are built from token positions, so left-padded batches, packed prompts and the KV cache all use one
rule: a query at position p sees valid keys at positions <= p (and > p - window on sliding layers).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.models import context_parallel, layers
from liteframe_jax.models.kernels import tpu_attention


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = 151_936
    hidden_size: int = 3584
    intermediate_size: int = 18_944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32_768
    hidden_act: str = "silu"
    sliding_window: int = 0  # 0: no sliding window anywhere
    sliding_layers: tuple[bool, ...] = ()  # per layer: use the sliding window
    initializer_range: float = 0.02

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **changes) -> "Qwen2Config":
        """A named size (QWEN2_PRESETS), with `changes` on top."""
        if name not in QWEN2_PRESETS:
            raise ValueError(f"unknown Qwen2 preset {name!r}; known: {sorted(QWEN2_PRESETS)}")
        return dataclasses.replace(QWEN2_PRESETS[name], **changes)


QWEN2_PRESETS = {
    # the benches' `--small` LLM: two layers of width 64, a CPU's seconds
    "tiny": Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2),
    "demo": Qwen2Config(vocab_size=261, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                        num_kv_heads=2, rope_theta=10_000.0, tie_word_embeddings=True),
    "qwen2.5-1.5b": Qwen2Config(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                                num_heads=12, num_kv_heads=2, tie_word_embeddings=True),
    # the LLM of InternVL3-8B and of the paper's LiteFrame model
    "qwen2.5-7b": Qwen2Config(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_layers=28,
                              num_heads=28, num_kv_heads=4),
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the LLM's Dense layers whose names match `targets` (e.g. 'q|k|v|o')."""
    rank: int = 0
    alpha: float = 16.0
    targets: str = "q|k|v|o|gate|up|down"


class LoraDense(nnx.Module):
    """Dense plus an optional low-rank update x @ A @ B * alpha / rank (B starts at zero)."""

    def __init__(self, in_features, out_features, *, axes, rngs, use_bias, dtype, init, lora: LoraConfig | None):
        self.dense = layers.Dense(in_features, out_features, axes=axes, rngs=rngs, use_bias=use_bias, dtype=dtype,
                                  kernel_init=init)
        on = lora is not None and lora.rank > 0
        self.lora_a = (layers.param(rngs, nnx.initializers.normal(1 / lora.rank), (in_features, lora.rank),
                                    (axes[0], None)) if on else None)
        self.lora_b = layers.param(rngs, nnx.initializers.zeros, (lora.rank, out_features), (None, axes[1])) if on else None
        self.lora_scale = lora.alpha / lora.rank if on else 0.0

    def __call__(self, x):
        y = self.dense(x)
        if self.lora_a is not None:
            dt = self.dense.dtype
            y = y + (x.astype(dt) @ self.lora_a[...].astype(dt)) @ self.lora_b[...].astype(dt) * self.lora_scale
        return y


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, HF 'rotate_half' layout. x: (B, T, heads, head_dim); positions: (B, T)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, d/2)
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., d // 2:], x32[..., :d // 2]], -1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention_mask(q_pos, k_pos, k_valid, window: int) -> jax.Array:
    """(B, 1, T, S) boolean: causal by position, valid keys only, optional sliding window."""
    q, k = q_pos[:, :, None], k_pos[:, None, :]
    mask = (k <= q) & k_valid[:, None, :]
    if window:
        mask &= (q - k) < window
    return mask[:, None]


def prefill_attention(q, k, v, valid, *, scale: float, window: int = 0, implementation: str | None = None):
    """Causal attention of left-padded prompts over themselves: q (B, T, H, D), k / v (B, T, KV, D), valid
    (B, T) with each row's valid tokens at its end. Each row is rotated so its valid tokens come first (the
    right-padded form with lengths that cuDNN's kernel takes), attended, and rotated back; padded queries
    come out as whatever the kernel gives them (nothing reads them)."""
    t = q.shape[1]
    n = (jnp.ones(q.shape[:2], bool) if valid is None else valid).sum(-1).astype(jnp.int32)
    shift = (t - n)[:, None]
    rotate = lambda x, idx: jnp.take_along_axis(x, idx[:, :, None, None], axis=1)
    ahead = (jnp.arange(t)[None] + shift) % t  # valid tokens to the front
    y = jax.nn.dot_product_attention(rotate(q, ahead), rotate(k, ahead), rotate(v, ahead), scale=scale,
                                     is_causal=True, query_seq_lengths=n, key_value_seq_lengths=n,
                                     local_window_size=(window - 1, 0) if window else None,
                                     implementation=implementation)
    return rotate(y, (jnp.arange(t)[None] - shift) % t)


# Queries per block of a prefill that writes the KV cache (answering's prompts): scores of at most this many
# queries against the whole cache exist at once.
PREFILL_QUERY_BLOCK = 2048


class Attention(nnx.Module):
    """`attn_impl`: None (XLA's), 'cudnn' (GPU flash attention) or 'splash' (TPU,
    `models/kernels/tpu_attention.py`) for training rows; decoding with a cache always runs XLA's. `mesh`: where a
    sharded jit splits a kernel's rows."""

    def __init__(self, cfg: Qwen2Config, *, rngs, dtype, lora, attn_impl, mesh=None):
        if attn_impl == tpu_attention.NAME:
            problem = tpu_attention.device_problem(None if mesh is None else mesh.devices.flat[0])
            if problem:
                raise ValueError(f"attention kernel 'splash' {problem}; use 'xla' (None)")
        d, hd = cfg.hidden_size, cfg.dim_per_head
        init = nnx.initializers.normal(cfg.initializer_range)
        pick = lambda name: lora if lora is not None and _targets(lora, name) else None
        self.q = LoraDense(d, cfg.num_heads * hd, axes=("embed", "heads"), rngs=rngs, use_bias=True, dtype=dtype,
                           init=init, lora=pick("q"))
        self.k = LoraDense(d, cfg.num_kv_heads * hd, axes=("embed", "kv_heads"), rngs=rngs, use_bias=True,
                           dtype=dtype, init=init, lora=pick("k"))
        self.v = LoraDense(d, cfg.num_kv_heads * hd, axes=("embed", "kv_heads"), rngs=rngs, use_bias=True,
                           dtype=dtype, init=init, lora=pick("v"))
        self.o = LoraDense(cfg.num_heads * hd, d, axes=("heads", "embed"), rngs=rngs, use_bias=False, dtype=dtype,
                           init=init, lora=pick("o"))
        self.cfg, self.attn_impl, self.mesh = cfg, attn_impl, mesh

    def __call__(self, x, positions, valid, window, cache=None, prefill=False):
        """`prefill`: this chunk is the whole prompt, written into an empty cache (generation's first call)."""
        cfg = self.cfg
        b, t, _ = x.shape
        hd = cfg.dim_per_head
        q = rope(self.q(x).reshape(b, t, cfg.num_heads, hd), positions, cfg.rope_theta)
        k = rope(self.k(x).reshape(b, t, cfg.num_kv_heads, hd), positions, cfg.rope_theta)
        v = self.v(x).reshape(b, t, cfg.num_kv_heads, hd)
        if cache is None:
            k_all, v_all, k_pos, k_valid = k, v, positions, valid
        else:  # write this chunk at cache['index'], attend over the whole cache
            idx = cache["index"]
            k_all = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), idx, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), idx, axis=1)
            k_pos, k_valid = cache["positions"], cache["valid"]
            cache = {**cache, "k": k_all, "v": v_all}
        if cache is None and context_parallel.splits(self.mesh):
            # Training rows whose tokens the mesh splits over 'context': every query sees the whole row.
            y = context_parallel.attention(q, k, v, positions, valid, scale=hd ** -0.5, window=window, mesh=self.mesh)
        elif cache is None and self.attn_impl == tpu_attention.NAME and t >= tpu_attention.MIN_TOKENS:
            # Training rows, as for cuDNN below: causal by index over the valid keys is the position mask.
            y = tpu_attention.attention(q, k, v, valid, scale=hd ** -0.5, window=window, mesh=self.mesh)
        elif prefill and self.attn_impl == "cudnn" and t > 1:
            # The prompt attends to itself only: cuDNN's fused kernel, as in training, on rows turned to the
            # right-padded form it takes.
            y = prefill_attention(q, k, v, valid, scale=hd ** -0.5, window=window, implementation="cudnn")
        elif cache is None and self.attn_impl == "cudnn":
            # Training batches are right-padded with positions 0..T-1: causal attention over each row's valid
            # prefix is exactly the position mask, in the form cuDNN's fused kernel takes. valid=None (every
            # token real, as in a single-request prefill) needs no lengths.
            lengths = None if valid is None else valid.sum(-1).astype(jnp.int32)
            y = jax.nn.dot_product_attention(
                q, k, v, scale=hd ** -0.5, is_causal=True, key_value_seq_lengths=lengths,
                local_window_size=(window - 1, 0) if window else None, implementation="cudnn")
        else:
            k_valid = jnp.ones(k_pos.shape, bool) if k_valid is None else k_valid
            xla = cache is not None or self.attn_impl == tpu_attention.NAME  # splash: a row under MIN_TOKENS
            k_all, v_all = k_all.astype(q.dtype), v_all.astype(q.dtype)
            # A long prefill into the cache takes its queries a block at a time: XLA's attention holds the
            # (heads, queries, keys) scores in float32, for a whole 17k-token prompt 28 x 17k^2 of them.
            step = PREFILL_QUERY_BLOCK if cache is not None else t
            y = jnp.concatenate([
                jax.nn.dot_product_attention(
                    q[:, i:i + step], k_all, v_all, mask=attention_mask(positions[:, i:i + step], k_pos, k_valid,
                                                                        window),
                    scale=hd ** -0.5, implementation=None if xla else self.attn_impl)
                for i in range(0, t, step)], axis=1)
        return self.o(y.reshape(b, t, -1)), cache


def _targets(lora: LoraConfig, name: str) -> bool:
    return re.fullmatch(lora.targets, name) is not None


class Mlp(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs, dtype, lora):
        d, m = cfg.hidden_size, cfg.intermediate_size
        init = nnx.initializers.normal(cfg.initializer_range)
        pick = lambda name: lora if lora is not None and _targets(lora, name) else None
        self.gate = LoraDense(d, m, axes=("embed", "mlp"), rngs=rngs, use_bias=False, dtype=dtype, init=init,
                              lora=pick("gate"))
        self.up = LoraDense(d, m, axes=("embed", "mlp"), rngs=rngs, use_bias=False, dtype=dtype, init=init,
                            lora=pick("up"))
        self.down = LoraDense(m, d, axes=("mlp", "embed"), rngs=rngs, use_bias=False, dtype=dtype, init=init,
                              lora=pick("down"))
        self.act = cfg.hidden_act

    def __call__(self, x):
        return self.down(layers.activation(self.act)(self.gate(x)) * self.up(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs, dtype, lora, attn_impl, mesh=None):
        self.input_norm = layers.RMSNorm(cfg.hidden_size, rngs=rngs, eps=cfg.rms_norm_eps)
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, lora=lora, attn_impl=attn_impl, mesh=mesh)
        self.post_norm = layers.RMSNorm(cfg.hidden_size, rngs=rngs, eps=cfg.rms_norm_eps)
        self.mlp = Mlp(cfg, rngs=rngs, dtype=dtype, lora=lora)

    def __call__(self, x, positions, valid, window, cache=None, prefill=False):
        y, cache = self.attn(self.input_norm(x), positions, valid, window, cache, prefill)
        x = x + y
        return x + self.mlp(self.post_norm(x)), cache


class Qwen2(nnx.Module):
    """Qwen2ForCausalLM. `hidden(...)` gives final normed hidden states, `logits(h)` the vocabulary scores.
    `attn_impl` and `mesh`: see `Attention`."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, lora: LoraConfig | None = None,
                 attn_impl: str | None = None, remat: str = "none", scan_layers: bool = False, mesh=None):
        self.cfg, self.dtype = cfg, dtype
        self.remat = layers.check_remat(remat)  # training only: decoding with a cache never rematerialises
        if scan_layers and self.remat == "none":
            raise ValueError("scan_layers needs a remat policy (remat='full' or 'dots'): it is how a rematerialised "
                             "stack of layers keeps only one hidden state per layer")
        self.scan_layers = scan_layers
        init = nnx.initializers.normal(cfg.initializer_range)
        self.embed = layers.param(rngs, init, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        self.num_layers = cfg.num_layers
        for i in range(cfg.num_layers):
            layer = DecoderLayer(cfg, rngs=rngs, dtype=dtype, lora=lora, attn_impl=attn_impl, mesh=mesh)
            setattr(self, f"layer_{i}", layer)
        self.final_norm = layers.RMSNorm(cfg.hidden_size, rngs=rngs, eps=cfg.rms_norm_eps)
        self.lm_head = (None if cfg.tie_word_embeddings else
                        layers.param(rngs, init, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab")))

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)

    def window(self, i: int) -> int:
        sliding = self.cfg.sliding_layers[i] if self.cfg.sliding_layers else False
        return self.cfg.sliding_window if sliding else 0

    def _rematerialised(self, window: int):
        def run(layer, x, positions, valid):
            return layer(x, positions, valid, window, None)[0]
        return nnx.remat(run, policy=layers.REMAT_POLICIES[self.remat])

    def _scanned(self, x, positions, valid, first: int, stop: int):
        """Layers first..stop-1 (one attention window) as a loop XLA cannot unroll: a `lax.scan` over the layer
        index whose body picks the layer with `lax.switch`, rematerialised. Unrolled, XLA's scheduler may move
        recomputations and copies of hidden states across layers, keeping several per layer alive at the
        backward pass's peak; inside a loop only the carried hidden state crosses from one layer to the next.
        The weights stay where they are (no stacked copy); the cost is that a layer's weights cannot be fetched
        while the previous layer computes."""
        window = self.window(first)
        graphdefs, states = zip(*(nnx.split(getattr(self, f"layer_{i}")) for i in range(first, stop)))

        def branch(j):  # the layers are rebuilt inside the branch, from the states it is handed
            return lambda h, states: nnx.merge(graphdefs[j], states[j])(h, positions, valid, window, None)[0]

        branches = [branch(j) for j in range(stop - first)]
        body = jax.checkpoint(lambda h, i, states: jax.lax.switch(i, branches, h, states),
                              policy=layers.REMAT_POLICIES[self.remat], prevent_cse=False)
        return jax.lax.scan(lambda h, i: (body(h, i, states), None), x, jnp.arange(stop - first))[0]

    def _window_runs(self) -> list[tuple[int, int]]:
        """[first, stop) ranges of consecutive layers sharing one attention window."""
        runs, first = [], 0
        for i in range(1, self.num_layers + 1):
            if i == self.num_layers or self.window(i) != self.window(first):
                runs.append((first, i))
                first = i
        return runs

    def hidden(self, embeds: jax.Array, positions: jax.Array, valid: jax.Array, cache: dict | None = None,
               prefill: bool = False):
        """embeds (B, T, D), positions (B, T) int, valid (B, T) bool or None (all valid) -> (hidden (B, T, D),
        updated cache). `prefill`: `cache` is empty and these are whole left-padded prompts (positions counting
        the valid tokens from 0), so attention needs no cache: a GPU runs cuDNN's kernel on it."""
        x = embeds.astype(self.dtype)
        if cache is not None:
            valid = jnp.ones(positions.shape, bool) if valid is None else valid
            idx = cache["index"]
            cache = {**cache,
                     "positions": jax.lax.dynamic_update_slice_in_dim(cache["positions"], positions, idx, axis=1),
                     "valid": jax.lax.dynamic_update_slice_in_dim(cache["valid"], valid, idx, axis=1)}
        if cache is None and self.scan_layers:
            for first, stop in self._window_runs():
                x = self._scanned(x, positions, valid, first, stop)
            return self.final_norm(x), None
        new_layers = []
        for i in range(self.num_layers):
            layer_cache = None if cache is None else {**cache["layers"][i], "index": cache["index"],
                                                      "positions": cache["positions"], "valid": cache["valid"]}
            layer, window = getattr(self, f"layer_{i}"), self.window(i)
            if cache is None and self.remat != "none":
                x = self._rematerialised(window)(layer, x, positions, valid)
            else:
                x, layer_cache = layer(x, positions, valid, window, layer_cache, prefill and cache is not None)
            if cache is not None:
                new_layers.append({"k": layer_cache["k"], "v": layer_cache["v"]})
        if cache is not None:
            cache = {**cache, "layers": new_layers, "index": cache["index"] + embeds.shape[1]}
        return self.final_norm(x), cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return jnp.dot(hidden.astype(self.dtype), w.astype(self.dtype)).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, valid: jax.Array | None = None):
        """Logits for a batch of token ids (no cache); defaults: positions 0..T-1, all valid."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
        valid = jnp.ones((b, t), bool) if valid is None else valid
        h, _ = self.hidden(self.embed_tokens(tokens), positions, valid)
        return self.logits(h)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        cfg = self.cfg
        shape = (batch, length, cfg.num_kv_heads, cfg.dim_per_head)
        dtype = dtype or self.dtype
        return {"index": jnp.zeros((), jnp.int32), "positions": jnp.zeros((batch, length), jnp.int32),
                "valid": jnp.zeros((batch, length), bool),
                "layers": [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)]}
