"""Sequence (context) parallelism on 8 CPU devices: the LLM's attention over rows whose tokens are split over
the mesh's 'context' axis equals XLA's attention on one device, and the LMA step's loss and gradients equal
the one-device step's (float32, padded rows)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from liteframe_jax.core import sharding
from liteframe_jax.core.tree import flatten
from liteframe_jax.models import context_parallel
from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config
from liteframe_jax.train import state as state_lib
from liteframe_jax.train import validate
from liteframe_jax.train.lma import LMATask

# as tests/test_qwen2_parity.py's tiny Qwen2, with a sliding window on the first layer
TINY = Qwen2Config(vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4, num_kv_heads=2,
                   rope_theta=5000.0, sliding_window=5, sliding_layers=(True, False))


def _spy(monkeypatch, name):
    """Count the calls of context_parallel.`name` (while tracing), so a test knows the split path ran."""
    calls, real = [], getattr(context_parallel, name)
    monkeypatch.setattr(context_parallel, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_mesh_gets_the_context_axis_only_when_asked():
    assert sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}).axis_names == sharding.MESH_AXES
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 2, "context": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "context": 2, "tensor": 2}
    assert sharding.context_size(mesh) == 2 and sharding.batch_split(mesh) == 2
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2, "context": 4})
    # the start-up check counts the context devices: 8 devices at context=4 leave data=2, so 2 rows divide
    config = load_config("lma", "demo")
    config.mesh.context, config.batch_size = 4, 2
    validate.check(config, 8, 1)
    config.mesh.context = 3
    with pytest.raises(validate.ConfigError, match="'context': 3"):
        validate.check(config, 8, 1)
    config.mesh.context, config.data.buckets = 4, (160, 250)
    with pytest.raises(validate.ConfigError, match=r"data.buckets=\(160, 250\).*multiples of mesh.context=4"):
        validate.check(config, 8, 1)
    ctd = load_config("ctd", "demo")
    ctd.mesh.context = 2
    with pytest.raises(validate.ConfigError, match="only LMA splits"):
        validate.check(ctd, 8, 1)


def test_attention_over_a_split_sequence_equals_xla(monkeypatch):
    """A tiny Qwen2 on rows right-padded to different lengths (tokens over context=4, heads over tensor=2):
    the logits and every parameter's gradient of XLA's attention on one device, sliding window included."""
    b, t = 2, 24
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 2, "context": 4})
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (b, t)))
    valid = jnp.arange(t)[None] < jnp.asarray([[t], [9]])  # row 1's padding fills whole context blocks
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(b, t, 96)), jnp.float32)

    def loss(graphdef, params, tokens, valid):
        logits = nnx.merge(graphdef, params)(tokens, valid=valid)
        return jnp.sum(logits * weights), logits

    graphdef, params = nnx.split(Qwen2(TINY, rngs=nnx.Rngs(0)))
    (_, want), want_grads = jax.value_and_grad(loss, 1, has_aux=True)(graphdef, params, tokens, valid)
    monkeypatch.setattr(context_parallel, "KEY_BLOCK", 4)  # several online-softmax steps per device
    calls = _spy(monkeypatch, "attention")
    graphdef, _ = nnx.split(Qwen2(TINY, rngs=nnx.Rngs(0), mesh=mesh))
    split = lambda x: context_parallel.split_sequence(x, mesh)
    step = jax.jit(jax.value_and_grad(lambda g, p, tk, v: loss(g, p, split(tk), split(v)), 1, has_aux=True),
                   static_argnums=0)
    (_, got), got_grads = step(graphdef, params, tokens, valid)
    assert len(calls) == TINY.num_layers  # every layer's attention ran split
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    jax.tree.map(lambda g, h: np.testing.assert_allclose(g, h, atol=2e-5, rtol=0), got_grads, want_grads)


def test_a_query_that_sees_no_key_averages_every_value_as_xla_does():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "context": 4})
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 8, n, 4)), jnp.float32) for n in (2, 1, 1))
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    valid = jnp.arange(8)[None] >= jnp.asarray([[0], [3]])  # row 1: its first 3 queries see no valid key
    mask = (positions[:, None, :, None] >= positions[:, None, None, :]) & valid[:, None, None, :]
    want = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.5)
    got = jax.jit(lambda *a: context_parallel.attention(*a, scale=0.5, window=0, mesh=mesh, block=2))(
        q, k, v, positions, valid)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_a_device_holds_its_share_of_a_long_row():
    """The compiled forward + backward of a 2,048-token row: split over context=8, each device's temporaries are
    under a tenth of one device's with XLA's attention (whose (heads, T, T) scores dominate), so the hidden
    states are split and no device builds the whole score matrix."""
    t = 2048

    def temporaries(mesh):
        graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen2(TINY, rngs=nnx.Rngs(0), mesh=mesh)))
        split = lambda x: context_parallel.split_sequence(x, mesh)

        def loss(p, tokens, valid):
            model = nnx.merge(graphdef, p)
            h, _ = model.hidden(split(model.embed_tokens(tokens)), split(jnp.broadcast_to(jnp.arange(t), (1, t))),
                                split(valid))
            return jnp.sum(split(h) ** 2)

        rows = (jax.ShapeDtypeStruct((1, t), jnp.int32), jax.ShapeDtypeStruct((1, t), bool))
        return jax.jit(jax.grad(loss)).lower(params, *rows).compile().memory_analysis().temp_size_in_bytes

    whole = temporaries(None)
    split = temporaries(sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "context": 8}))
    assert whole > 2 * 4 * t * t * 4  # one layer's float32 scores and probabilities, at least
    assert split < whole / 10


def _lma_task(mesh_sizes: dict, **fields) -> LMATask:
    """The LMA demo's task (random student over 4 clips, the tiny random LLM), everything trained."""
    c = load_config("lma", "demo")
    c.update(fields)
    c.student.init = "random"
    c.data.num_frames = 32
    c.student.arch.image_size = 32  # 16 visual tokens per clip of 8 frames
    c.train.trainable = "projector+llm"
    c.batch_size = 2
    c.data.buckets = (128,)
    c.mesh.update(mesh_sizes)
    return LMATask(c, sharding.make_mesh(c.mesh), "/nonexistent", with_data=False)


def _batch(task) -> dict:
    """Two rows right-padded to 128 tokens (120 and 75 valid: row 1's padding fills the last context block and
    part of the one before), the video's 64 placeholders after a short prefix, answer tokens at each row's end."""
    b, t = 2, task.config.data.buckets[0]
    rng = np.random.default_rng(0)
    n_video = task.spec.num_visual_tokens
    tokens = rng.integers(0, 250, (b, t)).astype(np.int32)
    tokens[:, 3:3 + n_video] = task.tokenizer.video_token_id
    lengths = np.asarray([120, 75])
    assert n_video == 64 and lengths.min() > 3 + n_video + 6
    valid = np.arange(t)[None] < lengths[:, None]
    loss_mask = valid & (np.arange(t)[None] >= lengths[:, None] - 6)
    tokens[~valid] = task.tokenizer.pad_id
    size = task.spec.encoder.image_size
    frames = rng.integers(0, 256, (b, task.spec.num_frames, size, size, 3), np.uint8)
    return {"frames": frames, "tokens": tokens, "loss_mask": loss_mask, "valid": valid}


def _loss_and_grads(task, params: dict, batch: dict):
    """The train step's loss and gradients (train/step.py grads_of) on `task`'s mesh."""
    layout = state_lib.layout(task.config, task, jax.random.key(0))
    trained, frozen = state_lib.split(params, layout.trainable)
    trained = jax.device_put(trained, layout.param_sh)
    frozen = jax.device_put(frozen, layout.frozen_model_sh)

    def loss_fn(p, frozen, batch):
        return task.loss(nnx.merge(layout.graphdef, state_lib.merge(p, frozen)), batch, None, None)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    batch = sharding.global_batch(batch, task.mesh, task.over_context())
    if sharding.context_size(task.mesh) > 1:  # the frames arrive split over 'context' by whole clips
        assert task.over_context() == ("frames",)
        assert batch["frames"].sharding.spec[1] == sharding.CONTEXT
    (loss, _), grads = step(trained, frozen, batch)
    return float(loss), flatten(jax.device_get(grads))


def test_lma_step_with_context_equals_one_device(monkeypatch):
    one = _lma_task({"num_devices": 1})
    params = jax.device_get(state_lib.layout(one.config, one, jax.random.key(0)).random_model(jax.random.key(0)))
    batch = _batch(one)
    want_loss, want = _loss_and_grads(one, params, batch)

    split = _lma_task({"data": 2, "context": 4})
    assert dict(split.mesh.shape) == {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}
    assert split.spec.clips % 4 == 0  # the frames split by clips too
    monkeypatch.setattr(context_parallel, "KEY_BLOCK", 8)
    attention, positions = _spy(monkeypatch, "attention"), _spy(monkeypatch, "take_positions")
    got_loss, got = _loss_and_grads(split, params, batch)
    assert len(attention) == one.spec.llm.num_layers and len(positions) == 1
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert set(got) == set(want) and any(k.startswith("projector/") for k in got)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=1e-5, err_msg=k)

    # the LLM's layers as a rematerialised loop (scan_layers), on the same split mesh: the same step
    scanned = _lma_task({"data": 2, "context": 4}, remat="full", scan_layers=True)
    assert nnx.eval_shape(lambda: scanned.build_model(nnx.Rngs(0))).llm.scan_layers
    got_loss, got = _loss_and_grads(scanned, params, batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=1e-5, err_msg=k)
