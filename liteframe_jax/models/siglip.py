"""SigLIP and SigLIP2 vision towers (fixed resolution), as CTD teachers.

Mirrors `transformers.SiglipVisionModel` and `Siglip2VisionModel` on NHWC pixels: patch embedding, a learned
position table (no CLS token), pre-norm blocks, a final LayerNorm (`post_layernorm`), and optionally the
attention-pooling head (`pooled`). SigLIP2's NaFlex inputs (patches of any aspect ratio, padded and masked)
reduce here to one square grid per image: its patch vectors are the same pixels in (row, column, channel)
order, which is what the patch kernel's (p, p, c, d) layout reads. A grid other than the table's resamples
the table as the reference does (`models/resize.py`): bicubic for SigLIP, antialiased bilinear for SigLIP2.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.models import layers, resize


@dataclasses.dataclass(frozen=True)
class SiglipVitConfig:
    hidden_size: int = 1152
    num_layers: int = 27
    num_heads: int = 16
    intermediate_size: int = 4304
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    image_size: int = 384  # the input this tower runs at; pixels past the last whole patch are not read
    patch_size: int = 14
    num_channels: int = 3
    position_grid: int = 27  # side of the learned position table (27x27 for SigLIP-So400m-384)
    position_resize: str = "bicubic"  # 'bicubic' (SigLIP) | 'bilinear_antialias' (SigLIP2)
    use_head: bool = False
    initializer_range: float = 0.02

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **changes) -> "SiglipVitConfig":
        if name not in SIGLIP_PRESETS:
            raise ValueError(f"unknown SigLIP preset {name!r}; known: {sorted(SIGLIP_PRESETS)}")
        return dataclasses.replace(SIGLIP_PRESETS[name], **changes)


SIGLIP_PRESETS = {
    # the benches' `--small` tower: `demo` on 56 px frames of 14 px patches, two layers
    "tiny": SiglipVitConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, image_size=56,
                            patch_size=14, position_grid=4),
    "demo": SiglipVitConfig(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256, image_size=64,
                            patch_size=8, position_grid=8),
    # google/siglip-so400m-patch14-384 (and siglip2-so400m-patch14-384): 27x27 patches of 14 px, 729 tokens.
    "so400m-patch14-384": SiglipVitConfig(),
}


class Block(nnx.Module):
    def __init__(self, cfg: SiglipVitConfig, *, rngs: nnx.Rngs, dtype, attn_impl, mlp_kernel: str = "xla", mesh=None):
        d = cfg.hidden_size
        init = nnx.initializers.normal(cfg.initializer_range)
        self.norm1 = layers.LayerNorm(d, rngs=rngs, eps=cfg.layer_norm_eps)
        self.q, self.k, self.v, self.out = (
            layers.Dense(d, d, axes=axes, rngs=rngs, dtype=dtype, kernel_init=init)
            for axes in (("embed", "heads"),) * 3 + (("heads", "embed"),))
        self.norm2 = layers.LayerNorm(d, rngs=rngs, eps=cfg.layer_norm_eps)
        self.mlp = layers.Mlp(d, cfg.intermediate_size, act=cfg.hidden_act, rngs=rngs, dtype=dtype, impl=mlp_kernel,
                              mesh=mesh)
        self.num_heads, self.scale, self.attn_impl = cfg.num_heads, cfg.head_dim ** -0.5, attn_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + layers.self_attention(self.norm1(x), self.q, self.k, self.v, self.out, self.num_heads,
                                      scale=self.scale, implementation=self.attn_impl)
        return x + self.mlp(self.norm2(x))


class PoolingHead(nnx.Module):
    """SigLIP's multi-head attention pooling: one learned probe attends over the tokens, then a residual MLP."""

    def __init__(self, cfg: SiglipVitConfig, *, rngs: nnx.Rngs, dtype):
        d = cfg.hidden_size
        self.probe = layers.param(rngs, nnx.initializers.normal(1.0), (1, 1, d), (None, None, "embed"))
        self.q, self.k, self.v, self.out = (
            layers.Dense(d, d, axes=axes, rngs=rngs, dtype=dtype)
            for axes in (("embed", "heads"),) * 3 + (("heads", "embed"),))
        self.norm = layers.LayerNorm(d, rngs=rngs, eps=cfg.layer_norm_eps)
        self.mlp = layers.Mlp(d, cfg.intermediate_size, act=cfg.hidden_act, rngs=rngs, dtype=dtype)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def __call__(self, tokens: jax.Array) -> jax.Array:
        b, n, _ = tokens.shape
        probe = jnp.broadcast_to(self.probe[...].astype(tokens.dtype), (b, 1, tokens.shape[-1]))
        split = lambda t, length: t.reshape(b, length, self.num_heads, self.head_dim)
        y = layers.attention(split(self.q(probe), 1), split(self.k(tokens), n), split(self.v(tokens), n),
                             scale=self.head_dim ** -0.5)
        y = self.out(y.reshape(b, 1, -1))
        return (y + self.mlp(self.norm(y)))[:, 0]


class SiglipTower(nnx.Module):
    """Call on NHWC float pixels (already normalised) -> last_hidden_state (B, grid**2, width), final norm applied.

    `features(pixels, 'vit')` gives the token grid (B, g, g, width) that CTD compresses; with a
    `feature_layer` other than -1 it is that layer's hidden state (HF `hidden_states[k]`, no final norm), as
    LLaVA-style models read SigLIP. `pooled(pixels)` is the attention-pooling head's embedding.
    """

    def __init__(self, cfg: SiglipVitConfig, *, rngs: nnx.Rngs, feature_layer: int = -1, dtype=jnp.float32,
                 attn_impl: str | None = None, mlp_kernel: str = "xla", mesh=None):
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        if cfg.image_size < cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is smaller than one patch ({cfg.patch_size})")
        if cfg.position_resize not in resize.METHODS:
            raise ValueError(f"unknown position_resize {cfg.position_resize!r}; choose one of {resize.METHODS}")
        if not -cfg.num_layers - 1 <= feature_layer <= cfg.num_layers:
            raise ValueError(f"vision_feature_layer {feature_layer} is outside the {cfg.num_layers} layers")
        self.cfg, self.dtype, self.feature_layer = cfg, dtype, feature_layer
        d, p = cfg.hidden_size, cfg.patch_size
        init = nnx.initializers.normal(cfg.initializer_range)
        self.patch_kernel = layers.param(rngs, init, (p, p, cfg.num_channels, d), (None, None, None, "embed"))
        self.patch_bias = layers.param(rngs, nnx.initializers.zeros, (d,), ("embed",))
        self.pos_embedding = layers.param(rngs, init, (cfg.position_grid, cfg.position_grid, d), (None, None, "embed"))
        self.num_layers = cfg.num_layers
        for i in range(cfg.num_layers):
            setattr(self, f"block_{i}", Block(cfg, rngs=rngs, dtype=dtype, attn_impl=attn_impl,
                                              mlp_kernel=mlp_kernel, mesh=mesh))
        self.final_norm = layers.LayerNorm(d, rngs=rngs, eps=cfg.layer_norm_eps)
        self.head = PoolingHead(cfg, rngs=rngs, dtype=dtype) if cfg.use_head else None

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def embed(self, pixels: jax.Array) -> jax.Array:
        b, h, w, c = pixels.shape
        cfg = self.cfg
        if (h, w) != (cfg.image_size, cfg.image_size) or c != cfg.num_channels:
            raise ValueError(f"SigLIP expects pixels of shape (B, {cfg.image_size}, {cfg.image_size}, "
                             f"{cfg.num_channels}), got {pixels.shape}")
        p, g = cfg.patch_size, cfg.grid
        # a 'valid' strided convolution: pixels past the last whole patch are not read (384 px at 14: 27 patches)
        pixels = pixels[:, :g * p, :g * p]
        patches = pixels.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)
        x = layers.patch_embed(patches, self.patch_kernel[...].reshape(p * p * c, -1), self.dtype)
        x = x + self.patch_bias[...].astype(self.dtype)
        table = resize.resize_table(self.pos_embedding[...], (g, g), cfg.position_resize)
        return x + table.reshape(1, g * g, -1).astype(self.dtype)

    def _run(self, pixels: jax.Array, num_layers: int) -> jax.Array:
        x = self.embed(pixels)
        for i in range(num_layers):
            x = getattr(self, f"block_{i}")(x)
        return x

    def __call__(self, pixels: jax.Array) -> jax.Array:
        return self.final_norm(self._run(pixels, self.num_layers))

    def pooled(self, pixels: jax.Array) -> jax.Array:
        if self.head is None:
            raise ValueError("this SigLIP tower has no attention-pooling head (vision_use_head is false)")
        return self.head(self(pixels))

    def grid_shape(self, output: str) -> tuple[int, int, int]:
        if output != "vit":
            raise ValueError(f"teacher output {output!r} is not available from a SigLIP tower, which has no "
                             "projector: use teacher.output='vit'")
        return self.cfg.grid, self.cfg.grid, self.cfg.hidden_size

    def features(self, pixels: jax.Array, output: str = "vit") -> jax.Array:
        self.grid_shape(output)
        if self.feature_layer == -1:
            tokens = self(pixels)
        else:
            tokens = self._run(pixels, self.feature_layer % (self.num_layers + 1))
        g = self.cfg.grid
        return tokens.reshape(tokens.shape[0], g, g, -1)
