"""The LiteFrame student: a compact video encoder that predicts compressed teacher tokens directly.

Frames (B, T, H, W, 3) -> tubelet embedding -> stages of [spatial self-attention, depth-wise temporal
convolution, MLP] blocks, each stage followed by a strided depth-wise spatio-temporal downsampling ->
LayerNorm -> projection to the target width. The output token grid (T', H', W') must equal the compressed
teacher grid; tokens come out flattened in (t, h, w) order, like `compression.compress`.

The downsampling is a depth-wise convolution whose kernel equals its stride and starts as a uniform
average: at initialisation it is exactly the teacher-side average pooling, and it learns its own weighting.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.models import layers, resize
from liteframe_jax.models.kernels import block_tail


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    image_size: int = 448
    num_frames: int = 8
    patch_size: tuple[int, int, int] = (1, 14, 14)  # (t, h, w) tubelet
    width: int = 768
    num_heads: int = 12
    mlp_dim: int = 3072
    # (number of blocks, downsampling stride (t, h, w) applied after the stage)
    stages: tuple = ((4, (2, 2, 2)), (4, (2, 2, 2)), (4, (1, 1, 1)))
    temporal_kernel: int = 3
    out_dim: int = 3584
    act: str = "gelu"
    norm_eps: float = 1e-6
    # (h, w) of the learned spatial position table; (0, 0): the input grid. A student trained at one size runs
    # at another with its table resampled bicubically, as InternViT's and SigLIP's are (`at_image_size`).
    position_grid: tuple[int, int] = (0, 0)

    @classmethod
    def preset(cls, name: str, **changes) -> "StudentConfig":
        """A named size (STUDENT_PRESETS), with `changes` on top."""
        if name not in STUDENT_PRESETS:
            raise ValueError(f"unknown student preset {name!r}; known: {sorted(STUDENT_PRESETS)}")
        return dataclasses.replace(STUDENT_PRESETS[name], **changes)

    @classmethod
    def from_dict(cls, d) -> "StudentConfig":
        d = dict(d)
        d["patch_size"] = tuple(d["patch_size"])
        d["stages"] = tuple((int(n), tuple(int(s) for s in stride)) for n, stride in d["stages"])
        d["position_grid"] = tuple(int(g) for g in d.get("position_grid", (0, 0)))
        return cls(**d)

    def at_image_size(self, image_size: int) -> "StudentConfig":
        """This student at another input size: the same parameters, its position table resampled to the new
        grid (so the visual tokens per clip change with the size)."""
        changed = dataclasses.replace(self, image_size=int(image_size), position_grid=self.table_grid)
        changed.output_grid  # the new grid must still divide by every stage's stride
        return changed

    @property
    def table_grid(self) -> tuple[int, int]:
        return tuple(self.position_grid) if any(self.position_grid) else self.input_grid[1:]

    @property
    def input_grid(self) -> tuple[int, int, int]:
        (pt, ph, pw), s, t = self.patch_size, self.image_size, self.num_frames
        if t % pt or s % ph or s % pw:
            raise ValueError(f"student input {t}x{s}x{s} (T, H, W) is not divisible by patch_size {self.patch_size}")
        return t // pt, s // ph, s // pw

    @property
    def output_grid(self) -> tuple[int, int, int]:
        grid = self.input_grid
        for i, (_, stride) in enumerate(self.stages):
            if any(g % st for g, st in zip(grid, stride)):
                raise ValueError(f"student stage {i}: token grid {grid} is not divisible by its stride {stride}")
            grid = tuple(g // st for g, st in zip(grid, stride))
        return grid


STUDENT_PRESETS = {
    # the benches' `--small` students, `paper`'s layout at a CPU's size: 56 px, 14 px patches, one block a stage,
    # 8x4x4 tokens -> 2x2x2 = 8 tokens of width 64 per clip; `tiny_tubelet2` on 2-frame tubelets (4x4x4 in)
    "tiny": StudentConfig(image_size=56, patch_size=(1, 14, 14), width=64, num_heads=4, mlp_dim=128,
                          stages=((1, (2, 2, 2)), (1, (2, 1, 1))), out_dim=64),
    "tiny_tubelet2": StudentConfig(image_size=56, patch_size=(2, 14, 14), width=64, num_heads=4, mlp_dim=128,
                                   stages=((1, (1, 2, 2)), (1, (2, 1, 1))), out_dim=64),
    # 64 px frames, 8x8 patches: 8x8x8 tokens -> (2, 2, 2) -> 4x4x4 = 64 tokens of width 128 per clip
    "demo": StudentConfig(image_size=64, patch_size=(1, 8, 8), width=64, num_heads=4, mlp_dim=256,
                          stages=((2, (2, 2, 2)), (2, (1, 1, 1))), out_dim=128),
    # ViT-B scale at 448 px: 8x32x32 tokens -> 2x8x8 = 128 tokens of InternVL3-8B's width 3584 per clip
    "paper": StudentConfig(image_size=448, patch_size=(1, 14, 14), width=768, num_heads=12, mlp_dim=3072,
                           stages=((4, (2, 2, 2)), (4, (2, 2, 2)), (4, (1, 1, 1))), out_dim=3584),
    # `paper` on 2-frame tubelets: 4x32x32 tokens in, the same 2x8x8 out
    "paper_tubelet2": StudentConfig(image_size=448, patch_size=(2, 14, 14), width=768, num_heads=12, mlp_dim=3072,
                                    stages=((4, (1, 2, 2)), (4, (2, 2, 2)), (4, (1, 1, 1))), out_dim=3584),
    # `paper` against SigLIP-So400m-384's 27x27 grid: 378 px, 8x27x27 tokens -> 2x9x9 = 162 of width 1152
    "siglip": StudentConfig(image_size=378, patch_size=(1, 14, 14), width=768, num_heads=12, mlp_dim=3072,
                            stages=((4, (2, 3, 3)), (4, (2, 1, 1)), (4, (1, 1, 1))), out_dim=1152),
}


class SpatialAttention(nnx.Module):
    def __init__(self, cfg: StudentConfig, *, rngs: nnx.Rngs, dtype, attn_impl, mesh=None):
        d = cfg.width
        self.q = layers.Dense(d, d, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.k = layers.Dense(d, d, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.v = layers.Dense(d, d, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.out = layers.Dense(d, d, axes=("heads", "embed"), rngs=rngs, dtype=dtype)
        self.num_heads, self.attn_impl, self.mesh = cfg.num_heads, attn_impl, mesh

    def __call__(self, x: jax.Array) -> jax.Array:
        y, bias = self.unbiased(x)
        return y + bias.astype(y.dtype)

    def unbiased(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The attention output without its output bias, and that bias (for the fused block tail)."""
        b, t, h, w, d = x.shape
        tokens = x.reshape(b * t, h * w, d)  # attention within each frame
        y, bias = layers.self_attention_unbiased(tokens, self.q, self.k, self.v, self.out, self.num_heads,
                                                 implementation=self.attn_impl, mesh=self.mesh)
        return y.reshape(b, t, h, w, d), bias


class TemporalConv(nnx.Module):
    """Depth-wise 1D convolution over time, 'same' zero padding; written as shifted sums so XLA fuses it."""

    def __init__(self, features: int, kernel: int, *, rngs: nnx.Rngs):
        if kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd, got {kernel}")
        init = nnx.initializers.normal(1.0 / math.sqrt(kernel))
        self.kernel = layers.param(rngs, init, (kernel, features), (None, "embed"))
        self.bias = layers.param(rngs, nnx.initializers.zeros, (features,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        k, t = self.kernel.shape[0], x.shape[1]
        pad = k // 2
        xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)))
        w = self.kernel[...].astype(x.dtype)
        y = sum(xp[:, j:j + t] * w[j] for j in range(k))
        return y + self.bias[...].astype(x.dtype)


class Block(nnx.Module):
    def __init__(self, cfg: StudentConfig, *, rngs: nnx.Rngs, dtype, attn_impl, mlp_kernel="xla", tail_kernel=None,
                 mesh=None):
        d = cfg.width
        self.norm1 = layers.LayerNorm(d, rngs=rngs, eps=cfg.norm_eps)
        self.attn = SpatialAttention(cfg, rngs=rngs, dtype=dtype, attn_impl=attn_impl, mesh=mesh)
        self.norm_t = layers.LayerNorm(d, rngs=rngs, eps=cfg.norm_eps)
        self.tconv = TemporalConv(d, cfg.temporal_kernel, rngs=rngs)
        self.norm2 = layers.LayerNorm(d, rngs=rngs, eps=cfg.norm_eps)
        self.mlp = layers.Mlp(d, cfg.mlp_dim, act=cfg.act, rngs=rngs, dtype=dtype, impl=mlp_kernel, mesh=mesh)
        # the block's elementwise tail (forward and backward) as one kernel each (`block_tail`): "pallas", or
        # "interpret" (the Pallas interpreter, CPU tests); None / "xla": XLA's passes
        self.tail_kernel = None if tail_kernel in (None, "xla") else tail_kernel
        self.mesh = mesh  # where the batch is split over devices, each runs the tail kernels on its own clips

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, d = x.shape
        tail_config = block_tail.CONFIG
        if self.tail_kernel and block_tail.supported((b, t, h * w, d), self.tconv.kernel.shape[0], tail_config):
            # attention residual, LayerNorm_t, temporal conv, residual and LayerNorm_2 in one GPU pass
            # fc2's bias rides on the kernel's residual output: the last residual add needs no bias pass
            # (student 93.9 -> 92.9 ms at 512 frames on an H100, docs/BENCHMARKS_HISTORY.md, fifth pass)
            o, o_bias = self.attn.unbiased(self.norm1(x))
            flat = lambda a: a.reshape(b, t, h * w, d)
            fold = self.mlp.fc2.bias is not None
            x, hidden = block_tail.block_tail(
                flat(x), flat(o), o_bias, (self.norm_t.scale[...], self.norm_t.bias[...]), self.tconv.kernel[...],
                self.tconv.bias[...], (self.norm2.scale[...], self.norm2.bias[...]),
                self.mlp.fc2.bias[...] if fold else jnp.zeros((d,), jnp.float32), self.norm_t.eps,
                tail_config, self.tail_kernel == "interpret", self.mesh)
            return (x + self.mlp(hidden, bias=not fold)).reshape(b, t, h, w, d)
        x = x + self.attn(self.norm1(x))
        x = x + self.tconv(self.norm_t(x))
        return x + self.mlp(self.norm2(x))


class Downsample(nnx.Module):
    """Depth-wise conv3d with kernel == stride (non-overlapping), initialised to average pooling."""

    def __init__(self, features: int, stride: tuple[int, int, int], *, rngs: nnx.Rngs):
        del rngs
        self.stride = tuple(stride)
        n = math.prod(stride)
        self.kernel = nnx.Param(jnp.full((*stride, features), 1.0 / n, jnp.float32), axes=(None, None, None, "embed"))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32), axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        # A sum of strided slices, accumulated in float32: one elementwise pass that XLA fuses. Written as an
        # einsum over a reshaped (b, t, st, h, sh, w, sw, d) view, XLA chose a transpose plus a reduction, and
        # in one H100 build a single strided transpose kernel 9x slower than the pass (docs/BENCHMARKS_HISTORY.md,
        # third pass).
        st, sh, sw = self.stride
        kernel = self.kernel[...]
        y = sum(x[:, i::st, j::sh, k::sw].astype(jnp.float32) * kernel[i, j, k]
                for i in range(st) for j in range(sh) for k in range(sw))
        return (y + self.bias[...]).astype(x.dtype)


class Stage(nnx.Module):
    def __init__(self, cfg: StudentConfig, num_blocks: int, stride, *, rngs: nnx.Rngs, dtype, attn_impl, mlp_kernel,
                 tail_kernel, mesh):
        self.num_blocks = num_blocks
        for j in range(num_blocks):
            setattr(self, f"block_{j}", Block(cfg, rngs=rngs, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel,
                                              tail_kernel=tail_kernel, mesh=mesh))
        self.down = None if tuple(stride) == (1, 1, 1) else Downsample(cfg.width, stride, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_blocks):
            x = getattr(self, f"block_{j}")(x)
        return x if self.down is None else self.down(x)


class LiteFrameStudent(nnx.Module):
    """Call on (B, T, H, W, 3) normalised frames -> (B, T'*H'*W', out_dim) tokens in (t, h, w) order.

    `mlp_kernel="pallas"` (inference on Hopper GPUs) fuses each MLP's fc1 and GELU (see `layers.Mlp`).
    `tail_kernel="pallas"` (GPUs; training and inference) runs each block's attention residual, LayerNorm_t,
    temporal convolution, residual and LayerNorm_2 as one kernel forward and one backward
    (`models/kernels/block_tail.py`); None follows `mlp_kernel`. `mesh`: the device mesh a sharded `jax.jit` runs the
    model on, so that each device runs the fused kernels on its own clips (`sharding.over_batch`).
    """

    def __init__(self, cfg: StudentConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attn_impl: str | None = None,
                 mlp_kernel: str = "xla", tail_kernel: str | None = None, mesh=None):
        if tail_kernel is None:
            tail_kernel = "pallas" if mlp_kernel == "pallas" else "xla"
        if tail_kernel not in block_tail.KERNELS:
            raise ValueError(f"unknown student tail kernel {tail_kernel!r}; choose one of {block_tail.KERNELS}")
        if tail_kernel == "pallas" and (problem := block_tail.device_problem()):
            raise ValueError(f"student tail kernel 'pallas' {problem}; use 'xla'")
        self.cfg, self.dtype = cfg, dtype
        self.inference_kernels = mlp_kernel == "pallas"
        t, h, w = cfg.input_grid
        cfg.output_grid  # validates the stage strides against the grid
        pt, ph, pw = cfg.patch_size
        d = cfg.width
        self.patch_kernel = layers.param(rngs, nnx.initializers.lecun_normal(), (pt, ph, pw, 3, d),
                                         (None, None, None, None, "embed"))
        self.patch_bias = layers.param(rngs, nnx.initializers.zeros, (d,), ("embed",))
        self.pos_spatial = layers.param(rngs, nnx.initializers.normal(0.02), (*cfg.table_grid, d),
                                        (None, None, "embed"))
        self.pos_temporal = layers.param(rngs, nnx.initializers.normal(0.02), (t, d), (None, "embed"))
        self.num_stages = len(cfg.stages)
        for i, (num_blocks, stride) in enumerate(cfg.stages):
            setattr(self, f"stage_{i}", Stage(cfg, num_blocks, stride, rngs=rngs, dtype=dtype, attn_impl=attn_impl,
                                              mlp_kernel=mlp_kernel, tail_kernel=tail_kernel, mesh=mesh))
        self.final_norm = layers.LayerNorm(d, rngs=rngs, eps=cfg.norm_eps)
        self.head = layers.Dense(d, cfg.out_dim, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)

    def embed(self, frames: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, t, h, w, c = frames.shape
        if (t, h, w, c) != (cfg.num_frames, cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"student expects frames of shape (B, {cfg.num_frames}, {cfg.image_size}, "
                             f"{cfg.image_size}, 3), got {frames.shape}")
        (pt, ph, pw), (gt, gh, gw) = cfg.patch_size, cfg.input_grid
        x = frames.reshape(b, gt, pt, gh, ph, gw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(b, gt, gh, gw, pt * ph * pw * c).astype(self.dtype)
        x = layers.patch_embed(x, self.patch_kernel[...].reshape(-1, cfg.width), self.dtype)
        # bias and both position tables as one (T, H, W, D) table: one add over the activations, not three
        spatial = resize.resize_table(self.pos_spatial[...], (gh, gw), "bicubic")
        table = self.patch_bias[...] + spatial[None] + self.pos_temporal[...][:, None, None]
        return x + table.astype(self.dtype)[None]

    def __call__(self, frames: jax.Array) -> jax.Array:
        x = self.embed(frames)
        if self.inference_kernels:
            # XLA would recompute the position-table add inside the first LayerNorm's reduction, a pass that
            # ran 1.7 ms at 512 frames on an H100 where the LayerNorm alone takes 0.6
            # (docs/BENCHMARKS_HISTORY.md, seventh pass); the barrier makes it read the embedding once it is written
            x = jax.lax.optimization_barrier(x)
        for i in range(self.num_stages):
            x = getattr(self, f"stage_{i}")(x)
        b, t, h, w, d = x.shape
        return self.head(self.final_norm(x)).reshape(b, t * h * w, -1)
