"""`python -m liteframe_jax.bench tpu_attention`: where splash attention pays on TPU, from the compiled program.

Compiles Qwen2 decoder layers (the `qwen2.5-7b` shape by default) forward and backward for a Cloud TPU
topology on this host (through libtpu, no TPU needed), once with XLA's attention and once with splash
attention (`models/kernels/tpu_attention.py`), and prints per chip what the compiler reports: temporaries,
arguments and outputs (`memory_analysis()`), FLOPs and bytes accessed (`cost_analysis()`). XLA's cost
analysis does not see inside the Mosaic custom call, so the attention FLOPs each path does are printed
beside it from the shapes: XLA computes every score, splash skips the blocks above the causal diagonal.

    python -m liteframe_jax.bench tpu_attention --topology v5p:2x2x2 --tokens 12288 --layers 1
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from liteframe_jax.core import sharding
from liteframe_jax.core.defaults import SHARDING_RULES
from liteframe_jax.models.kernels import tpu_attention
from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config

GIB = 2 ** 30


def topology_mesh(topology: str, sizes: tuple[int, int, int]) -> Mesh:
    from jax.experimental import topologies
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    return Mesh(np.asarray(devices).reshape(sizes), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def compile_layers(cfg: Qwen2Config, impl: str | None, mesh: Mesh, batch: int, tokens: int, remat: str = "none"):
    """The compiled forward + backward of `cfg`'s decoder layers on (batch, tokens) right-padded rows."""
    abstract = nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, attn_impl=impl,
                                            remat=remat, mesh=mesh))
    graphdef, state = nnx.split(abstract)
    params = sharding.param_shardings(state, SHARDING_RULES, mesh)
    rows = sharding.batch_sharding(mesh, 2)

    def step(params, embeds, valid):
        def loss(params):
            model = nnx.merge(graphdef, params)
            positions = jnp.broadcast_to(jnp.arange(tokens), (batch, tokens))
            h, _ = model.hidden(embeds, positions, valid)
            return jnp.mean(jnp.square(h.astype(jnp.float32)))
        return jax.value_and_grad(loss)(params)

    shaped = lambda s, shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=s)
    args = (jax.tree.map(lambda v, s: shaped(s, v.shape, v.dtype), nnx.to_pure_dict(state), params),
            shaped(sharding.batch_sharding(mesh, 3), (batch, tokens, cfg.hidden_size), jnp.bfloat16),
            shaped(rows, (batch, tokens), jnp.bool_))
    out = (NamedSharding(mesh, P()), params)
    return jax.jit(step, out_shardings=out).lower(*args).compile()


def compile_vision_attention(impl: str | None, mesh: Mesh, frames: int, tokens: int, heads: int, head_dim: int,
                             train: bool):
    """The compiled attention of one vision-tower layer (non-causal, within each frame) on `frames` frames,
    with its backward when `train` (a student) or forward only (a frozen teacher)."""
    def attend(q, k, v):
        if impl is None:
            return jax.nn.dot_product_attention(q, k, v, scale=head_dim ** -0.5)
        return tpu_attention.attention(q, k, v, None, scale=head_dim ** -0.5, causal=False, mesh=mesh)

    def step(q, k, v):
        value = lambda q, k, v: jnp.mean(jnp.square(attend(q, k, v).astype(jnp.float32)))
        return jax.value_and_grad(value, argnums=(0, 1, 2))(q, k, v) if train else attend(q, k, v)

    x = jax.ShapeDtypeStruct((frames, tokens, heads, head_dim), jnp.bfloat16,
                             sharding=sharding.batch_sharding(mesh, 4))
    return jax.jit(step).lower(x, x, x).compile()


def attention_flops(cfg: Qwen2Config, impl: str | None, batch: int, tokens: int) -> float:
    """Forward + backward attention matmul FLOPs over all layers (without rematerialisation), in units of one
    (T x D) @ (D x T)-sized product per head: XLA does 2 forward (QK^T, PV) and 4 backward over every score;
    splash 2 forward, 3 in its dq kernel and 4 in its dk/dv kernel (each recomputes the scores), over the
    blocks on or below the diagonal only."""
    one = 2 * batch * cfg.num_heads * tokens * tokens * cfg.dim_per_head * cfg.num_layers
    if impl is None:
        return 6 * one
    block = tpu_attention._block(-(-tokens // tpu_attention.LANES) * tpu_attention.LANES)
    n = -(-tokens // block)
    return 9 * one * (n * (n + 1) / 2) / n ** 2


def measured(compiled, t0: float) -> dict:
    m, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"compile_s": round(time.perf_counter() - t0, 1), "temp_gib": m.temp_size_in_bytes / GIB,
            "argument_gib": m.argument_size_in_bytes / GIB, "output_gib": m.output_size_in_bytes / GIB,
            "flops_xla_counted": cost.get("flops", 0.0), "bytes_accessed_gib": cost.get("bytes accessed", 0.0) / GIB,
            "mosaic_calls": compiled.as_text().count('custom_call_target="tpu_custom_call"')}


def report(cfg, impl, mesh, batch, tokens, remat) -> dict:
    t0 = time.perf_counter()
    compiled = compile_layers(cfg, impl, mesh, batch, tokens, remat)
    return {"attention": impl or "xla", "tokens": tokens, "layers": cfg.num_layers, "batch": batch,
            "remat": remat, **measured(compiled, t0),
            "attention_flops": attention_flops(cfg, impl, batch, tokens) / mesh.size}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m liteframe_jax.bench tpu_attention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="v5p:2x2x2")
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1: the rest)")
    parser.add_argument("--preset", default="qwen2.5-7b")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--tokens", default="12288", help="row lengths, comma-separated")
    parser.add_argument("--batch-per-chip", type=float, default=1.0, help="rows per data x fsdp device")
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--attention", default="xla,splash")
    parser.add_argument("--vision", default=None, metavar="TOKENS,HEADS,HEAD_DIM,FRAMES_PER_CHIP",
                        help="instead: one vision-tower attention (non-causal, per frame), e.g. 1024,12,64,256 (the "
                             "paper student's first stage at batch 256 clips of 8 frames on 8 chips)")
    parser.add_argument("--forward-only", action="store_true", help="--vision: a frozen tower (no backward)")
    parser.add_argument("--out", default=None, help="append the rows here as JSON lines")
    args = parser.parse_args(argv)
    from jax.experimental import topologies
    n = len(topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices)
    sizes = [int(s) for s in args.mesh.split(",")]
    if -1 in sizes:
        sizes[sizes.index(-1)] = n // -int(np.prod(sizes))
    mesh = topology_mesh(args.topology, tuple(sizes))
    # a tiny vocabulary: the layers are measured, not the embedding table
    cfg = dataclasses.replace(Qwen2Config.preset(args.preset), num_layers=args.layers, vocab_size=128,
                              tie_word_embeddings=True)
    batch = max(1, round(args.batch_per_chip * sharding.batch_split(mesh)))
    header = {"topology": args.topology, "mesh": dict(mesh.shape), "device": mesh.devices.flat[0].device_kind,
              "jax": jax.__version__, "libtpu": importlib.metadata.version("libtpu"), "date": time.strftime("%Y-%m-%d"),
              "preset": args.preset}
    print(json.dumps(header))
    for impl in (None if a == "xla" else a for a in args.attention.split(",")):
        if args.vision:
            tokens, heads, head_dim, per_chip = (int(v) for v in args.vision.split(","))
            t0 = time.perf_counter()
            compiled = compile_vision_attention(impl, mesh, per_chip * sharding.batch_split(mesh), tokens, heads,
                                                head_dim, train=not args.forward_only)
            rows = [{"attention": impl or "xla", "vision": args.vision, "train": not args.forward_only,
                     **measured(compiled, t0)}]
        else:
            rows = [report(cfg, impl, mesh, batch, int(t), args.remat) for t in args.tokens.split(",")]
        for row in rows:
            print(json.dumps({**header, **row}), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**header, **row}) + "\n")

