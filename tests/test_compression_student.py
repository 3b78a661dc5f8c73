"""WAP compression (a pure function) and the student's output grid."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from liteframe_jax.models import compression
from liteframe_jax.models.compression import compress, gaussian_window, output_grid
from liteframe_jax.models.student import LiteFrameStudent, StudentConfig


def _tokens(shape=(2, 4, 6, 8, 3), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def test_uniform_is_window_mean():
    x = _tokens()
    y = compress(x, (2, 3, 4), "uniform")
    assert y.shape == (2, 2, 2, 2, 3)
    want = np.asarray(x)[:, 0:2, 3:6, 4:8].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(y[:, 0, 1, 1]), want, rtol=1e-6, atol=1e-6)


def test_gaussian_weights_favour_centre_and_sum_to_one():
    w = np.asarray(gaussian_window((3, 3, 3), sigma=1.0))
    assert w.shape == (3, 3, 3)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    assert w[1, 1, 1] == w.max() and w[0, 0, 0] == w.min()
    x = _tokens((1, 3, 3, 3, 2))
    got = np.asarray(compress(x, (3, 3, 3), "gaussian", sigma=1.0))[0, 0, 0, 0]
    np.testing.assert_allclose(got, (np.asarray(x)[0] * w[..., None]).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    # A constant field is preserved by any convex weighting.
    const = jnp.full((1, 2, 2, 2, 4), 3.5)
    for weighting in ("uniform", "gaussian", "norm"):
        np.testing.assert_allclose(np.asarray(compress(const, (2, 2, 2), weighting)), 3.5, rtol=1e-6)


def test_norm_weighting_follows_salient_token():
    x = np.zeros((1, 1, 2, 2, 2), np.float32)
    x[0, 0, 0, 0] = [10.0, 0.0]
    x[0, 0, 1, 1] = [0.0, 1.0]
    y = np.asarray(compress(jnp.asarray(x), (1, 2, 2), "norm"))[0, 0, 0, 0]
    np.testing.assert_allclose(y, [100 / 11, 1 / 11], rtol=1e-6)
    assert not np.allclose(y, np.asarray(compress(jnp.asarray(x), (1, 2, 2), "uniform"))[0, 0, 0, 0])


def test_indivisible_window_names_the_axis():
    with pytest.raises(ValueError, match="H=6 % 4"):
        output_grid((4, 6, 8), (2, 4, 4))
    with pytest.raises(ValueError, match="unknown WAP weighting"):
        compress(_tokens(), (1, 1, 1), "median")


def _tome_reference(group: np.ndarray, keep: int) -> np.ndarray:
    """ToMe's bipartite soft matching written plainly in numpy, one group of (N, C) tokens, for comparison."""
    tokens = [(group[i].astype(np.float64), 1.0, i) for i in range(len(group))]  # (mean, size, position)
    while len(tokens) > keep:
        r = min(len(tokens) - keep, (len(tokens) + 1) // 2)
        a, b = tokens[::2], tokens[1::2]
        unit = lambda v: v / np.linalg.norm(v)
        best = [max(range(len(b)), key=lambda j: float(unit(x) @ unit(b[j][0]))) for x, _, _ in a]
        score = [float(unit(a[i][0]) @ unit(b[best[i]][0])) for i in range(len(a))]
        merged = sorted(range(len(a)), key=lambda i: -score[i])[:r]
        b = [list(t) for t in b]
        for i in merged:
            j, (x, n, _) = best[i], a[i]
            b[j][0] = (b[j][0] * b[j][1] + x * n) / (b[j][1] + n)
            b[j][1] += n
        tokens = [a[i] for i in range(len(a)) if i not in merged] + [tuple(t) for t in b]
    return np.stack([t[0] for t in sorted(tokens, key=lambda t: t[2])])


def test_tome_matches_a_plain_reference_and_merges_duplicates_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 4, 8)).astype(np.float32)  # B, T, H, W, C
    got = np.asarray(compression.tome(jnp.asarray(x), (2, 2, 2)))
    assert got.shape == (2, 2, 2, 2, 8)
    for b in range(2):
        for t in range(2):  # each group of 2 frames (32 tokens) down to 4, in the order of their positions
            want = _tome_reference(x[b, 2 * t:2 * t + 2].reshape(32, 8), 4)
            np.testing.assert_allclose(got[b, t].reshape(4, 8), want, atol=1e-5)
    # tokens that come in identical pairs merge into exactly the distinct tokens, in their order
    distinct = rng.normal(size=(1, 1, 4, 1, 8)).astype(np.float32)
    pairs = np.repeat(distinct, 2, axis=3)  # W = 2: each token next to its copy
    merged = np.asarray(compression.tome(jnp.asarray(pairs), (1, 1, 2)))
    np.testing.assert_allclose(merged.reshape(4, 8), distinct.reshape(4, 8), atol=1e-6)


def test_topk_keeps_the_highest_norm_tokens_in_their_order():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 2, 4, 4, 6)).astype(np.float32)
    x[0, 1, 3, 0] *= 50  # the most salient token of the second frame group
    got = np.asarray(compression.top_k(jnp.asarray(x), (1, 2, 2)))
    assert got.shape == (1, 2, 2, 2, 6)
    for t in range(2):
        group = x[0, t].reshape(16, 6)
        index = np.sort(np.argsort(-np.linalg.norm(group, axis=-1))[:4])
        np.testing.assert_array_equal(got[0, t].reshape(4, 6), group[index])
    assert any(np.array_equal(row, x[0, 1, 3, 0]) for row in got[0, 1].reshape(4, 6))


def test_reduce_dispatches_every_method_and_names_an_unknown_one():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 2, 4, 4, 3)), jnp.float32)
    np.testing.assert_array_equal(compression.reduce(x, (2, 2, 2), "wap", "norm"), compress(x, (2, 2, 2), "norm"))
    for method in compression.METHODS:
        assert compression.reduce(x, (2, 2, 2), method).shape == (1, 1, 2, 2, 3)
    with pytest.raises(ValueError, match="unknown compression method 'fastv'"):
        compression.reduce(x, (2, 2, 2), "fastv")


def test_student_output_grid_and_shape():
    cfg = StudentConfig(image_size=32, num_frames=8, patch_size=(1, 8, 8), width=32, num_heads=4, mlp_dim=64,
                        stages=((1, (2, 2, 2)), (1, (2, 1, 1)), (1, (1, 1, 1))), out_dim=24)
    assert cfg.input_grid == (8, 4, 4) and cfg.output_grid == (2, 2, 2)
    model = LiteFrameStudent(cfg, rngs=nnx.Rngs(0))
    y = model(jnp.zeros((3, 8, 32, 32, 3)))
    assert y.shape == (3, 8, 24)
    with pytest.raises(ValueError, match=r"expects frames of shape \(B, 8, 32, 32, 3\)"):
        model(jnp.zeros((3, 4, 32, 32, 3)))


def test_student_downsample_starts_as_average_pooling():
    cfg = StudentConfig(image_size=16, num_frames=2, patch_size=(1, 8, 8), width=8, num_heads=2, mlp_dim=8,
                        stages=((0, (2, 2, 2)),), out_dim=8)
    model = LiteFrameStudent(cfg, rngs=nnx.Rngs(0))
    x = _tokens((1, 2, 2, 2, 8))
    np.testing.assert_allclose(np.asarray(model.stage_0.down(x)), np.asarray(compress(x, (2, 2, 2))), atol=1e-6)


def test_student_stride_mismatch_is_reported():
    cfg = StudentConfig(image_size=32, num_frames=4, patch_size=(1, 8, 8), stages=((1, (2, 3, 2)),))
    with pytest.raises(ValueError, match=r"stage 0: token grid \(4, 4, 4\) is not divisible by its stride"):
        cfg.output_grid


def test_temporal_conv_mixes_neighbouring_frames_only():
    cfg = StudentConfig(image_size=8, num_frames=5, patch_size=(1, 8, 8), width=4, num_heads=1, mlp_dim=4,
                        stages=((1, (1, 1, 1)),), out_dim=4)
    conv = LiteFrameStudent(cfg, rngs=nnx.Rngs(0)).stage_0.block_0.tconv
    x = jnp.zeros((1, 5, 1, 1, 4)).at[:, 2].set(1.0)
    y = np.asarray(conv(x) - conv(jnp.zeros_like(x)))
    assert np.all(y[:, [0, 4]] == 0) and np.all(np.abs(y[:, 1:4]).sum(-1) > 0)


def test_student_downsample_is_a_depthwise_strided_convolution():
    import jax

    from liteframe_jax.models.student import Downsample
    down = Downsample(16, (2, 1, 2), rngs=nnx.Rngs(0))
    down.kernel[...] = jax.random.normal(jax.random.key(0), down.kernel.shape)  # learned, not the average
    down.bias[...] = jax.random.normal(jax.random.key(1), down.bias.shape)
    x = jax.random.normal(jax.random.key(2), (2, 4, 6, 8, 16))
    want = jax.lax.conv_general_dilated(  # depth-wise conv3d, kernel == stride, NDHWC
        x, down.kernel[...][..., None, :], window_strides=(2, 1, 2), padding="VALID",
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=16) + down.bias[...]
    np.testing.assert_allclose(np.asarray(down(x)), np.asarray(want), rtol=1e-5, atol=1e-5)
