"""Which implementation choices move a pre-norm ViT encoder's throughput (InternViT-300M shape by default).

`python -m liteframe_jax.bench.vit_variants [--batch 64] [--profile]` times one forward pass of a plain-JAX
encoder in bfloat16, cuDNN attention, for each combination that matters: q/k/v as one GEMM or three,
layer scale multiplied after the projection or folded into its weights (which lets XLA fuse the residual
add into the GEMM), exact GELU through XLA's erf or through `layers.gelu_exact`, or tanh GELU, and blocks under `lax.scan` or unrolled. Every variant
computes the same function up to rounding (tanh GELU excepted). The figures decide what the models in
`liteframe_jax.models` do; see docs/BENCHMARKS_HISTORY.md, second pass.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from liteframe_jax.bench.common import matmul_ceiling, timed
from liteframe_jax.bench.flops import vit_block
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m liteframe_jax.bench.vit_variants", description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1025)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--mlp", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--profile", action="store_true", help="kernel breakdown of the first and best variants")
    parser.add_argument("--quick", action="store_true", help="only the A&S-erf and tanh GELU variants under scan")
    args = parser.parse_args(argv)
    ceiling = matmul_ceiling(small=jax.default_backend() == "cpu")
    params = init_params(jax.random.key(0), args.layers, args.width, args.mlp)
    x = jax.random.normal(jax.random.key(1), (args.batch, args.tokens, args.width), BF16)
    flops = args.batch * args.layers * vit_block(args.tokens, args.width, args.mlp)
    rows = []
    variants = [dict(fused_qkv=False, fold_ls=False, gelu=g, scan=True) for g in ("erf (XLA)", "erf (A&S)", "tanh")]
    variants += [dict(fused_qkv=True, fold_ls=True, gelu="erf (A&S)", scan=True),
                 dict(fused_qkv=False, fold_ls=False, gelu="erf (A&S)", scan=False)]
    if args.quick:
        variants = [variants[1], {**variants[1], "ln_one_pass": True}]
    fns = {}
    for v in variants:
        fn = jax.jit(lambda p, x, v=v: encoder(p, x, heads=args.heads, **v))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        compile_s = time.perf_counter() - t0
        sec = timed(fn, params, x)
        row = {**v, "ms": sec * 1e3, "frames_per_s": args.batch / sec, "mfu": flops / sec / ceiling,
               "compile_s": compile_s}
        rows.append(row)
        fns[json.dumps(v)] = fn
        print(json.dumps(row), flush=True)
    print(f"\nceiling {ceiling / 1e12:.0f} TFLOP/s; batch {args.batch} x {args.tokens} tokens, width {args.width}")
    for r in rows:
        print(f"qkv={'fused' if r['fused_qkv'] else '3 GEMMs':7s} ls={'folded' if r['fold_ls'] else 'multiply':8s} "
              f"gelu={r['gelu']:9s} {'scan' if r['scan'] else 'unrolled':8s} "
              f"LN={'1-pass' if r.get('ln_one_pass') else '2-pass'} "
              f"{r['ms']:7.1f} ms {r['frames_per_s']:7.0f} frames/s MFU {r['mfu']:.1%} compile {r['compile_s']:.0f}s")
    if args.profile:
        from liteframe_jax.bench.profile import format_breakdown, kernel_breakdown
        best = min(rows, key=lambda r: r["ms"])
        for title, r in (("baseline", rows[0]), ("best", best)):
            key = json.dumps({k: r[k] for k in ("fused_qkv", "fold_ls", "gelu", "scan", "ln_one_pass") if k in r})
            print(format_breakdown(f"{title} {key}", kernel_breakdown(fns[key], params, x)))


if __name__ == "__main__":
    main()
