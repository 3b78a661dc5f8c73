"""A fused `gelu(x @ w + b)` for Hopper GPUs, written in Pallas (Mosaic GPU).

Why: in a ViT MLP, XLA runs the fc1 GEMM in cuBLAS and the exact GELU as a separate pass that reads and writes the
4x-wide activations; for the LiteFrame student that pass was 11% of the forward time on an H100
(docs/BENCHMARKS_HISTORY.md, third pass), and cuBLAS has no exact-GELU epilogue. This kernel applies bias and GELU
to the float32 accumulator before the single bfloat16 store. The GELU is the exact (erf) one or its tanh form,
whichever the model uses (`EPILOGUES`); XLA does not fuse either into cuBLAS here (H100, jax 0.11).

The GEMM is the warp-specialised TMA + WGMMA pipeline of jax's `pallas/ops/gpu/hopper_matmul_mgpu.py`
(two consumer warpgroups, a producer feeding shared memory), with the epilogue replaced; the producer runs
ahead into the next tile while the consumers run the epilogue, whose GELU uses one MUFU instruction per
transcendental (`gelu_f32(fast=True)`; the tanh form needs one). It is used for inference only (`mlp_kernel="pallas"` on the
models): the backward pass of `dense_gelu` recomputes the pre-activation with XLA, which is correct but
slower than XLA's own training path, so trained models keep `mlp_kernel="xla"`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class TileConfig:
    tile_m: int = 128  # rows per consumer warpgroup
    tile_n: int = 128  # columns per consumer warpgroup (a CTA computes tile_m x 2 * tile_n)
    tile_k: int = 64
    max_concurrent_steps: int = 4
    epi_tile_m: int = 64
    epi_tile_n: int = 64
    grid_tile_width: int = 16  # output tiles walked in a snake of this width, for L2 reuse
    approx_math: bool = True  # MUFU rsqrt/exp2 in the GELU epilogue (see gelu_f32(fast=True))
    # the producer warpgroup fetches the next tile's first k-steps while the consumers run this tile's
    # epilogue (a pipeline of pipelines), instead of every tile starting with an empty pipeline
    prefetch_across_tiles: bool = True


# The smallest layer the kernel was measured on (H100, docs/BENCHMARKS_HISTORY.md, fourth pass): at 65,536 rows it
# now beats cuBLAS + the GELU pass (0.75 vs 0.93-1.11 ms); smaller layers keep XLA, unmeasured. The epilogue does
# not overlap the WGMMAs (both consumer warpgroups stop for it), so the kernel's margin grows with the layer.
MIN_ROWS = 65536

# From this many rows, 3 stages with 64x128 epilogue tiles beat the default (H100, 524,288x768 @ 768x3072:
# 4.94 vs 5.17 ms); at 65,536 rows the default was faster (0.74 vs 0.87 ms). docs/BENCHMARKS_HISTORY.md,
# fourth pass.
LARGE_ROWS = 524288
LARGE_LAYER_CONFIG = TileConfig(max_concurrent_steps=3, epi_tile_n=128)


def config_for(m: int) -> TileConfig:
    return LARGE_LAYER_CONFIG if m >= LARGE_ROWS else TileConfig()


def gelu_f32(z, *, fast: bool = False):
    """Exact GELU of float32 `z` (Abramowitz & Stegun erfc; see `layers.gelu_exact`). Plain jnp, so the same
    function runs on the kernel's registers (Mosaic GPU has no erf) and in XLA.

    `fast` is the form the kernel's epilogue uses: the reciprocal as rsqrt(u)^2 and exp as exp2, which with
    the kernel's `approx_math` become one MUFU instruction each (rsqrt.approx, ex2.approx, relative error
    ~2^-22) instead of IEEE division and expf sequences; the epilogue's instruction count was what kept the
    kernel below cuBLAS (docs/BENCHMARKS_HISTORY.md, fourth pass).
    """
    a = jnp.abs(z) * 0.7071067811865476
    u = 1.0 + 0.3275911 * a
    if fast:
        r = lax.rsqrt(u)
        t = r * r
        e = jnp.exp2(a * a * -1.4426950408889634)
    else:
        t = 1.0 / u
        e = jnp.exp(-a * a)
    erfc = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erfc = erfc * e
    return 0.5 * z * jnp.where(z < 0, erfc, 2.0 - erfc)


def gelu_tanh_f32(z):
    """GELU's tanh approximation (`jax.nn.gelu(approximate=True)`, Hugging Face 'gelu_pytorch_tanh', the
    default `nn.gelu` of Flax and so of big_vision's ViT) of float32 `z`. In the kernel's epilogue, with
    `approx_math`, the tanh is one MUFU instruction (tanh.approx): fewer instructions than the erf form, so
    the fused fc1 at the student's stage 0 takes 4.40 instead of 5.27 ms on an H100 (docs/BENCHMARKS_HISTORY.md,
    seventh pass)."""
    return 0.5 * z * (1.0 + jnp.tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))


# the activations the kernel's epilogue computes, by the models' activation names (`layers.ACTIVATIONS`)
EPILOGUES = {"gelu": "exact", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh"}


def epilogue_activation(gelu: str, fast: bool):
    """z -> activation, for `gelu` in ("exact", "tanh")."""
    if gelu == "exact":
        return functools.partial(gelu_f32, fast=fast)
    if gelu == "tanh":
        return gelu_tanh_f32
    raise ValueError(f"unknown GELU form {gelu!r}; choose 'exact' or 'tanh'")


def device_problem(dtype) -> str | None:
    """None if this process's device and dtype can run the kernel, else what is wrong."""
    if jax.default_backend() != "gpu":
        return f"needs a GPU (backend is {jax.default_backend()})"
    device = jax.devices()[0]
    cc = str(getattr(device, "compute_capability", ""))
    if not cc.startswith("9"):
        return f"needs a Hopper GPU (compute capability 9.x), found {device.device_kind} ({cc or 'unknown'})"
    if jnp.dtype(dtype) != jnp.bfloat16:
        return f"needs bfloat16 compute, got {jnp.dtype(dtype).name}"
    return None


def tiles(k: int, n: int, config: TileConfig = TileConfig()) -> bool:
    """Whether (M, k) @ (k, n) tiles. Any M does: TMA zero-fills the reads of the last row tile past M and
    drops its writes past M (InternViT's 64 x 1,025 token rows are not a multiple of 128)."""
    return not (n % (2 * config.tile_n) or k % config.tile_k)


def _fused(a, b, bias, config: TileConfig, gelu: str):
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    m, k = a.shape
    n = b.shape[1]
    dtype = a.dtype
    activation = epilogue_activation(gelu, config.approx_math)
    tile_m, tile_n, tile_k = config.tile_m, config.tile_n, config.tile_k
    cta_tile_n = 2 * tile_n  # the two consumer warpgroups split N
    m_iters, n_iters, k_iters = pl.cdiv(m, tile_m), n // cta_tile_n, k // tile_k
    sms = jax.devices()[0].core_count  # one persistent program per SM
    if config.prefetch_across_tiles and (k_iters % config.max_concurrent_steps or m_iters * n_iters < 2 * sms):
        # a pipeline of pipelines needs whole rounds of stages per tile and a first and a last tile per SM
        config = dataclasses.replace(config, prefetch_across_tiles=False)
    swizzle = plgpu.find_swizzle(tile_k * jnp.dtype(dtype).itemsize * 8)
    transforms = (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))
    epi_m, epi_n = config.epi_tile_m, config.epi_tile_n
    out_swizzle = plgpu.find_swizzle(epi_n * jnp.dtype(dtype).itemsize * 8)
    out_transforms = (plgpu.TilingTransform((8, out_swizzle // jnp.dtype(dtype).itemsize)),
                      plgpu.SwizzleTransform(out_swizzle))

    def kernel(a_gmem, b_gmem, bias_gmem, out_gmem):
        def get_pipeline(body, compute_context, state=None):
            return plgpu.emit_pipeline_warp_specialized(
                body, grid=(k_iters,), memory_registers=40,
                in_specs=[plgpu.BlockSpec((tile_m, tile_k), lambda kk: (0, kk), transforms=transforms,
                                          memory_space=plgpu.SMEM),
                          plgpu.BlockSpec((tile_k, cta_tile_n), lambda kk: (kk, 0), transforms=transforms,
                                          memory_space=plgpu.SMEM)],
                wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=config.max_concurrent_steps,
                compute_context=compute_context, pipeline_state=state)

        ignore = lambda *_, **__: None

        @functools.partial(pl.run_scoped,
                           pipeline_allocs=get_pipeline(ignore, ignore).get_allocations(a_gmem, b_gmem),
                           out_smem=plgpu.SMEM((2, 2, epi_m, epi_n), dtype, transforms=out_transforms),
                           collective_axes="wg")
        def _scope(pipeline_allocs, out_smem):
            wg = lax.axis_index("wg")

            @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
            def _tiles(info):
                (lin,) = info.index
                state = None
                if config.prefetch_across_tiles:  # every program has >= 2 tiles (checked above)
                    first, last = info.local_index == 0, info.local_index == info.num_local_steps - 1
                    state = jnp.where(first, plgpu.PipelinePipeline.START,
                                      jnp.where(last, plgpu.PipelinePipeline.STOP, plgpu.PipelinePipeline.STEADY))
                m_idx, n_idx = plgpu.planar_snake(lin, (m_iters, n_iters), 1, config.grid_tile_width)
                m_slice = pl.ds(m_idx * tile_m, tile_m)
                n_slice = pl.ds(n_idx * cta_tile_n, cta_tile_n)
                wg_n_slice = pl.ds(wg * tile_n, tile_n)

                def compute_context(eval_pipeline):
                    @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tile_m, tile_n), jnp.float32))
                    def _acc(acc_ref):
                        eval_pipeline(acc_ref)
                        bias_row = plgpu.load(bias_gmem.at[n_slice].at[wg_n_slice], (),
                                              layout=plgpu.Layout.WGMMA.reduce(0), optimized=False)
                        z = acc_ref[...] + lax.broadcast_in_dim(bias_row, (tile_m, tile_n), [1])
                        y = activation(z).astype(dtype)
                        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                        for i in range(tile_m // epi_m):
                            for j in range(tile_n // epi_n):
                                slot = (i * (tile_n // epi_n) + j) % 2
                                plgpu.wait_smem_to_gmem(1, wait_read_only=True)
                                out_smem[wg, slot] = y[i * epi_m:(i + 1) * epi_m, j * epi_n:(j + 1) * epi_n]
                                plgpu.commit_smem()
                                plgpu.copy_smem_to_gmem(
                                    out_smem.at[wg, slot],
                                    out_gmem.at[m_slice, n_slice].at[:, wg_n_slice]
                                    .at[pl.ds(i * epi_m, epi_m), pl.ds(j * epi_n, epi_n)])

                def mma(_, a_smem, b_smem, acc_ref):
                    plgpu.wgmma(acc_ref, a_smem, b_smem.at[:, wg_n_slice])
                    plgpu.wgmma_wait(0)
                    return acc_ref

                get_pipeline(mma, compute_context, state)(a_gmem.at[m_slice, :], b_gmem.at[:, n_slice],
                                                          allocations=pipeline_allocs)

        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    f = plgpu.kernel(kernel, out_type=jax.ShapeDtypeStruct((m, n), dtype), grid=(sms,), grid_names=("sm",),
                     num_threads=3, thread_name="wg",
                     compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup,
                                                          approx_math=config.approx_math))
    return f(a, b, bias)


def _reference(x, w, b, gelu="exact"):
    z = jnp.dot(x, w, preferred_element_type=jnp.float32) + b.astype(jnp.float32)
    return epilogue_activation(gelu, False)(z).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def dense_gelu(x: jax.Array, w: jax.Array, b: jax.Array, config: TileConfig = TileConfig(),
               gelu: str = "exact") -> jax.Array:
    """gelu(x @ w + b) for 2D bfloat16 x (M, K), w (K, N), float32 b (N,), as one Hopper kernel; `gelu` is
    "exact" (erf) or "tanh" (the tanh approximation)."""
    problem = device_problem(x.dtype)
    if problem:
        raise ValueError(f"dense_gelu: {problem}")
    if not tiles(x.shape[1], w.shape[1], config):
        raise ValueError(f"dense_gelu: ({x.shape[0]}x{x.shape[1]}) @ ({w.shape[0]}x{w.shape[1]}) does not tile "
                         f"with {config}")
    epilogue_activation(gelu, False)  # a misspelt form fails here, not inside the kernel's tracing
    return _fused(x, w.astype(x.dtype), b.astype(jnp.float32), config, gelu)


def _fwd(x, w, b, config, gelu):
    return dense_gelu(x, w, b, config, gelu), (x, w, b)


def _bwd(config, gelu, res, dy):
    x, w, b = res
    _, vjp = jax.vjp(functools.partial(_reference, gelu=gelu), x, w, b)  # recompute: correct, not fast
    return vjp(dy)


dense_gelu.defvjp(_fwd, _bwd)
