"""A study: which implementation choices move a pre-norm ViT encoder's throughput (InternViT-300M shape by
default).

`python studies/vit_variants.py [--batch 64] [--profile]` times one forward pass of the plain-JAX encoder of
`liteframe_jax/bench/plain_vit.py` in bfloat16, cuDNN attention, for each combination that matters: q/k/v as
one GEMM or three, layer scale multiplied after the projection or folded into its weights (which lets XLA fuse
the residual add into the GEMM), exact GELU through XLA's erf or through `layers.gelu_exact`, or tanh GELU, and
blocks under `lax.scan` or unrolled. Every variant computes the same function up to rounding (tanh GELU
excepted). The figures decided what the models in `liteframe_jax.models` do; see docs/BENCHMARKS_HISTORY.md,
second pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's package
from liteframe_jax.bench.common import matmul_ceiling, timed  # noqa: E402
from liteframe_jax.bench.flops import vit_block  # noqa: E402
from liteframe_jax.bench.plain_vit import BF16, encoder, init_params  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python studies/vit_variants.py", description=__doc__)
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
