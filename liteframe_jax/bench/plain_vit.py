"""A pre-norm ViT encoder in plain JAX (InternViT's block: LayerNorm, attention, layer scale, MLP), weights
stacked per layer: the encoder of `bench probe`'s plain-JAX probe, with the implementation choices that
studies/vit_variants.py times as switches (q/k/v as one GEMM or three, layer scale folded into the weights,
the GELU's form, one-pass LayerNorm, `lax.scan` or unrolled). Every setting computes the same function up to
rounding, tanh GELU excepted."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from liteframe_jax.models.layers import gelu_exact

BF16 = jnp.bfloat16


def init_params(key, layers, d, mlp):
    ks = jax.random.split(key, 6)
    n = lambda k, shape, s=0.02: (s * jax.random.normal(k, (layers, *shape), jnp.float32)).astype(BF16)
    return {
        "ln1": jnp.ones((layers, 2, d), BF16), "ln2": jnp.ones((layers, 2, d), BF16),
        "wq": n(ks[0], (d, d)), "wk": n(ks[1], (d, d)), "wv": n(ks[2], (d, d)), "bqkv": jnp.zeros((layers, 3, d), BF16),
        "wo": n(ks[3], (d, d)), "bo": jnp.zeros((layers, d), BF16),
        "w1": n(ks[4], (d, mlp)), "b1": jnp.zeros((layers, mlp), BF16),
        "w2": n(ks[5], (mlp, d)), "b2": jnp.zeros((layers, d), BF16),
        "ls1": jnp.full((layers, d), 0.1, BF16), "ls2": jnp.full((layers, d), 0.1, BF16),
    }


def layer_norm(x, p, one_pass=False):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    if one_pass:  # E[x^2] - E[x]^2: both sums in one read of x
        var = jnp.maximum(jnp.square(x32).mean(-1, keepdims=True) - jnp.square(mean), 0.0)
    else:
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + 1e-6) * p[0] + p[1]).astype(x.dtype)


def block(x, p, *, heads, fused_qkv, fold_ls, gelu, ln_one_pass=False, attn_impl="cudnn"):
    b, n, d = x.shape
    h = layer_norm(x, p["ln1"], ln_one_pass)
    if fused_qkv:
        w = jnp.concatenate([p["wq"], p["wk"], p["wv"]], axis=1)
        qkv = h @ w + p["bqkv"].reshape(-1)
        q, k, v = jnp.split(qkv, 3, axis=-1)
    else:
        q, k, v = (h @ p[w] + p["bqkv"][i] for i, w in enumerate(("wq", "wk", "wv")))
    split = lambda t: t.reshape(b, n, heads, d // heads)
    impl = None if jax.default_backend() == "cpu" else attn_impl
    y = jax.nn.dot_product_attention(split(q), split(k), split(v), implementation=impl).reshape(b, n, d)
    if fold_ls:
        x = x + (y @ (p["wo"] * p["ls1"]) + p["bo"] * p["ls1"])
    else:
        x = x + p["ls1"] * (y @ p["wo"] + p["bo"])
    act = {"erf (XLA)": lambda h: jax.nn.gelu(h, approximate=False), "erf (A&S)": gelu_exact,
           "tanh": lambda h: jax.nn.gelu(h, approximate=True)}[gelu]
    h = act(layer_norm(x, p["ln2"], ln_one_pass) @ p["w1"] + p["b1"])
    if fold_ls:
        return x + (h @ (p["w2"] * p["ls2"]) + p["b2"] * p["ls2"])
    return x + p["ls2"] * (h @ p["w2"] + p["b2"])


def encoder(params, x, *, scan, **kw):
    if scan:
        return jax.lax.scan(lambda x, p: (block(x, p, **kw), None), x, params)[0]
    layers = jax.tree.leaves(params)[0].shape[0]
    for i in range(layers):
        x = block(x, jax.tree.map(lambda a: a[i], params), **kw)
    return x
