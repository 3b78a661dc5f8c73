"""The elementwise tail of a student block as one GPU kernel (Pallas, Triton backend).

Between the attention's output projection and the MLP's fc1, a student block does only bandwidth-bound work:

    x = x + o + b_o                      (attention residual; o is the out-projection GEMM without bias)
    x = x + tconv(LayerNorm_t(x))        (depth-wise temporal convolution over frames t-1, t, t+1)
    h = LayerNorm_2(x)                   (the MLP's input)
    returns x + b_next and h             (b_next: the MLP's fc2 bias, added here for free, so the block's
                                          last residual add is x + fc2's GEMM with no bias pass of its own)

XLA runs this as several passes over the (B, T, H*W, D) activations (BENCHMARKS.md: ~3.1 ms per block at
the `paper` student's stage 0, 512 frames, on an H100). This kernel reads x and o once and writes x and h
once. Each program owns `rows x loop_positions` spatial positions of one clip and, `rows` at a time, walks
their frames in order, so each frame's LayerNorm_t is computed once, in registers, and reused by its
temporal neighbours.
Float32 inside; each output is rounded once.

Inference only (`mlp_kernel="pallas"` on the student): the backward pass recomputes with XLA (`reference`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class TailConfig:
    """How programs map onto the activations. The defaults were the fastest of those measured on an H100
    (BENCHMARKS.md, fifth pass): 1.69 ms at 64 clips x 8 frames x 1024 positions x 768, where XLA's passes
    take ~3.1 ms; two rows per program, or one warp, spilled registers and ran 2-3x slower."""

    rows: int = 1  # spatial positions per row block (a power of 2 dividing H*W)
    num_warps: int = 4
    # issue every frame's loads before the first arithmetic, so each thread has the whole clip in flight
    preload: bool = True
    # the (taps + 7) parameter vectors loaded once per program rather than at each use
    hoist_vectors: bool = True
    # row blocks walked by one program, one after another (amortises the hoisted vectors)
    loop_positions: int = 4


CONFIG = TailConfig()  # the layout the student's blocks use

# Clips longer than this keep XLA: the frame walk is unrolled, one copy of the body per frame.
MAX_FRAMES = 32


def reference(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps: float):
    """The same function in plain jnp (float32 inside), on (B, T, S, D) arrays; norms are (scale, bias)."""
    f32 = jnp.float32

    def layer_norm(v, scale_bias):
        mean = v.mean(-1, keepdims=True)
        centred = v - mean
        var = jnp.square(centred).mean(-1, keepdims=True)
        return centred * lax.rsqrt(var + eps) * scale_bias[0].astype(f32) + scale_bias[1].astype(f32)

    r = x.astype(f32) + o.astype(f32) + o_bias.astype(f32)
    n = layer_norm(r, norm_t)
    k, t = conv_w.shape[0], r.shape[1]
    padded = jnp.pad(n, ((0, 0), (k // 2, k // 2), (0, 0), (0, 0)))
    r = r + sum(padded[:, j:j + t] * conv_w[j].astype(f32) for j in range(k)) + conv_b.astype(f32)
    return (r + next_bias.astype(f32)).astype(x.dtype), layer_norm(r, norm_2).astype(x.dtype)


def _kernel(x_ref, o_ref, o_bias_ref, gt_ref, bt_ref, w_ref, cb_ref, g2_ref, b2_ref, next_bias_ref, x_out_ref,
            h_out_ref, *,
            frames: int, positions: int, width: int, chunk: int, taps: int, eps: float, config: TailConfig):
    import jax.experimental.pallas as pl

    f32 = jnp.float32
    rows = config.rows
    # Triton tensors have power-of-2 sizes: a row of `width` is handled as width / chunk column chunks
    chunks = [pl.ds(c * chunk, chunk) for c in range(width // chunk)]
    # name -> (ref, leading index): Triton lowering takes one indexer per load, so no `ref.at[j]` views
    refs = {"o_bias": (o_bias_ref, ()), "gt": (gt_ref, ()), "bt": (bt_ref, ()), "cb": (cb_ref, ()),
            "g2": (g2_ref, ()), "b2": (b2_ref, ()), "next_bias": (next_bias_ref, ()),
            **{f"w{j}": (w_ref, (j,)) for j in range(taps)}}
    load_vector = lambda name: [refs[name][0][(*refs[name][1], cols)].astype(f32)[None, :] for cols in chunks]
    hoisted = {name: load_vector(name) for name in refs} if config.hoist_vectors else {}
    vector = lambda name: hoisted[name] if config.hoist_vectors else load_vector(name)
    clip, block = pl.program_id(0), pl.program_id(1)

    def row_sum(v):  # chunks are added elementwise first: one cross-thread reduction per statistic
        return jnp.sum(functools.reduce(jnp.add, v), axis=1, keepdims=True)

    def layer_norm(v, scale, bias):
        mean = row_sum(v) / width
        centred = [c - mean for c in v]
        rstd = lax.rsqrt(row_sum([c * c for c in centred]) / width + eps)
        return [c * rstd * g + b for c, g, b in zip(centred, vector(scale), vector(bias))]

    def walk_frames(first_position):
        def row_slice(t):  # rows of frame t in the (B * T * S, D) arrays
            return pl.ds((clip * frames + t) * positions + first_position, rows)

        def load(ref, t):
            return [ref[row_slice(t), cols] for cols in chunks]

        def store(ref, t, value):
            for cols, v in zip(chunks, value):
                ref[row_slice(t), cols] = v.astype(ref.dtype)

        inputs = {t: (load(x_ref, t), load(o_ref, t)) for t in range(frames)} if config.preload else {}

        def attention_residual(t):
            x, o = inputs.pop(t) if config.preload else (load(x_ref, t), load(o_ref, t))
            return [a.astype(f32) + b.astype(f32) + c for a, b, c in zip(x, o, vector("o_bias"))]

        half = taps // 2
        # rolling window: the residual of the current frame, LayerNorm_t of frames t-half .. t+half
        residual = {t: attention_residual(t) for t in range(min(half + 1, frames))}
        normed = {t: layer_norm(r, "gt", "bt") for t, r in residual.items()}
        for t in range(frames):  # static: clips are short (MAX_FRAMES)
            ahead = t + half + 1
            if ahead < frames:
                residual[ahead] = attention_residual(ahead)
                normed[ahead] = layer_norm(residual[ahead], "gt", "bt")
            y = [r + c for r, c in zip(residual.pop(t), vector("cb"))]
            for j in range(taps):
                s = t + j - half
                if 0 <= s < frames:  # 'same' zero padding of the normalised input
                    y = [a + w * n for a, w, n in zip(y, vector(f"w{j}"), normed[s])]
            store(x_out_ref, t, [a + b for a, b in zip(y, vector("next_bias"))])
            store(h_out_ref, t, layer_norm(y, "g2", "b2"))
            normed.pop(t - half, None)

    per_program = rows * config.loop_positions
    if config.loop_positions == 1:
        walk_frames(block * per_program)
    else:
        @pl.loop(0, config.loop_positions)
        def _(i):
            walk_frames(block * per_program + i * rows)


def column_chunk(width: int) -> int:
    """The largest power of 2 up to 256 that divides `width` (768 -> 256)."""
    return math.gcd(width, 256)


def supported(shape: tuple[int, ...], taps: int, config: TailConfig = TailConfig()) -> bool:
    """Whether (B, T, S, D) activations with a `taps`-wide temporal kernel run in the kernel."""
    _, t, s, d = shape
    return (s % (config.rows * config.loop_positions) == 0 and column_chunk(d) >= 16 and taps % 2 == 1
            and t <= MAX_FRAMES)


def _fused(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config: TailConfig, interpret: bool):
    import jax.experimental.pallas as pl
    from jax.experimental.pallas import triton as plgpu

    b, t, s, d = x.shape
    flat = lambda a: a.reshape(b * t * s, d)
    kernel = functools.partial(_kernel, frames=t, positions=s, width=d, chunk=column_chunk(d),
                               taps=conv_w.shape[0], eps=eps, config=config)
    out = jax.ShapeDtypeStruct((b * t * s, d), x.dtype)
    x_out, h_out = pl.pallas_call(
        kernel, out_shape=(out, out), grid=(b, s // (config.rows * config.loop_positions)), interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=config.num_warps, num_stages=1),
        name="student_block_tail",
    )(flat(x), flat(o), o_bias, norm_t[0], norm_t[1], conv_w, conv_b, norm_2[0], norm_2[1], next_bias)
    return x_out.reshape(x.shape), h_out.reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def block_tail(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps: float = 1e-6,
               config: TailConfig = TailConfig(), interpret: bool = False):
    """r = (x + o + o_bias, then + tconv(LayerNorm_t(.))); returns (r + next_bias, LayerNorm_2(r)) for
    (B, T, S, D) x and o, both in x's dtype.

    `norm_t` and `norm_2` are (scale, bias) pairs; `conv_w` is (taps, D); `o_bias`, `conv_b` and
    `next_bias` are (D,). `interpret=True` runs the kernel in the Pallas interpreter (CPU tests).
    """
    if not supported(x.shape, conv_w.shape[0], config):
        raise ValueError(f"block_tail: unsupported shape {x.shape} / temporal taps {conv_w.shape[0]} / {config}")
    return _fused(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config, interpret)


def _fwd(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config, interpret):
    out = block_tail(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config, interpret)
    return out, (x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias)


def _bwd(eps, config, interpret, res, cotangents):
    _, vjp = jax.vjp(functools.partial(reference, eps=eps), *res)
    return vjp(cotangents)


block_tail.defvjp(_fwd, _bwd)
