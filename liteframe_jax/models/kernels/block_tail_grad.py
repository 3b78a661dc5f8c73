"""The backward pass of the student block tail (`block_tail.py`) as one GPU kernel (Pallas, Triton backend).

XLA's autodiff of the tail (attention residual, LayerNorm_t, temporal convolution, residual, LayerNorm_2)
ran as many passes per block, several of them float32 transposes that its layout choice for the convolution's
frame shifts forced: ~48 of the 190 ms of device time of a `paper` CTD step at 32 clips on an H100
(docs/BENCHMARKS_HISTORY.md, sixth pass). This kernel reads x, o and the two output cotangents once, recomputes the
forward in registers (with the LayerNorm statistics the forward kernel kept, so without reductions), and writes the
cotangent of x once (it is also o's: the tail only uses x + o). The ten parameter gradients are summed per program
into a small float32 array that XLA adds up.

Per position and frame t, with h = taps // 2, ^ a normalised row and s its 1 / std:

    y_t = x_t + o_t + b_o        z_t = LN_t(y_t)        r_t = y_t + b_c + sum_j w_j z_{t+j-h}
    outputs r_t + b_next and LN_2(r_t), with cotangents g1_t and g2_t
    g_r_t = g1_t + LN'(r^_t, s, gamma_2 g2_t)            LN'(v^, s, a) = s (a - mean(a) - v^ mean(a v^))
    g_z_t = sum_j w_j g_r_{t-j+h}
    g_y_t = g_r_t + LN'(y^_t, s, gamma_t g_z_t)          (the cotangent of x and of o)

Each program walks `loop_positions` positions' frames in order, keeping a window of 2h + 1 frames.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from liteframe_jax.core import sharding
from liteframe_jax.models.kernels.block_tail_common import column_chunk, row_sum, vector_loader

# the parameter gradients' order in the kernel's partial-sum output; the conv taps follow as "w0", "w1", ...
PARTIALS = ("o_bias", "norm_t_scale", "norm_t_bias", "conv_b", "norm_2_scale", "norm_2_bias", "next_bias")


def gradient_names(taps: int) -> tuple[str, ...]:
    """The rows of the kernel's partial-sum output, in order: `PARTIALS`, then the conv taps."""
    return PARTIALS + tuple(f"w{j}" for j in range(taps))


def _kernel(x_ref, o_ref, stats_ref, g1_ref, g2_ref, o_bias_ref, gt_ref, bt_ref, w_ref, cb_ref, g2s_ref, dy_ref,
            partial_ref, *, frames: int, positions: int, width: int, chunk: int, taps: int, config):
    import jax.experimental.pallas as pl


    f32 = jnp.float32
    rows, half = config.rows, taps // 2
    chunks = [pl.ds(c * chunk, chunk) for c in range(width // chunk)]
    vector = vector_loader({"o_bias": (o_bias_ref, ()), "gt": (gt_ref, ()), "bt": (bt_ref, ()), "cb": (cb_ref, ()),
                            "g2s": (g2s_ref, ()), **{f"w{j}": (w_ref, (j,)) for j in range(taps)}},
                           chunks, config.hoist_vectors)
    names = gradient_names(taps)
    clip, block = pl.program_id(0), pl.program_id(1)
    mul = lambda a, b: [p * q for p, q in zip(a, b)]
    add = lambda a, b: [p + q for p, q in zip(a, b)]

    def norm_backward(normed, rstd, a):  # a: the LayerNorm's scale times its output's cotangent
        mean_a, mean_an = row_sum(a) / width, row_sum(mul(a, normed)) / width
        return [rstd * (p - mean_a - q * mean_an) for p, q in zip(a, normed)]

    def walk_frames(first_position, acc):
        def row_slice(t):
            return pl.ds((clip * frames + t) * positions + first_position, rows)

        def load(ref, t):
            return [ref[row_slice(t), cols].astype(f32) for cols in chunks]

        def accumulate(name, value):
            acc[name] = add(acc[name], value)

        def normalise(v, t, stats_column):  # with the forward kernel's statistics of this row
            mean = stats_ref[row_slice(t), pl.ds(stats_column, 1)]
            rstd = stats_ref[row_slice(t), pl.ds(stats_column + 1, 1)]
            return [(c - mean) * rstd for c in v], rstd

        def forward(t):  # (y^_t, its 1 / std, y_t, z_t)
            y = [a + b + c for a, b, c in zip(load(x_ref, t), load(o_ref, t), vector("o_bias"))]
            normed, rstd = normalise(y, t, 0)
            return normed, rstd, y, [v * g + b for v, g, b in zip(normed, vector("gt"), vector("bt"))]

        window = {t: forward(t) for t in range(min(half + 1, frames))}
        grad_r = {}

        def finish(s):  # every g_r that frame s's z fed is known: write g_y_s
            normed, rstd, _, _ = window.pop(s)
            grad_z = None
            for j in range(taps):
                t = s - j + half
                if 0 <= t < frames:
                    term = mul(vector(f"w{j}"), grad_r[t])
                    grad_z = term if grad_z is None else add(grad_z, term)
            grad_y = grad_r[s]
            if grad_z is not None:  # None only for a 1-frame clip with a 1-tap kernel's neighbours absent
                accumulate("norm_t_scale", mul(grad_z, normed))
                accumulate("norm_t_bias", grad_z)
                grad_y = add(grad_y, norm_backward(normed, rstd, mul(vector("gt"), grad_z)))
            accumulate("o_bias", grad_y)
            for cols, v in zip(chunks, grad_y):
                dy_ref[row_slice(s), cols] = v.astype(dy_ref.dtype)
            grad_r.pop(s - half, None)

        for t in range(frames):  # static: clips are short (block_tail.MAX_FRAMES)
            if t + half + 1 < frames:
                window[t + half + 1] = forward(t + half + 1)
            r = add(window[t][2], vector("cb"))
            for j in range(taps):
                s = t + j - half
                if 0 <= s < frames:
                    r = add(r, mul(vector(f"w{j}"), window[s][3]))
            normed_r, rstd_r = normalise(r, t, 2)
            g1, g2 = load(g1_ref, t), load(g2_ref, t)
            accumulate("norm_2_scale", mul(g2, normed_r))
            accumulate("norm_2_bias", g2)
            accumulate("next_bias", g1)
            grad_r[t] = add(g1, norm_backward(normed_r, rstd_r, mul(vector("g2s"), g2)))
            accumulate("conv_b", grad_r[t])
            for j in range(taps):
                s = t + j - half
                if 0 <= s < frames:
                    accumulate(f"w{j}", mul(grad_r[t], window[s][3]))
            if t >= half:
                finish(t - half)
        for s in range(max(frames - half, 0), frames):
            finish(s)
        return acc

    per_program = rows * config.loop_positions
    acc = {name: [jnp.zeros((rows, chunk), f32) for _ in chunks] for name in names}
    if config.loop_positions == 1:
        acc = walk_frames(block * per_program, acc)
    else:
        acc = lax.fori_loop(0, config.loop_positions,
                            lambda i, a: walk_frames(block * per_program + i * rows, dict(a)), acc)
    program = clip * pl.num_programs(1) + block
    for v, name in enumerate(names):
        for cols, a in zip(chunks, acc[name]):
            partial_ref[pl.ds(program * len(names) + v, 1), cols] = jnp.sum(a, axis=0, keepdims=True)


def block_tail_grad(x, o, stats, o_bias, norm_t, conv_w, conv_b, norm_2_scale, cotangents, config,
                    interpret: bool = False, mesh=None):
    """Cotangents of `block_tail`'s inputs from those of its two outputs (see the module docstring).

    `stats` is the forward kernel's (B, T * S, 4) float32 output: LayerNorm_t's and LayerNorm_2's mean and
    1 / std for every row, so the forward is recomputed without its reductions. `config` is a
    `block_tail.TailConfig` read for its backward layout (`grad_view`); under a `mesh` that splits the batch each
    device runs the kernel on its own clips (`sharding.over_batch`).
    Returns (g_y, grads): g_y is the cotangent of x and of o, in x's dtype; grads maps each name of
    `PARTIALS` and "w0", "w1", ... to a float32 (D,) gradient.
    """
    call = functools.partial(_grad_local, config=config, interpret=interpret)
    g_y, partial = sharding.over_batch(call, mesh, (x, o, stats, cotangents[0], cotangents[1]),
                                       (o_bias, norm_t, conv_w, conv_b, norm_2_scale), what="block_tail_grad")
    names = gradient_names(conv_w.shape[0])
    sums = partial.reshape(-1, len(names), x.shape[-1]).sum(0)  # per-program sums, from every device
    return g_y, dict(zip(names, sums))


def _grad_local(x, o, stats, g1, g2, o_bias, norm_t, conv_w, conv_b, norm_2_scale, config, interpret):
    """One device's clips: (g_y, per-program parameter-gradient sums of shape (B, programs * 10, D))."""
    import jax.experimental.pallas as pl
    from jax.experimental.pallas import triton as plgpu


    b, t, s, d = x.shape
    taps = conv_w.shape[0]
    names = gradient_names(taps)
    blocks = s // (config.rows * config.loop_positions)
    flat = lambda a: a.reshape(b * t * s, d).astype(x.dtype)
    kernel = functools.partial(_kernel, frames=t, positions=s, width=d, chunk=column_chunk(d), taps=taps,
                               config=config)
    g_y, partial = pl.pallas_call(
        kernel, grid=(b, blocks), interpret=interpret, name="student_block_tail_grad",
        out_shape=(jax.ShapeDtypeStruct((b * t * s, d), x.dtype),
                   jax.ShapeDtypeStruct((b * blocks * len(names), d), jnp.float32)),
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=config.num_warps, num_stages=1),
    )(flat(x), flat(o), stats.reshape(b * t * s, 4), flat(g1), flat(g2), o_bias, norm_t[0], norm_t[1], conv_w,
      conv_b, norm_2_scale)
    return g_y.reshape(x.shape), partial.reshape(b, blocks * len(names), d)
