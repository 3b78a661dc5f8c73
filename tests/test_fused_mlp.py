"""The fused fc1 + GELU Hopper kernel (`models/kernels/fused_mlp.py`) and the compiled student block tail
(`models/kernels/block_tail.py`): against XLA on a Hopper GPU, and their refusals.

The GPU tests run where an H100/H200 is present and JAX may use it (`JAX_PLATFORMS=cuda python -m pytest
tests/test_fused_mlp.py`: conftest defaults to the CPU); elsewhere only the refusal runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from liteframe_jax.core import sharding
from liteframe_jax.models import layers
from liteframe_jax.models.kernels import fused_mlp
from liteframe_jax.models.student import LiteFrameStudent, StudentConfig

hopper = pytest.mark.skipif(fused_mlp.device_problem(jnp.bfloat16) is not None,
                            reason="needs a Hopper GPU for the Mosaic GPU kernel")


def test_pallas_mlp_refused_where_it_cannot_run():
    if fused_mlp.device_problem(jnp.bfloat16) is None:
        with pytest.raises(ValueError, match="implements the GELUs"):
            layers.Mlp(64, 256, act="silu", rngs=nnx.Rngs(0), dtype=jnp.bfloat16, impl="pallas")
    else:
        with pytest.raises(ValueError, match="needs"):
            layers.Mlp(64, 256, act="gelu", rngs=nnx.Rngs(0), dtype=jnp.bfloat16, impl="pallas")
    with pytest.raises(ValueError, match="unknown MLP kernel"):
        layers.Mlp(64, 256, act="gelu", rngs=nnx.Rngs(0), impl="triton")


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (the CPU tests fake 8; one GPU has 1)")
def test_fused_mlp_on_a_mesh_runs_the_kernel_on_each_devices_examples(monkeypatch):
    # The Mosaic kernel needs a Hopper GPU. A stand-in with its signature records the rows it is handed: under
    # a sharded jit each device must get its own examples (a bare custom call would get all of them), and the
    # result must equal the XLA path's.
    seen = []

    def stand_in(x, w, b, config, gelu):
        seen.append(x.shape)
        return fused_mlp._reference(x, w.astype(x.dtype), b, gelu)

    monkeypatch.setattr(fused_mlp, "device_problem", lambda dtype: None)
    monkeypatch.setattr(fused_mlp, "dense_gelu", stand_in)
    monkeypatch.setattr(fused_mlp, "MIN_ROWS", 200)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=1, num_devices=4))
    mlp = layers.Mlp(128, 512, act="gelu", rngs=nnx.Rngs(0), impl="pallas", mesh=mesh)
    x = jax.random.normal(jax.random.key(0), (8, 100, 128))
    got = jax.jit(lambda m, x: m(x))(mlp, jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp")))))
    assert seen == [(200, 128)]  # 8 examples x 100 tokens over 4 devices
    mlp.impl = "xla"
    np.testing.assert_allclose(np.asarray(got), np.asarray(mlp(x)), rtol=1e-5, atol=1e-6)
    mlp.impl = "pallas"
    with pytest.raises(ValueError, match="fused MLP: a batch of 10 does not split over the 4 devices"):
        mlp(jnp.concatenate([x, x[:2]]))


CONFIGS = {"default": fused_mlp.TileConfig(), "large_layers": fused_mlp.LARGE_LAYER_CONFIG,
           "ieee_math_no_prefetch": fused_mlp.TileConfig(approx_math=False, prefetch_across_tiles=False)}


@hopper
@pytest.mark.parametrize("gelu", ["exact", "tanh"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("m,k,n", [(256, 128, 512), (8192, 768, 3072), (1000, 128, 512), (8200, 768, 3072)])
def test_dense_gelu_matches_xla(m, k, n, config, gelu):
    # (8192, 768, 3072) has enough tiles for the producer to prefetch across tiles; (256, 128, 512) does not;
    # 1,000 and 8,200 rows end in a partial row tile
    x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
    w = (jax.random.normal(jax.random.key(1), (k, n)) * k ** -0.5).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (n,)) * 0.1
    want = jax.nn.gelu(jnp.dot(x, w, preferred_element_type=jnp.float32) + b, approximate=gelu == "tanh")
    got = fused_mlp.dense_gelu(x, w, b, CONFIGS[config], gelu).astype(jnp.float32)
    # within one bfloat16 step of the output (relative 2^-7)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2 ** -7, atol=2 ** -10)
    if gelu == "tanh":  # the two forms differ by more than the tolerance: the test tells them apart
        other = jax.nn.gelu(jnp.dot(x, w, preferred_element_type=jnp.float32) + b, approximate=False)
        assert np.abs(np.asarray(got) - np.asarray(other)).max() > 2 ** -10


@hopper
def test_dense_gelu_gradient_is_the_reference_gradient():
    x = jax.random.normal(jax.random.key(0), (256, 128), jnp.bfloat16)
    w = (jax.random.normal(jax.random.key(1), (128, 512)) * 0.09).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (512,)) * 0.1
    loss = lambda f: lambda x, w, b: jnp.sum(f(x, w, b).astype(jnp.float32) ** 2)
    got = jax.grad(loss(fused_mlp.dense_gelu), argnums=(0, 1, 2))(x, w, b)
    want = jax.grad(loss(fused_mlp._reference), argnums=(0, 1, 2))(x, w, b)
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=0.05, atol=0.05)


@hopper
@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
def test_student_with_the_fused_mlp_matches_xla(act):
    cfg = StudentConfig(image_size=224, num_frames=8, patch_size=(1, 14, 14), width=128, num_heads=2, mlp_dim=512,
                        stages=((2, (2, 2, 2)), (1, (1, 1, 1))), out_dim=64, act=act)
    frames = jax.random.normal(jax.random.key(0), (32, 8, 224, 224, 3), jnp.bfloat16)  # 65,536 stage-0 tokens
    _assert_fused_matches_xla(lambda impl: LiteFrameStudent(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                                                            attn_impl="cudnn", mlp_kernel=impl), frames)


def _assert_fused_matches_xla(build, x):
    """The model `build(mlp_kernel)` gives the same output with the fused MLP as with XLA's, on average (the
    kernel rounds the GELU's float32 input once, not twice)."""
    out = {impl: np.asarray(jax.jit(lambda m, x: m(x))(build(impl), x), np.float32) for impl in ("xla", "pallas")}
    assert np.abs(out["pallas"] - out["xla"]).mean() < 0.02 * np.abs(out["xla"]).mean()


@hopper
def test_mlp_rows_that_end_in_a_partial_tile():
    # 65,600 rows = 64 frames x 1,025 InternViT tokens: the kernel's last 128-row tile is half past the end
    mlp = layers.Mlp(128, 512, act="gelu", rngs=nnx.Rngs(0), dtype=jnp.bfloat16, impl="pallas")
    x = jax.random.normal(jax.random.key(0), (64, 1025, 128), jnp.bfloat16)
    fused = jax.jit(lambda m, x: m(x))
    jaxpr = str(jax.make_jaxpr(lambda x: mlp(x))(x))
    assert "pallas_call" in jaxpr or "custom_vjp_call" in jaxpr  # the kernel's path, not XLA's (it has neither)
    got = np.asarray(fused(mlp, x), np.float32)
    mlp.impl = "xla"
    want = np.asarray(fused(mlp, x), np.float32)
    assert got.shape == want.shape == (64, 1025, 128)
    # bfloat16 rounding differs (the kernel applies GELU to the float32 accumulator): compare on average,
    # over all rows and over the 64 rows of the partial tile alone
    for rows in (slice(None), slice(-64, None)):
        g, w = got.reshape(-1, 128)[rows], want.reshape(-1, 128)[rows]
        assert np.abs(g - w).mean() < 0.01 * np.abs(w).mean()


@hopper
def test_internvit_with_the_fused_mlp_matches_xla():
    from liteframe_jax.models.internvit import InternVisionTower, InternVitConfig
    cfg = InternVitConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512)  # 448 px, 1,025 tokens
    pixels = jax.random.normal(jax.random.key(0), (64, 448, 448, 3), jnp.bfloat16)
    _assert_fused_matches_xla(lambda impl: InternVisionTower(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                                                             attn_impl="cudnn", mlp_kernel=impl), pixels)


def _tail_inputs(shape, seed):
    """block_tail's arguments (bfloat16 activations, float32 parameters) and cotangents for its two outputs."""
    d = shape[-1]
    k = jax.random.split(jax.random.key(seed), 12)
    vec = lambda i, scale=1.0, offset=0.0: offset + scale * jax.random.normal(k[i], (d,))
    args = (jax.random.normal(k[0], shape, jnp.bfloat16) + 2, jax.random.normal(k[1], shape, jnp.bfloat16), vec(2),
            (vec(3, 0.1, 1.0), vec(4, 0.1)), jax.random.normal(k[5], (3, d)), vec(6), (vec(7, 0.1, 1.0), vec(8, 0.1)),
            vec(9))
    return args, (jax.random.normal(k[10], shape, jnp.bfloat16), jax.random.normal(k[11], shape, jnp.bfloat16))


@hopper
@pytest.mark.parametrize("shape", [(4, 8, 1024, 768), (4, 4, 256, 768), (2, 2, 64, 128)])
def test_block_tail_compiled_matches_reference(shape):
    # the Triton-compiled tail (models/kernels/block_tail.py) at the student's stage shapes, bfloat16 in and out
    from liteframe_jax.models.kernels import block_tail
    args, _ = _tail_inputs(shape, 0)
    want = block_tail.reference(*args, eps=1e-6)
    got = jax.jit(lambda *a: block_tail.block_tail(*a, 1e-6, block_tail.CONFIG))(*args)
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16
        # both round the same float32 values to bfloat16: at most one bfloat16 step apart
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=1e-2, atol=1e-2)


@hopper
@pytest.mark.parametrize("shape", [(4, 8, 1024, 768), (4, 4, 256, 768), (2, 2, 64, 128)])
def test_block_tail_compiled_gradient_matches_reference(shape):
    # the Triton-compiled backward kernel (models/kernels/block_tail_grad.py) against XLA's autodiff of `reference`,
    # bfloat16 activations and cotangents, float32 parameters
    from liteframe_jax.models.kernels import block_tail
    args, cot = _tail_inputs(shape, 1)

    def grads(fn):
        _, vjp = jax.vjp(fn, *args)
        return jax.tree.leaves(vjp(cot))

    want = jax.jit(lambda: grads(lambda *a: block_tail.reference(*a, eps=1e-6)))()
    got = jax.jit(lambda: grads(lambda *a: block_tail.block_tail(*a, 1e-6, block_tail.CONFIG)))()
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        # activations' cotangents: one bfloat16 rounding apart; parameter sums over ~10^5-10^6 rows: float32
        # partial sums in a different order
        np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2 * max(1.0, float(np.abs(w).max()) / 100))
