"""The fused student block tail (`models/kernels/block_tail.py`, backward `models/kernels/block_tail_grad.py`)
computes what the XLA block computes, forward and backward.

The kernel runs in the Pallas interpreter here, with the same program structure (frame walk, row blocks,
column chunks) that the GPU compiles; its speed is measured by `bench encoders` on a GPU.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liteframe_jax.models.kernels import block_tail
from liteframe_jax.models.student import Block, LiteFrameStudent, StudentConfig


def _inputs(shape, taps, seed=0):
    d = shape[-1]
    k = jax.random.split(jax.random.key(seed), 10)
    normal = lambda i, s, scale=1.0: scale * jax.random.normal(k[i], s, jnp.float32)
    # an offset on the residual stream, as trained ViTs have: the LayerNorms must centre it
    x = normal(0, shape) + 3.0
    return (x, normal(1, shape), normal(2, (d,)), (1 + normal(3, (d,), 0.1), normal(4, (d,), 0.1)),
            normal(5, (taps, d)), normal(6, (d,)), (1 + normal(7, (d,), 0.1), normal(8, (d,), 0.1)), normal(9, (d,)))


CONFIGS = [
    block_tail.TailConfig(grad_loop_positions=4),
    block_tail.TailConfig(rows=2, loop_positions=1, hoist_vectors=False, preload=False, grad_loop_positions=1),
    block_tail.TailConfig(rows=1, loop_positions=2, preload=False, grad_loop_positions=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"rows{c.rows}-loop{c.loop_positions}-pre{int(c.preload)}")
@pytest.mark.parametrize("shape,taps", [((2, 5, 8, 96), 3), ((1, 4, 4, 64), 5), ((1, 1, 4, 32), 3)])
def test_kernel_matches_reference(shape, taps, config):
    args = _inputs(shape, taps)
    want = block_tail.reference(*args, eps=1e-6)
    got = block_tail.block_tail(*args, 1e-6, config, True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-5)


def _pallas_output_counts(fn, *args):
    """The number of outputs of each pallas_call in fn's jaxpr, nested jaxprs (custom_vjp, pjit) included."""
    from jax.extend.core import subjaxprs

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "pallas_call":
                yield len(e.outvars)
        for sub in subjaxprs(jaxpr):
            yield from walk(sub)
    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def test_inference_writes_no_statistics_and_training_does():
    # the forward kernel writes the LayerNorm statistics only where a backward pass will read them: inference
    # runs the kernel with 2 outputs, the differentiated forward with 3, and both give the same values
    args = _inputs((1, 4, 8, 32), 3)
    fused = lambda *a: block_tail.block_tail(*a, 1e-6, CONFIGS[0], True)
    assert _pallas_output_counts(fused, *args) == [2]
    primal_and_vjp = lambda *a: jax.vjp(fused, *a)
    assert 3 in _pallas_output_counts(lambda *a: primal_and_vjp(*a)[0], *args)
    inference, (trained, _) = fused(*args), primal_and_vjp(*args)
    for a, b in zip(inference, trained):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


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


# every program structure on the small shapes; the large one (several frames, rows and column chunks) once
BACKWARD_CASES = [((2, 5, 8, 96), 3, CONFIGS[0])] + [
    (shape, taps, config) for shape, taps in [((1, 4, 4, 64), 5), ((1, 1, 4, 32), 3), ((1, 2, 4, 32), 5)]
    for config in CONFIGS]


@pytest.mark.parametrize("shape,taps,config", BACKWARD_CASES,
                         ids=[f"{s}-{t}-rows{c.rows}-gradloop{c.grad_loop_positions}" for s, t, c in BACKWARD_CASES])
def test_backward_kernel_is_the_reference_gradient(shape, taps, config):
    # every input's cotangent from the backward kernel (block_tail_grad.py) against XLA's autodiff of
    # `reference`; the two outputs get different cotangent weights so a swapped pair would show
    args = _inputs(shape, taps)
    loss = lambda fn: (lambda *a: sum(jnp.sum(jnp.sin(v) * (i + 1)) for i, v in enumerate(fn(*a))))
    fused = lambda *a: block_tail.block_tail(*a, 1e-6, config, True)
    ref = lambda *a: block_tail.reference(*a, eps=1e-6)
    every = tuple(range(len(args)))
    g_fused = jax.tree.leaves(jax.grad(loss(fused), argnums=every)(*args))
    g_ref = jax.tree.leaves(jax.grad(loss(ref), argnums=every)(*args))
    assert len(g_fused) == len(g_ref) == 10
    for a, b in zip(g_fused, g_ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4 * max(1.0, float(jnp.abs(b).max())),
                                   rtol=1e-4)
        assert float(jnp.abs(b).max()) > 0.1  # every gradient is non-trivial, so each comparison can fail


def test_unsupported_shapes_are_refused_by_name():
    args = _inputs((1, 2, 3, 32), 3)  # 3 positions: not a multiple of rows x loop_positions
    assert not block_tail.supported((1, 2, 3, 32), 3)
    with pytest.raises(ValueError, match="unsupported shape"):
        block_tail.block_tail(*args, 1e-6, block_tail.TailConfig(), True)


def test_student_gradient_with_the_tail_kernels_matches_xla():
    # the training path (tail_kernel: forward and backward kernels) against XLA's, through a 2-stage student
    cfg = StudentConfig(image_size=32, num_frames=4, patch_size=(1, 4, 4), width=32, num_heads=2, mlp_dim=64,
                        stages=((1, (2, 2, 2)), (1, (1, 1, 1))), out_dim=16)
    frames = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3), jnp.float32)
    grads = {}
    for kernel in ("xla", "interpret"):
        model = LiteFrameStudent(cfg, rngs=nnx.Rngs(0), tail_kernel=kernel)
        graph, params = nnx.split(model, nnx.Param)
        loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graph, p)(frames)))
        grads[kernel] = nnx.to_pure_dict(jax.grad(loss)(params))
        # the kernel path really runs the kernels (4 blocks' worth: 2 forward, 2 backward)
        assert str(jax.make_jaxpr(jax.grad(loss))(params)).count("pallas_call") == (4 if kernel == "interpret" else 0)
    flat_xla, flat_kernel = jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["interpret"])
    assert len(flat_xla) == len(flat_kernel) > 20
    for a, b in zip(flat_kernel, flat_xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=2e-3)


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (the CPU tests fake 8; one GPU has 1)")
def test_tail_kernels_on_a_mesh_split_the_batch_and_match_one_device():
    # a sharded jit of the student's gradient: each of 4 data-parallel devices (2 x 2 data x fsdp) runs the
    # kernels on its own clips (shard_map), and the result equals the unsharded one
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from liteframe_jax.core import sharding
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=1, num_devices=4))
    cfg = StudentConfig(image_size=16, num_frames=4, patch_size=(1, 4, 4), width=32, num_heads=2, mlp_dim=64,
                        stages=((1, (1, 1, 1)),), out_dim=16)
    frames = jax.random.normal(jax.random.key(0), (4, 4, 16, 16, 3), jnp.float32)
    results = {}
    for name, on in (("one device", None), ("mesh", mesh)):
        graph, params = nnx.split(LiteFrameStudent(cfg, rngs=nnx.Rngs(0), tail_kernel="interpret", mesh=on),
                                  nnx.Param)
        fn = jax.value_and_grad(lambda p, f: jnp.sum(jnp.sin(nnx.merge(graph, p)(f))))
        if on is not None:
            jaxpr = str(jax.make_jaxpr(fn)(params, frames))
            assert jaxpr.count("shard_map") == 2 and jaxpr.count("pallas_call") == 2  # forward, backward
            frames_in = jax.device_put(frames, NamedSharding(mesh, P(("data", "fsdp"))))
            fn = jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(("data", "fsdp")))))
        else:
            frames_in = frames
        results[name] = jax.tree.leaves(fn(params, frames_in))
    for a, b in zip(results["mesh"], results["one device"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="block_tail: a batch of 3 does not split over the 4 devices"):
        graph, params = nnx.split(LiteFrameStudent(cfg, rngs=nnx.Rngs(0), tail_kernel="interpret", mesh=mesh))
        nnx.merge(graph, params)(frames[:3])


def test_tail_kernel_choice_is_checked():
    cfg = StudentConfig(image_size=32, num_frames=4, patch_size=(1, 4, 4), width=32, num_heads=2, mlp_dim=64,
                        stages=((1, (1, 1, 1)),), out_dim=16)
    with pytest.raises(ValueError, match="unknown student tail kernel 'triton'"):
        LiteFrameStudent(cfg, rngs=nnx.Rngs(0), tail_kernel="triton")
    if block_tail.device_problem():  # a CPU: the compiled kernel is refused by name, not run in an interpreter
        with pytest.raises(ValueError, match="tail kernel 'pallas' needs a GPU"):
            LiteFrameStudent(cfg, rngs=nnx.Rngs(0), tail_kernel="pallas")


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
