"""The plain-JAX probe that the latency targets are stated against, timed beside our models on one device.

The latency benchmark's per-stage floor is stated as figures of "a plain-JAX probe on one H100 (bfloat16,
cuDNN attention, scanned layers)": Qwen2.5-7B-shaped prefill at 8,192 and 16,384 tokens, an
InternViT-300M-shaped encoder at 448 px. Those figures came from another machine, and H100s differ by
clock and power cap by 10% or more, so `python -m liteframe_jax.bench probe` writes such a probe here and times it in the same process as
our Qwen2 and InternViT on the same inputs, stage by stage.

The probe is what a careful user writes in an afternoon: bfloat16 weights stacked per layer under
`lax.scan`, `jax.nn.dot_product_attention(implementation="cudnn")`, float32 norms, separate q/k/v GEMMs. The
encoder runs with `jax.nn.gelu`'s exact form (InternViT's function) and with its default tanh form (a
different function, cheaper on the GPU), so both readings of "plain JAX" are on the table.
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.bench import plain_vit
from liteframe_jax.models.internvit import InternVisionTower, InternVitConfig
from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config, rope

BF16 = jnp.bfloat16


# ---- InternViT-300M-shaped encoder ----

def init_vit(key, cfg: InternVitConfig) -> dict:
    k_blocks, k_patch, k_cls, k_pos = jax.random.split(key, 4)
    d, p, n = cfg.hidden_size, cfg.patch_size, cfg.grid ** 2 + 1
    normal = lambda k, shape: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(BF16)
    return {"blocks": plain_vit.init_params(k_blocks, cfg.num_layers, d, cfg.intermediate_size),
            "patch": normal(k_patch, (p * p * cfg.num_channels, d)), "patch_bias": jnp.zeros((d,), BF16),
            "cls": normal(k_cls, (1, 1, d)), "pos": normal(k_pos, (1, n, d))}


def vit_forward(params, pixels, cfg: InternVitConfig, gelu: str, attn_impl: str | None = "cudnn"):
    """pixels (B, H, W, C) bfloat16 -> (B, 1 + grid**2, width); `gelu` is "erf (XLA)" or "tanh"; `attn_impl`
    as `jax.nn.dot_product_attention` takes it (a CPU always runs XLA's)."""
    b, p, g, c = pixels.shape[0], cfg.patch_size, cfg.grid, cfg.num_channels
    patches = pixels.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)
    x = patches @ params["patch"] + params["patch_bias"]
    x = jnp.concatenate([jnp.broadcast_to(params["cls"], (b, 1, x.shape[-1])), x], 1) + params["pos"]
    return plain_vit.encoder(params["blocks"], x, scan=True, heads=cfg.num_heads, fused_qkv=False,
                                fold_ls=False, gelu=gelu, attn_impl=attn_impl)


# ---- Qwen2.5-7B-shaped prefill ----

def init_llm(key, cfg: Qwen2Config) -> dict:
    L, d, f, hd = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.dim_per_head
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    keys = iter(jax.random.split(key, 10))
    normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape, BF16)
    return {"embed": normal((cfg.vocab_size, d)), "norm": jnp.ones((d,), BF16),
            "lm_head": normal((d, cfg.vocab_size)),
            "layers": {"ln1": jnp.ones((L, d), BF16), "ln2": jnp.ones((L, d), BF16),
                       "wq": normal((L, d, q)), "bq": jnp.zeros((L, q), BF16),
                       "wk": normal((L, d, kv)), "bk": jnp.zeros((L, kv), BF16),
                       "wv": normal((L, d, kv)), "bv": jnp.zeros((L, kv), BF16), "wo": normal((L, q, d)),
                       "wg": normal((L, d, f)), "wu": normal((L, d, f)), "wd": normal((L, f, d))}}


def _rms_norm(x, w, eps):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps) * w).astype(x.dtype)


def llm_last_logits(params, tokens, cfg: Qwen2Config, attn_impl: str | None = "cudnn"):
    """tokens (1, T) int -> float32 logits of the token after them (1, vocab)."""
    b, t = tokens.shape
    hd = cfg.dim_per_head
    positions = jnp.arange(t)[None]
    heads = lambda y, n: rope(y.reshape(b, t, n, hd), positions, cfg.rope_theta)

    def layer(x, p):
        h = _rms_norm(x, p["ln1"], cfg.rms_norm_eps)
        q, k = heads(h @ p["wq"] + p["bq"], cfg.num_heads), heads(h @ p["wk"] + p["bk"], cfg.num_kv_heads)
        v = (h @ p["wv"] + p["bv"]).reshape(b, t, cfg.num_kv_heads, hd)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                         implementation=None if jax.default_backend() == "cpu" else attn_impl)
        x = x + y.reshape(b, t, -1) @ p["wo"]
        h = _rms_norm(x, p["ln2"], cfg.rms_norm_eps)
        return x + (jax.nn.silu(h @ p["wg"]) * (h @ p["wu"])) @ p["wd"], None

    x = jax.lax.scan(layer, params["embed"][tokens], params["layers"])[0]
    last = _rms_norm(x[:, -1], params["norm"], cfg.rms_norm_eps)
    return (last @ params["lm_head"]).astype(jnp.float32)


def llm_prefill(params, tokens, cfg: Qwen2Config, attn_impl: str | None = "cudnn"):
    """tokens (1, T) int -> the greedy first token after them (1,)."""
    return jnp.argmax(llm_last_logits(params, tokens, cfg, attn_impl), -1)


# ---- ours, the same stage on the same inputs ----

def our_prefill_fn(graph):
    @jax.jit
    def prefill(p, tokens):
        m = nnx.merge(graph, p)
        h, _ = m.hidden(m.embed_tokens(tokens), jnp.arange(tokens.shape[1])[None], None)
        return jnp.argmax(m.logits(h[:, -1]), -1)
    return prefill


def _alternating(candidates, args, rounds, iters, timed):
    """Median seconds per call of each candidate, timed in turn for `rounds` rounds: a power-capped GPU's
    clock drifts over minutes, and timing one after the other would hand that drift to whichever runs last."""
    times = {name: [] for name, _, _ in candidates}
    for _ in range(rounds):
        for name, fn, params in candidates:
            times[name].append(timed(fn, params, *args, iters=iters))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_probe(small, impl, mlp_kernels, rounds=3, profile=False):
    """Yields one row per (stage, size, implementation); ours carry `vs_probe`, their time over the probe's
    for the same function (the exact-GELU probe for the encoder). `profile`: a kernel breakdown of each."""
    from liteframe_jax.bench.common import paper_models, qwen25_7b_config, timed
    from liteframe_jax.bench.profile import format_breakdown, kernel_breakdown
    vit = paper_models(small)[0]
    llm_cfg = qwen25_7b_config(small)
    frames, token_counts = (2, (64,)) if small else (64, (8_192, 16_384))
    cast = lambda tree: jax.tree.map(lambda x: x.astype(BF16), tree)

    def rows(stage, size_key, size, candidates, args, iters):
        secs = _alternating(candidates, args, rounds, iters, timed)
        probe_s = secs[candidates[0][0]]  # the first candidate is the probe of the same function
        for name, fn, params in candidates:
            r = {"bench": "probe", "stage": stage, "model": name, size_key: size, "ms": secs[name] * 1e3}
            if size_key == "frames":
                r["frames_per_s"] = size / secs[name]
            if not name.startswith("plain-JAX"):
                r["vs_probe"] = secs[name] / probe_s
            if profile:
                r["kernels"] = kernel_breakdown(fn, params, *args)
                print(format_breakdown(f"{stage}, {name}, {size} {size_key}", r["kernels"]), flush=True)
            yield r

    pixels = jax.random.normal(jax.random.key(0), (frames, vit.image_size, vit.image_size, 3), BF16)
    vit_params = init_vit(jax.random.key(1), vit)
    candidates = [(f"plain-JAX probe, GELU {gelu}", jax.jit(lambda p, x, g=gelu: vit_forward(p, x, vit, g, impl)),
                   vit_params) for gelu in ("erf (XLA)", "tanh")]
    for kernel in mlp_kernels:
        graph, params = nnx.split(InternVisionTower(vit, None, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl,
                                                    mlp_kernel=kernel))
        candidates.append((f"ours, InternViT mlp_kernel={kernel}",
                           jax.jit(lambda p, x, g=graph: nnx.merge(g, p)(x)), cast(params)))
    yield from rows("InternViT-300M-shaped encoder", "frames", frames, candidates, (pixels,), iters=10)
    del candidates, vit_params, params

    graph, params = nnx.split(Qwen2(llm_cfg, rngs=nnx.Rngs(3), dtype=BF16, attn_impl=impl))
    ours = cast(params)  # created in float32: cast before the probe's weights take their room
    del params
    candidates = [("plain-JAX probe", jax.jit(lambda p, t: llm_prefill(p, t, llm_cfg, impl)),
                   init_llm(jax.random.key(2), llm_cfg)),
                  ("ours, Qwen2", our_prefill_fn(graph), ours)]
    for n in token_counts:
        tokens = jax.random.randint(jax.random.key(5), (1, n), 0, llm_cfg.vocab_size)
        yield from rows("Qwen2.5-7B-shaped prefill", "tokens", n, candidates, (tokens,), iters=5)
