"""Shared Flax NNX layers: every parameter carries its logical axis names.

Parameters are created as `nnx.Param(value, axes=(...))`. The `axes` metadata is read by
`liteframe_jax.core.sharding` and mapped to mesh axes through one rule table, so layers never name mesh
axes themselves. Parameters live in float32; `dtype` is the compute dtype (bfloat16 on accelerators).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.core import sharding
from liteframe_jax.models.kernels import fused_mlp, tpu_attention

Initializer = Callable[..., jax.Array]


def gelu_exact(x: jax.Array) -> jax.Array:
    """GELU with the exact (erf) definition, x * Phi(x), at half the cost of XLA's erf on GPU.

    erfc(|x|/sqrt 2) comes from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) in float32, and the negative
    half uses it directly, so there is no cancellation: the result matches `jax.nn.gelu(approximate=False)`
    to ~7e-7 absolute. XLA's generic erf is a rational polynomial that made the InternViT MLP activation
    cost as much as the attention on an H100 (docs/BENCHMARKS_HISTORY.md, second pass); this one is
    bandwidth-bound.
    """
    return fused_mlp.gelu_f32(x.astype(jnp.float32)).astype(x.dtype)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # Hugging Face names (transformers.activations.ACT2FN) -> jax.
    "gelu": gelu_exact,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
    if len(shape) != len(axes):
        raise ValueError(f"parameter of shape {shape} given {len(axes)} axis names {axes}")
    return nnx.Param(init(rngs.params(), shape, jnp.float32), axes=tuple(axes))


class Dense(nnx.Module):
    """y = x @ kernel + bias, kernel of shape (in, out) with logical axes `axes`."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
                 rngs: nnx.Rngs, use_bias: bool = True, dtype=jnp.float32,
                 kernel_init: Initializer = nnx.initializers.xavier_uniform()):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), axes)
        self.bias = param(rngs, nnx.initializers.zeros, (out_features,), (axes[1],)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array, *, bias: bool = True) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if bias and self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def patch_embed(patches: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """patches (..., K) @ kernel (K, D) in `dtype`; on a GPU with K zero-padded to a multiple of 64 (exact).

    A 14x14x3 patch is 588 values: rows of 1,176 bytes in bfloat16, not 16-byte aligned, for which cuBLAS on
    an H100 falls back to an Ampere kernel plus a separate bias pass (docs/BENCHMARKS_HISTORY.md, third pass).
    The pad fuses into the patchify transpose that writes `patches` anyway. Elsewhere it is not done: a TPU
    tiles the contraction itself, and there the pad's gradient (a slice of the padded kernel's) fused with a
    sharded gradient reduction made the TPU compiler fail (BENCHMARKS.md, "TPU compile table": the micro-batch
    layout).
    """
    k = patches.shape[-1]
    if kernel.shape[0] != k:
        raise ValueError(f"patch embedding: patches have {k} values, the kernel expects {kernel.shape[0]}")
    pad = -k % 64 if jax.default_backend() == "gpu" else 0
    patches, kernel = patches.astype(dtype), kernel.astype(dtype)
    if pad:
        patches = jnp.pad(patches, [(0, 0)] * (patches.ndim - 1) + [(0, pad)])
        kernel = jnp.pad(kernel, ((0, pad), (0, 0)))
    return jnp.dot(patches, kernel)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 (as torch does for float32 inputs), returned in the input dtype."""

    def __init__(self, features: int, *, rngs: nnx.Rngs, eps: float = 1e-6, axis_name: str = "norm"):
        del rngs
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32), axes=(axis_name,))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32), axes=(axis_name,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm as in T5 / Qwen2 / InternViT: the variance in float32, scale applied after the cast back."""

    def __init__(self, features: int, *, rngs: nnx.Rngs, eps: float = 1e-6, axis_name: str = "norm"):
        del rngs
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32), axes=(axis_name,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def make_norm(kind: str, features: int, *, rngs: nnx.Rngs, eps: float) -> nnx.Module:
    if kind == "layer_norm":
        return LayerNorm(features, rngs=rngs, eps=eps)
    if kind == "rms_norm":
        return RMSNorm(features, rngs=rngs, eps=eps)
    raise ValueError(f"unsupported norm_type {kind!r}; supported: 'layer_norm', 'rms_norm'")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None,
              is_causal: bool = False, implementation: str | None = None, mesh=None) -> jax.Array:
    """Multi-head attention on (batch, length, heads, head_dim) through `jax.nn.dot_product_attention`.

    `implementation='cudnn'` selects the cuDNN flash kernel on GPU (bfloat16/float16 only); None lets XLA
    decide, which is what the CPU tests use. 'splash' (the TPU kernel of the LLM's causal attention) runs XLA's
    here, so that `kernels.attention=splash` means the LLM's; 'splash_tower' (`kernels.tower_attention=splash`)
    runs the same Pallas kernel (`models/kernels/tpu_attention.py`), its rows split over `mesh`'s batch axes.
    """
    if implementation == tpu_attention.TOWER_NAME:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return tpu_attention.attention(q, k, v, None, scale=scale, causal=is_causal, mesh=mesh)
    if implementation == tpu_attention.NAME:
        implementation = None
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=is_causal, implementation=implementation)


REMAT_POLICIES = {
    # what a rematerialised block keeps from its forward pass for the backward pass
    "none": None,  # no rematerialisation: keep everything
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input; recompute the rest
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs, recompute the rest
}


def check_remat(policy: str) -> str:
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; choose one of {sorted(REMAT_POLICIES)}")
    return policy


def self_attention(x: jax.Array, q: Dense, k: Dense, v: Dense, out: Dense, num_heads: int, *,
                   scale: float | None = None, implementation: str | None = None, mesh=None) -> jax.Array:
    """Unmasked multi-head self-attention over (batch, length, width) with q/k/v/out projections."""
    y, bias = self_attention_unbiased(x, q, k, v, out, num_heads, scale=scale, implementation=implementation,
                                      mesh=mesh)
    return y + bias.astype(y.dtype)


def self_attention_unbiased(x: jax.Array, q: Dense, k: Dense, v: Dense, out: Dense, num_heads: int, *,
                            scale: float | None = None, implementation: str | None = None,
                            mesh=None) -> tuple[jax.Array, jax.Array]:
    """`self_attention` as (output without its bias, the (width,) float32 bias), for a consumer that adds
    the bias inside its own kernel.

    The key and value biases are folded away, exactly: the key bias adds q . b_k to every logit of a row,
    which softmax ignores, and attention rows sum to one, so the value bias passes through unchanged and
    joins the output bias as b_v @ W_out. That saves two full passes over the activations per layer (the
    bias adds are separate kernels on GPU). Only valid without masks and without q/k normalisation.
    """
    b, n, d = x.shape
    split = lambda t: t.reshape(b, n, num_heads, -1)
    y = attention(split(q(x)), split(k(x, bias=False)), split(v(x, bias=False)), scale=scale,
                  implementation=implementation, mesh=mesh)
    y = out(y.reshape(b, n, -1), bias=False)
    bias = jnp.zeros((out.kernel.shape[1],), jnp.float32)
    if out.bias is not None:
        bias = bias + out.bias[...]
    if v.bias is not None:
        bias = bias + jnp.dot(v.bias[...], out.kernel[...])
    return y, bias


MLP_KERNELS = ("xla", "pallas")


class Mlp(nnx.Module):
    """fc1 -> activation -> fc2.

    `impl="pallas"` runs fc1 + GELU (exact, or its tanh form) as one Hopper kernel (`models/kernels/fused_mlp.py`) for
    inference on bfloat16; layers with fewer than `fused_mlp.MIN_ROWS` tokens, or widths that do not tile
    (`fused_mlp.tiles`; any number of tokens does), keep the XLA path, which computes the same function. Asking
    for it on another device or dtype is an error. `mesh`: the device mesh a sharded `jax.jit` runs the model
    on; each device then runs the kernel on its own examples (`sharding.over_batch`).
    """

    def __init__(self, features: int, hidden: int, *, act: str, rngs: nnx.Rngs, dtype=jnp.float32,
                 impl: str = "xla", mesh=None):
        self.fc1 = Dense(features, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(hidden, features, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.act = act
        if impl not in MLP_KERNELS:
            raise ValueError(f"unknown MLP kernel {impl!r}; choose one of {MLP_KERNELS}")
        if impl == "pallas":
            problem = fused_mlp.device_problem(dtype) or (
                None if act in fused_mlp.EPILOGUES else
                f"implements the GELUs {sorted(fused_mlp.EPILOGUES)} only, not {act!r}")
            if problem:
                raise ValueError(f"MLP kernel 'pallas' {problem}; use 'xla'")
        self.impl, self.mesh = impl, mesh

    def _fused_fc1(self, x: jax.Array) -> jax.Array | None:
        k, n = x.shape[-1], self.fc1.kernel.shape[1]
        rows = math.prod(x.shape[:-1]) // sharding.batch_split(self.mesh)  # what each device's kernel gets
        config = fused_mlp.config_for(rows)
        if rows < fused_mlp.MIN_ROWS or not fused_mlp.tiles(k, n, config):
            return None
        form, dtype = fused_mlp.EPILOGUES[self.act], self.fc1.dtype

        def local(x, w, b):
            y = fused_mlp.dense_gelu(x.reshape(-1, k).astype(dtype), w, b, config, form)
            return y.reshape(*x.shape[:-1], n)

        return sharding.over_batch(local, self.mesh, (x,), (self.fc1.kernel[...], self.fc1.bias[...]),
                                   what="fused MLP")

    def __call__(self, x: jax.Array, *, bias: bool = True) -> jax.Array:
        """`bias=False` leaves out fc2's bias (a caller that adds it elsewhere, `models/kernels/block_tail.py`)."""
        h = self._fused_fc1(x) if self.impl == "pallas" else None
        if h is None:
            h = activation(self.act)(self.fc1(x))
        return self.fc2(h, bias=bias)
