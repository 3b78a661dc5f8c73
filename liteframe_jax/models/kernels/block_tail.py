"""The elementwise tail of a student block as one GPU kernel (Pallas, Triton backend).

Between the attention's output projection and the MLP's fc1, a student block does only bandwidth-bound work:

    x = x + o + b_o                      (attention residual; o is the out-projection GEMM without bias)
    x = x + tconv(LayerNorm_t(x))        (depth-wise temporal convolution over frames t-1, t, t+1)
    h = LayerNorm_2(x)                   (the MLP's input)
    returns x + b_next and h             (b_next: the MLP's fc2 bias, added here for free, so the block's
                                          last residual add is x + fc2's GEMM with no bias pass of its own)

XLA runs this as several passes over the (B, T, H*W, D) activations (docs/BENCHMARKS_HISTORY.md, fourth pass:
~3.1 ms per block at the `paper` student's stage 0, 512 frames, on an H100). This kernel reads x and o once and
writes x and h once. Each program owns `rows x loop_positions` spatial positions of one clip and, `rows` at a time,
walks their frames in order, so each frame's LayerNorm_t is computed once, in registers, and reused by its temporal
neighbours.
Float32 inside; each output is rounded once.

The backward pass is a kernel too (`block_tail_grad.py`), so training uses the tail (`tail_kernel="pallas"`
on the student) as well as inference.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from liteframe_jax.core import sharding
from liteframe_jax.models.kernels.block_tail_common import column_chunk, row_sum, vector_loader
from liteframe_jax.models.kernels.block_tail_grad import block_tail_grad


@dataclasses.dataclass(frozen=True)
class TailConfig:
    """How programs map onto the activations. The defaults were the fastest of those measured on an H100
    (docs/BENCHMARKS_HISTORY.md, fifth pass): 1.69 ms at 64 clips x 8 frames x 1024 positions x 768, where XLA's
    passes take ~3.1 ms; two rows per program, or one warp, spilled registers and ran 2-3x slower."""

    rows: int = 1  # spatial positions per row block (a power of 2 dividing H*W)
    num_warps: int = 4
    # issue every frame's loads before the first arithmetic, so each thread has the whole clip in flight
    preload: bool = True
    # the (taps + 7) parameter vectors loaded once per program rather than at each use
    hoist_vectors: bool = True
    # row blocks walked by one program, one after another (amortises the hoisted vectors)
    loop_positions: int = 4
    # the backward kernel's warps and row blocks per program (`block_tail_grad.py`; more positions per
    # program also means fewer per-program parameter-gradient partial sums to add up)
    grad_warps: int = 4
    grad_loop_positions: int = 8

    def grad_view(self) -> "TailConfig":
        """The layout the backward kernel reads from `rows`, `num_warps`, `hoist_vectors`, `loop_positions`."""
        return dataclasses.replace(self, num_warps=self.grad_warps, loop_positions=self.grad_loop_positions)


CONFIG = TailConfig()  # the layout the student's blocks use

KERNELS = ("xla", "pallas", "interpret")  # the student's `tail_kernel` choices

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
            h_out_ref, stats_ref=None, *,
            frames: int, positions: int, width: int, chunk: int, taps: int, eps: float, config: TailConfig):
    import jax.experimental.pallas as pl

    f32 = jnp.float32
    rows = config.rows
    # Triton tensors have power-of-2 sizes: a row of `width` is handled as width / chunk column chunks
    chunks = [pl.ds(c * chunk, chunk) for c in range(width // chunk)]
    vector = vector_loader({"o_bias": (o_bias_ref, ()), "gt": (gt_ref, ()), "bt": (bt_ref, ()), "cb": (cb_ref, ()),
                            "g2": (g2_ref, ()), "b2": (b2_ref, ()), "next_bias": (next_bias_ref, ()),
                            **{f"w{j}": (w_ref, (j,)) for j in range(taps)}}, chunks, config.hoist_vectors)
    clip, block = pl.program_id(0), pl.program_id(1)

    def walk_frames(first_position):
        def row_slice(t):  # rows of frame t in the (B * T * S, D) arrays
            return pl.ds((clip * frames + t) * positions + first_position, rows)

        def layer_norm(v, scale, bias, t, stats_column):  # for training, keeps the row's mean and 1 / std
            mean = row_sum(v) / width
            centred = [c - mean for c in v]
            rstd = lax.rsqrt(row_sum([c * c for c in centred]) / width + eps)
            if stats_ref is not None:
                stats_ref[row_slice(t), pl.ds(stats_column, 1)] = mean
                stats_ref[row_slice(t), pl.ds(stats_column + 1, 1)] = rstd
            return [c * rstd * g + b for c, g, b in zip(centred, vector(scale), vector(bias))]

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
        normed = {t: layer_norm(r, "gt", "bt", t, 0) for t, r in residual.items()}
        for t in range(frames):  # static: clips are short (MAX_FRAMES)
            ahead = t + half + 1
            if ahead < frames:
                residual[ahead] = attention_residual(ahead)
                normed[ahead] = layer_norm(residual[ahead], "gt", "bt", ahead, 0)
            y = [r + c for r, c in zip(residual.pop(t), vector("cb"))]
            for j in range(taps):
                s = t + j - half
                if 0 <= s < frames:  # 'same' zero padding of the normalised input
                    y = [a + w * n for a, w, n in zip(y, vector(f"w{j}"), normed[s])]
            store(x_out_ref, t, [a + b for a, b in zip(y, vector("next_bias"))])
            store(h_out_ref, t, layer_norm(y, "g2", "b2", t, 2))
            normed.pop(t - half, None)

    per_program = rows * config.loop_positions
    if config.loop_positions == 1:
        walk_frames(block * per_program)
    else:
        @pl.loop(0, config.loop_positions)
        def _(i):
            walk_frames(block * per_program + i * rows)


def device_problem() -> str | None:
    """None if this process can compile the kernel (a GPU backend: Triton), else what is wrong."""
    if jax.default_backend() != "gpu":
        return f"needs a GPU (backend is {jax.default_backend()})"
    return None


def supported(shape: tuple[int, ...], taps: int, config: TailConfig = TailConfig()) -> bool:
    """Whether (B, T, S, D) activations with a `taps`-wide temporal kernel run in the kernel."""
    _, t, s, d = shape
    return (s % (config.rows * config.loop_positions) == 0 and s % (config.rows * config.grad_loop_positions) == 0
            and column_chunk(d) >= 16 and taps % 2 == 1 and t <= MAX_FRAMES)


def _fused(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config: TailConfig, interpret: bool,
           mesh, with_stats: bool):
    if not supported(x.shape, conv_w.shape[0], config):
        raise ValueError(f"block_tail: unsupported shape {x.shape} / temporal taps {conv_w.shape[0]} / {config}")
    call = functools.partial(_fused_local, eps=eps, config=config, interpret=interpret, with_stats=with_stats)
    return sharding.over_batch(call, mesh, (x, o), (o_bias, norm_t, conv_w, conv_b, norm_2, next_bias),
                               what="block_tail")


def _fused_local(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config: TailConfig, interpret: bool,
                 with_stats: bool):
    """(x_out, h_out), plus the LayerNorm statistics (B, T*S, 4) for the backward `with_stats`."""
    import jax.experimental.pallas as pl
    from jax.experimental.pallas import triton as plgpu

    b, t, s, d = x.shape
    flat = lambda a: a.reshape(b * t * s, d)
    kernel = functools.partial(_kernel, frames=t, positions=s, width=d, chunk=column_chunk(d),
                               taps=conv_w.shape[0], eps=eps, config=config)
    out = jax.ShapeDtypeStruct((b * t * s, d), x.dtype)
    stats = jax.ShapeDtypeStruct((b * t * s, 4), jnp.float32)
    outs = pl.pallas_call(
        kernel, out_shape=(out, out, stats) if with_stats else (out, out),
        grid=(b, s // (config.rows * config.loop_positions)), interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=config.num_warps, num_stages=1),
        name="student_block_tail",
    )(flat(x), flat(o), o_bias, norm_t[0], norm_t[1], conv_w, conv_b, norm_2[0], norm_2[1], next_bias)
    x_out, h_out = outs[0].reshape(x.shape), outs[1].reshape(x.shape)
    return (x_out, h_out, outs[2].reshape(b, t * s, 4)) if with_stats else (x_out, h_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11))
def block_tail(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps: float = 1e-6,
               config: TailConfig = TailConfig(), interpret: bool = False, mesh=None):
    """r = (x + o + o_bias, then + tconv(LayerNorm_t(.))); returns (r + next_bias, LayerNorm_2(r)) for
    (B, T, S, D) x and o, both in x's dtype.

    `norm_t` and `norm_2` are (scale, bias) pairs; `conv_w` is (taps, D); `o_bias`, `conv_b` and
    `next_bias` are (D,). `interpret=True` runs the kernel in the Pallas interpreter (CPU tests). Under a
    `mesh` whose data / fsdp axes split the batch, each device runs the kernels on its own clips (`sharding.over_batch`).
    """
    # not differentiated (inference): no statistics to write; writing them made the kernel 2.04 instead of
    # 1.45 ms per stage-0 call at 512 frames on an H100 (docs/BENCHMARKS_HISTORY.md, seventh pass)
    return _fused(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config, interpret, mesh, False)


def _fwd(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config, interpret, mesh):
    x_out, h_out, stats = _fused(x, o, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias, eps, config, interpret,
                                 mesh, True)
    # the two LayerNorms' per-row mean and 1 / std (16 bytes a row) spare the backward four reductions a frame
    return (x_out, h_out), (x, o, stats, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias)


def _bwd(eps, config, interpret, mesh, res, cotangents):
    x, o, stats, o_bias, norm_t, conv_w, conv_b, norm_2, next_bias = res
    g_y, g = block_tail_grad(x, o, stats, o_bias, norm_t, conv_w, conv_b, norm_2[0], cotangents, config.grad_view(),
                             interpret, mesh)
    like = lambda value, primal: value.astype(primal.dtype)
    conv_grad = jnp.stack([g[f"w{j}"] for j in range(conv_w.shape[0])])
    return (g_y, like(g_y, o), like(g["o_bias"], o_bias),
            (like(g["norm_t_scale"], norm_t[0]), like(g["norm_t_bias"], norm_t[1])), like(conv_grad, conv_w),
            like(g["conv_b"], conv_b), (like(g["norm_2_scale"], norm_2[0]), like(g["norm_2_bias"], norm_2[1])),
            like(g["next_bias"], next_bias))


block_tail.defvjp(_fwd, _bwd)
