"""The fused student block tail (`models/block_tail.py`) computes what the XLA block computes.

The kernel runs in the Pallas interpreter here, with the same program structure (frame walk, row blocks,
column chunks) that the GPU compiles; its speed is measured by `bench encoders` on a GPU.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liteframe_jax.models import block_tail
from liteframe_jax.models.student import Block, StudentConfig


def _inputs(shape, taps, seed=0):
    d = shape[-1]
    k = jax.random.split(jax.random.key(seed), 10)
    normal = lambda i, s, scale=1.0: scale * jax.random.normal(k[i], s, jnp.float32)
    # an offset on the residual stream, as trained ViTs have: the LayerNorms must centre it
    x = normal(0, shape) + 3.0
    return (x, normal(1, shape), normal(2, (d,)), (1 + normal(3, (d,), 0.1), normal(4, (d,), 0.1)),
            normal(5, (taps, d)), normal(6, (d,)), (1 + normal(7, (d,), 0.1), normal(8, (d,), 0.1)), normal(9, (d,)))


CONFIGS = [
    block_tail.TailConfig(),
    block_tail.TailConfig(rows=2, loop_positions=1, hoist_vectors=False, preload=False),
    block_tail.TailConfig(rows=1, loop_positions=2, preload=False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"rows{c.rows}-loop{c.loop_positions}-pre{int(c.preload)}")
@pytest.mark.parametrize("shape,taps", [((2, 5, 8, 96), 3), ((1, 4, 4, 64), 5), ((1, 1, 4, 32), 3)])
def test_kernel_matches_reference(shape, taps, config):
    args = _inputs(shape, taps)
    want = block_tail.reference(*args, eps=1e-6)
    got = block_tail.block_tail(*args, 1e-6, config, True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-5)


def test_reference_is_the_student_block_tail():
    # the reference itself against an independent numpy evaluation of the formula in the module docstring
    args = _inputs((1, 4, 2, 16), 3)
    x, o, ob, (gt, bt), w, cb, (g2, b2), nb = [np.asarray(a, np.float64) if not isinstance(a, tuple)
                                           else tuple(np.asarray(v, np.float64) for v in a) for a in args]
    ln = lambda v, g, b: (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6) * g + b
    r = x + o + ob
    n = ln(r, gt, bt)
    conv = np.zeros_like(r)
    for t in range(4):
        for j in range(3):
            if 0 <= t + j - 1 < 4:
                conv[:, t] += w[j] * n[:, t + j - 1]
    r = r + conv + cb
    got_x, got_h = block_tail.reference(*args, eps=1e-6)
    np.testing.assert_allclose(np.asarray(got_x), r + nb, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_h), ln(r, g2, b2), atol=1e-4)


def test_gradient_is_the_reference_gradient():
    args = _inputs((1, 3, 4, 32), 3)
    loss = lambda fn: (lambda *a: sum(jnp.sum(jnp.sin(v)) for v in fn(*a)))
    fused = lambda *a: block_tail.block_tail(*a, 1e-6, block_tail.TailConfig(), True)
    ref = lambda *a: block_tail.reference(*a, eps=1e-6)
    g_fused = jax.grad(loss(fused), argnums=(0, 1, 4, 7))(*args)
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 4, 7))(*args)
    for a, b in zip(g_fused, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_unsupported_shapes_are_refused_by_name():
    args = _inputs((1, 2, 3, 32), 3)  # 3 positions: not a multiple of rows x loop_positions
    assert not block_tail.supported((1, 2, 3, 32), 3)
    with pytest.raises(ValueError, match="unsupported shape"):
        block_tail.block_tail(*args, 1e-6, block_tail.TailConfig(), True)


def test_student_block_with_fused_tail_matches_xla_block():
    cfg = StudentConfig(image_size=56, num_frames=4, width=64, num_heads=4, mlp_dim=128,
                        stages=((1, (1, 1, 1)),), out_dim=32)
    block = Block(cfg, rngs=nnx.Rngs(3), dtype=jnp.float32, attn_impl=None)
    # non-trivial norms, conv bias and attention biases, so every parameter the kernel reads matters
    params = nnx.state(block, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [v + 0.1 * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves, keys)]
    nnx.update(block, jax.tree.unflatten(treedef, leaves))
    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 4, 64), jnp.float32) + 1.0
    want = block(x)
    block.tail_kernel = "interpret"
    got = block(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4)
    assert float(jnp.max(jnp.abs(want - x))) > 0.1  # the block does something the comparison can see
