"""Shared layers: the exact GELU used by every "gelu" model must equal the erf definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liteframe_jax.models import layers


def test_gelu_exact_matches_erf_definition():
    x = jnp.linspace(-12.0, 12.0, 200_001, dtype=jnp.float32)
    ref = np.asarray(jax.nn.gelu(x.astype(jnp.float32), approximate=False), np.float64)
    got = np.asarray(layers.gelu_exact(x), np.float64)
    assert np.max(np.abs(got - ref)) < 2e-6
    # the tanh approximation is 4.7e-4 away: the test tells the two apart
    assert np.max(np.abs(np.asarray(jax.nn.gelu(x, approximate=True)) - ref)) > 1e-4
    assert layers.activation("gelu") is layers.gelu_exact


def test_kernel_epilogue_gelu_form_matches_erf_definition():
    # the form the Pallas kernel evaluates (rsqrt^2 reciprocal, exp2); on the GPU its rsqrt/exp2 are the MUFU
    # approximations, checked against XLA by tests/test_fused_mlp.py
    from liteframe_jax.models.kernels import fused_mlp
    x = jnp.linspace(-12.0, 12.0, 200_001, dtype=jnp.float32)
    ref = np.asarray(jax.nn.gelu(x, approximate=False), np.float64)
    got = np.asarray(fused_mlp.gelu_f32(x, fast=True), np.float64)
    assert np.max(np.abs(got - ref)) < 2e-6


def test_gelu_tanh_matches_torch_and_the_kernel_epilogue_form():
    # 'gelu_pytorch_tanh' (and HF's 'gelu_new' / 'gelu_fast', the same function) and the fused MLP kernel's
    # tanh epilogue (`fused_mlp.epilogue_activation("tanh", ...)`) against torch, float32
    import torch

    from liteframe_jax.models.kernels import fused_mlp
    x = np.linspace(-12.0, 12.0, 200_001, dtype=np.float32)
    ref = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    for name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        np.testing.assert_allclose(np.asarray(layers.activation(name)(jnp.asarray(x))), ref, atol=2e-6)
    np.testing.assert_allclose(np.asarray(fused_mlp.epilogue_activation("tanh", True)(jnp.asarray(x))), ref, atol=2e-6)
    assert np.max(np.abs(ref - np.asarray(layers.gelu_exact(jnp.asarray(x))))) > 1e-4  # not the erf form


def test_gelu_exact_keeps_dtype_and_gradient():
    x = jnp.linspace(-4.0, 4.0, 101, dtype=jnp.bfloat16)
    assert layers.gelu_exact(x).dtype == jnp.bfloat16
    xs = jnp.linspace(-4.0, 4.0, 101, dtype=jnp.float32)
    g = jax.vmap(jax.grad(layers.gelu_exact))(xs)
    g_ref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(xs)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-5)


def test_self_attention_folds_key_and_value_bias_exactly():
    from flax import nnx
    rngs = nnx.Rngs(0)
    d, heads = 16, 4
    q, k, v, out = (layers.Dense(d, d, axes=(None, None), rngs=rngs) for _ in range(4))
    key = jax.random.key(3)
    for i, dense in enumerate((q, k, v, out)):  # non-zero biases, or the folding is not exercised
        dense.bias[...] = jax.random.normal(jax.random.fold_in(key, i), (d,))
    x = jax.random.normal(jax.random.key(1), (2, 7, d))
    split = lambda t: t.reshape(2, 7, heads, d // heads)
    want = out(layers.attention(split(q(x)), split(k(x)), split(v(x))).reshape(2, 7, d))
    got = layers.self_attention(x, q, k, v, out, heads)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_patch_embed_pads_to_aligned_rows_exactly(backend, monkeypatch):
    """On a GPU the 588 values of a patch are padded to 640 (exact); elsewhere they are not."""
    monkeypatch.setattr(layers.jax, "default_backend", lambda: backend)
    patches = jax.random.normal(jax.random.key(0), (3, 5, 588))  # 14x14x3: not a multiple of 64
    kernel = jax.random.normal(jax.random.key(1), (588, 32))
    got = layers.patch_embed(patches, kernel, jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(patches @ kernel), rtol=1e-5, atol=1e-4)
    text = str(jax.make_jaxpr(lambda p, k: layers.patch_embed(p, k, jnp.float32))(patches, kernel))
    assert ("640" in text) == (backend == "gpu")
    with np.testing.assert_raises_regex(ValueError, "588 values, the kernel expects 600"):
        layers.patch_embed(patches, jnp.zeros((600, 32)), jnp.float32)
