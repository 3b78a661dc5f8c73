"""InternViT (the InternVL vision tower) and the InternVL3 pixel-unshuffle + MLP projector head.

Mirrors `transformers.InternVLVisionModel` and `InternVLModel.get_image_features` on NHWC pixels. The
teacher in CTD is frozen and run in inference mode, so dropout settings of a checkpoint have no effect.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.models import layers, resize


@dataclasses.dataclass(frozen=True)
class InternVitConfig:
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    attention_bias: bool = True
    use_qk_norm: bool = False
    use_absolute_position_embeddings: bool = True
    layer_scale_init_value: float = 0.1
    use_mean_pooling: bool = True  # True: no final LayerNorm (HF semantics)
    initializer_range: float = 0.02
    # Side of the learned position table; 0: the input's grid. Another value runs the tower at `image_size`
    # with the table resampled bicubically, as transformers' `interpolate_pos_encoding` does.
    position_grid: int = 0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def table_grid(self) -> int:
        return self.position_grid or self.grid

    def at_image_size(self, image_size: int) -> "InternVitConfig":
        """The same tower at another input size: its position table kept at the grid it was trained at and
        resampled to the new one."""
        if image_size % self.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {self.patch_size}")
        return dataclasses.replace(self, image_size=int(image_size), position_grid=self.table_grid)

    @classmethod
    def preset(cls, name: str, **changes) -> "InternVitConfig":
        """A named size (VIT_PRESETS), with `changes` on top."""
        if name not in VIT_PRESETS:
            raise ValueError(f"unknown InternViT preset {name!r}; known: {sorted(VIT_PRESETS)}")
        return dataclasses.replace(VIT_PRESETS[name], **changes)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class InternVLHeadConfig:
    """Pixel-unshuffle by `downsample_ratio` then LayerNorm -> Linear -> act -> Linear (InternVL3 projector)."""

    downsample_ratio: float = 0.5
    out_features: int = 3584
    act: str = "gelu"

    @property
    def factor(self) -> int:
        return int(round(1 / self.downsample_ratio))


VIT_PRESETS = {
    # the benches' `--small` tower: 56 px frames, a 4x4 grid of 14 px patches, two layers of width 64
    "tiny": InternVitConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, image_size=56,
                            patch_size=14),
    "demo": InternVitConfig(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256, image_size=64,
                            patch_size=8),
    # InternVL3-8B's vision tower
    "internvit-300m-448": InternVitConfig(),
}


class Attention(nnx.Module):
    def __init__(self, cfg: InternVitConfig, *, rngs: nnx.Rngs, dtype, attn_impl, mesh=None):
        d = cfg.hidden_size
        init = nnx.initializers.normal(cfg.initializer_range)
        self.q = layers.Dense(d, d, axes=("embed", "heads"), use_bias=cfg.attention_bias, rngs=rngs, dtype=dtype,
                              kernel_init=init)
        self.k = layers.Dense(d, d, axes=("embed", "heads"), use_bias=cfg.attention_bias, rngs=rngs, dtype=dtype,
                              kernel_init=init)
        self.v = layers.Dense(d, d, axes=("embed", "heads"), use_bias=cfg.attention_bias, rngs=rngs, dtype=dtype,
                              kernel_init=init)
        self.out = layers.Dense(d, d, axes=("heads", "embed"), rngs=rngs, dtype=dtype, kernel_init=init)
        # InternViT normalises q and k over the full width (all heads together), before the head split.
        self.q_norm = layers.RMSNorm(d, rngs=rngs, eps=1e-6) if cfg.use_qk_norm else None
        self.k_norm = layers.RMSNorm(d, rngs=rngs, eps=1e-6) if cfg.use_qk_norm else None
        self.num_heads, self.head_dim, self.attn_impl, self.mesh = cfg.num_heads, cfg.head_dim, attn_impl, mesh

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        if self.q_norm is None:
            return layers.self_attention(x, self.q, self.k, self.v, self.out, self.num_heads,
                                         scale=self.head_dim ** -0.5, implementation=self.attn_impl, mesh=self.mesh)
        q, k, v = self.q(x), self.k(x), self.v(x)
        q, k = self.q_norm(q), self.k_norm(k)
        split = lambda t: t.reshape(b, n, self.num_heads, self.head_dim)
        y = layers.attention(split(q), split(k), split(v), scale=self.head_dim ** -0.5,
                             implementation=self.attn_impl, mesh=self.mesh)
        return self.out(y.reshape(b, n, -1))


class Block(nnx.Module):
    def __init__(self, cfg: InternVitConfig, *, rngs: nnx.Rngs, dtype, attn_impl, mlp_kernel: str = "xla", mesh=None):
        d = cfg.hidden_size
        self.norm1 = layers.make_norm(cfg.norm_type, d, rngs=rngs, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, attn_impl=attn_impl, mesh=mesh)
        self.ls1 = nnx.Param(jnp.full((d,), cfg.layer_scale_init_value, jnp.float32), axes=("norm",))
        self.norm2 = layers.make_norm(cfg.norm_type, d, rngs=rngs, eps=cfg.layer_norm_eps)
        self.mlp = layers.Mlp(d, cfg.intermediate_size, act=cfg.hidden_act, rngs=rngs, dtype=dtype, impl=mlp_kernel,
                              mesh=mesh)
        self.ls2 = nnx.Param(jnp.full((d,), cfg.layer_scale_init_value, jnp.float32), axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.ls1[...].astype(x.dtype) * self.attn(self.norm1(x))
        return x + self.ls2[...].astype(x.dtype) * self.mlp(self.norm2(x))


class InternViT(nnx.Module):
    """Call on NHWC float pixels (already normalised) -> last_hidden_state (B, 1 + grid**2, width), CLS first.

    `mlp_kernel="pallas"` runs each MLP's fc1 + GELU as one Hopper kernel (`layers.Mlp`), for inference: a
    frozen teacher, the InternVL3 baseline in `bench latency`. `mesh`: the device mesh a sharded `jax.jit`
    runs the model on, so that each device runs the kernel on its own frames.
    """

    def __init__(self, cfg: InternVitConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attn_impl: str | None = None,
                 mlp_kernel: str = "xla", mesh=None):
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not divisible by patch_size {cfg.patch_size}")
        self.cfg, self.dtype = cfg, dtype
        d, p = cfg.hidden_size, cfg.patch_size
        init = nnx.initializers.normal(cfg.initializer_range)
        # Conv kernel in HWIO layout (big_vision's `embedding`), applied as a patchify + matmul.
        self.patch_kernel = layers.param(rngs, init, (p, p, cfg.num_channels, d), (None, None, None, "embed"))
        self.patch_bias = layers.param(rngs, nnx.initializers.zeros, (d,), ("embed",))
        self.cls_token = layers.param(rngs, init, (1, 1, d), (None, None, "embed"))
        self.pos_embedding = (layers.param(rngs, init, (1, cfg.table_grid ** 2 + 1, d), (None, None, "embed"))
                              if cfg.use_absolute_position_embeddings else None)
        self.num_layers = cfg.num_layers
        for i in range(cfg.num_layers):
            setattr(self, f"block_{i}", Block(cfg, rngs=rngs, dtype=dtype, attn_impl=attn_impl,
                                              mlp_kernel=mlp_kernel, mesh=mesh))
        self.final_norm = (None if cfg.use_mean_pooling
                           else layers.LayerNorm(d, rngs=rngs, eps=cfg.layer_norm_eps))

    def embed(self, pixels: jax.Array) -> jax.Array:
        b, h, w, c = pixels.shape
        cfg = self.cfg
        if (h, w) != (cfg.image_size, cfg.image_size) or c != cfg.num_channels:
            raise ValueError(f"InternViT expects pixels of shape (B, {cfg.image_size}, {cfg.image_size}, "
                             f"{cfg.num_channels}), got {pixels.shape}")
        p, g = cfg.patch_size, cfg.grid
        patches = pixels.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)
        kernel = self.patch_kernel[...].reshape(p * p * c, -1)
        x = layers.patch_embed(patches, kernel, self.dtype) + self.patch_bias[...].astype(self.dtype)
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        if self.pos_embedding is not None:
            table = self.pos_embedding[...]
            if cfg.table_grid != g:  # the CLS position stays; the patch positions are resampled
                t = cfg.table_grid
                patches = resize.resize_table(table[0, 1:].reshape(t, t, -1), (g, g), "bicubic")
                table = jnp.concatenate([table[:, :1], patches.reshape(1, g * g, -1)], axis=1)
            x = x + table.astype(self.dtype)
        return x

    def __call__(self, pixels: jax.Array, *, num_layers: int | None = None) -> jax.Array:
        """`num_layers` < cfg.num_layers returns that layer's hidden state (HF `hidden_states[num_layers]`)."""
        x = self.embed(pixels)
        for i in range(self.num_layers if num_layers is None else num_layers):
            x = getattr(self, f"block_{i}")(x)
        if num_layers is None and self.final_norm is not None:
            x = self.final_norm(x)
        return x


def pixel_unshuffle(grid: jax.Array, factor: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/f, W/f, C*f*f) with InternVL's channel order (its `pixel_shuffle(x, 1/f)`)."""
    b, h, w, c = grid.shape
    if h % factor or w % factor:
        raise ValueError(f"token grid {h}x{w} is not divisible by the pixel-unshuffle factor {factor}")
    # HF treats axis 1 as "width" and axis 2 as "height": fold axis 2 first, then axis 1.
    x = grid.reshape(b, h, w // factor, c * factor)
    x = x.transpose(0, 2, 1, 3).reshape(b, w // factor, h // factor, c * factor * factor)
    return x.transpose(0, 2, 1, 3)


class InternVLProjector(nnx.Module):
    def __init__(self, in_features: int, cfg: InternVLHeadConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm = layers.LayerNorm(in_features, rngs=rngs, eps=1e-5)
        self.fc1 = layers.Dense(in_features, cfg.out_features, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = layers.Dense(cfg.out_features, cfg.out_features, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.act = cfg.act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(layers.activation(self.act)(self.fc1(self.norm(x))))


class InternVisionTower(nnx.Module):
    """InternViT plus, optionally, InternVL3's pixel-unshuffle + projector.

    `__call__` gives the ViT's last_hidden_state (CLS first). `features` gives the patch-token grid
    (B, h, w, C) at the chosen `output`: 'vit' (the ViT grid), 'unshuffle' (after pixel-unshuffle) or
    'projector' (InternVL3's visual tokens, in the LLM's width).
    """

    def __init__(self, vit_cfg: InternVitConfig, head_cfg: InternVLHeadConfig | None = None, *,
                 rngs: nnx.Rngs, feature_layer: int = -1, dtype=jnp.float32, attn_impl: str | None = None,
                 mlp_kernel: str = "xla", mesh=None):
        self.vit = InternViT(vit_cfg, rngs=rngs, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh)
        self.head_cfg = head_cfg
        self.projector = (None if head_cfg is None else
                          InternVLProjector(vit_cfg.hidden_size * head_cfg.factor ** 2, head_cfg, rngs=rngs, dtype=dtype))
        if not -vit_cfg.num_layers - 1 <= feature_layer <= vit_cfg.num_layers:
            raise ValueError(f"vision_feature_layer {feature_layer} is outside the {vit_cfg.num_layers} layers")
        self.feature_layer = feature_layer

    def __call__(self, pixels: jax.Array) -> jax.Array:
        return self.vit(pixels)

    @property
    def image_size(self) -> int:
        return self.vit.cfg.image_size

    def grid_shape(self, output: str) -> tuple[int, int, int]:
        """(h, w, channels) of `features(..., output)` for one frame."""
        g, d = self.vit.cfg.grid, self.vit.cfg.hidden_size
        if output == "vit":
            return g, g, d
        if self.head_cfg is None:
            raise ValueError(f"teacher output {output!r} needs the InternVL3 head; this teacher has none "
                             "(load a whole `internvl` checkpoint or set teacher.head)")
        f = self.head_cfg.factor
        if output == "unshuffle":
            return g // f, g // f, d * f * f
        if output == "projector":
            return g // f, g // f, self.head_cfg.out_features
        raise ValueError(f"unknown teacher output {output!r}; choose 'vit', 'unshuffle' or 'projector'")

    def features(self, pixels: jax.Array, output: str = "projector") -> jax.Array:
        self.grid_shape(output)  # validates `output` against the head
        if self.feature_layer == -1:
            tokens = self.vit(pixels)
        else:  # HF hidden_states[k]: k layers applied (negative k counts from the end), no final norm.
            n = self.feature_layer % (self.vit.num_layers + 1)
            tokens = self.vit(pixels, num_layers=n)
        b, g = tokens.shape[0], self.vit.cfg.grid
        grid = tokens[:, 1:].reshape(b, g, g, -1)
        if output == "vit":
            return grid
        grid = pixel_unshuffle(grid, self.head_cfg.factor)
        return grid if output == "unshuffle" else self.projector(grid)
