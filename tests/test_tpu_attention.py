"""Splash attention (models/kernels/tpu_attention.py): its numbers against XLA's attention in Pallas interpret mode on
CPU, the Qwen2 step compiled for a TPU topology with it and without it, and the `auto` choice by target."""

import os
import re

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes on this host may hold libtpu

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from liteframe_jax.core import sharding  # noqa: E402
from liteframe_jax.core.defaults import SHARDING_RULES, kernels  # noqa: E402
from liteframe_jax.models import kernel_choice  # noqa: E402
from liteframe_jax.models.kernels import tpu_attention  # noqa: E402
from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config, attention_mask  # noqa: E402

# GQA (4 query heads over 2 key/value heads); 200 tokens: not a multiple of the kernel's 128-token blocks
TINY = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                   rope_theta=10_000.0, tie_word_embeddings=True)
B, T = 4, 200
LENGTHS = (200, 131, 77, 1)  # right-padded rows; the last has one valid token


def _valid():
    return jnp.arange(T)[None] < jnp.asarray(LENGTHS)[:, None]


def _xla_attention(q, k, v, valid, causal, window):
    positions = jnp.broadcast_to(jnp.arange(T) if causal else jnp.full(T, T), (B, T))  # non-causal: all keys <= q
    mask = attention_mask(positions, jnp.broadcast_to(jnp.arange(T), (B, T)), valid, window)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=q.shape[-1] ** -0.5)


@pytest.mark.parametrize("causal, window", [(True, 0), (True, 50), (False, 0)])
def test_splash_equals_xla_attention_with_padding_and_gradients(causal, window):
    rng = np.random.default_rng(0)
    q, k, v, w = (jnp.asarray(rng.normal(size=s), jnp.float32)
                  for s in [(B, T, 4, 16), (B, T, 2, 16), (B, T, 2, 16), (B, T, 4, 16)])
    valid = _valid()
    w = w * valid[..., None, None]  # a loss over valid queries, as training's

    def splash(q, k, v):
        return tpu_attention.attention(q, k, v, valid, scale=16 ** -0.5, causal=causal, window=window)

    with tpu_attention.interpreted():
        got = splash(q, k, v)
        got_grads = jax.grad(lambda *x: jnp.sum(splash(*x) * w), argnums=(0, 1, 2))(q, k, v)
    want = _xla_attention(q, k, v, valid, causal, window)
    want_grads = jax.grad(lambda *x: jnp.sum(_xla_attention(*x, valid, causal, window) * w),
                          argnums=(0, 1, 2))(q, k, v)
    # Without a window every query sees a valid key, padded ones too, and gets XLA's output. With one, a
    # padded query past it sees none (a softmax over nothing, where the kernels differ): valid queries only.
    seen = np.ones((B, T), bool) if not window else np.asarray(valid)
    np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], atol=2e-6, rtol=0)
    for g, h in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, h, atol=2e-5, rtol=0)


def _model(attn_impl, mesh=None):
    return Qwen2(TINY, rngs=nnx.Rngs(0), attn_impl=attn_impl, mesh=mesh)


def _loss(graphdef, params, tokens, valid):
    model = nnx.merge(graphdef, params)
    logits = model(tokens, valid=valid)
    return jnp.sum(jnp.where(valid[..., None], logits, 0.0) ** 2) / 1e3, logits


def test_qwen2_with_splash_on_a_mesh_equals_xla(monkeypatch):
    """On 8 CPU devices (rows over data x fsdp, heads over tensor) in interpret mode: the same logits and
    parameter gradients as XLA's attention on one device."""
    monkeypatch.setattr(tpu_attention, "MIN_TOKENS", 0)  # the kernel at this tiny length
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (B, T)))
    valid = _valid()
    graphdef, params = nnx.split(_model(None))
    (_, want), want_grads = jax.value_and_grad(_loss, 1, has_aux=True)(graphdef, params, tokens, valid)
    with tpu_attention.interpreted():
        graphdef, params = nnx.split(_model("splash", mesh))
        step = jax.jit(jax.value_and_grad(_loss, 1, has_aux=True), static_argnums=0)
        (_, got), got_grads = step(graphdef, params, tokens, valid)
        hlo = step.lower(graphdef, params, tokens, valid).as_text()
    assert "manual_computation" in hlo  # under shard_map: each device ran the kernel on its rows and heads
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    jax.tree.map(lambda g, h: np.testing.assert_allclose(g, h, atol=1e-4, rtol=0), got_grads, want_grads)


def _topology_mesh(name):
    topologies = pytest.importorskip("jax.experimental.topologies")
    try:
        devices = topologies.get_topology_desc(topology_name=name, platform="tpu").devices
    except Exception as e:  # libtpu absent (`pip install "jax[tpu]"`)
        pytest.skip(f"no TPU compiler on this host: {e}")
    return Mesh(np.asarray(devices).reshape(1, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _lower_for(mesh, attn_impl, tokens):
    """A tiny Qwen2's forward + backward, lowered for `mesh`'s devices."""
    cfg = Qwen2Config(vocab_size=128, hidden_size=128, intermediate_size=256, num_layers=1, num_heads=4,
                      num_kv_heads=2, tie_word_embeddings=True)  # head_dim 32
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                                                             attn_impl=attn_impl, mesh=mesh)))
    params = sharding.param_shardings(state, SHARDING_RULES, mesh)

    def loss(params, tokens, valid):
        logits = nnx.merge(graphdef, params)(tokens, valid=valid)
        return jnp.mean(jnp.where(valid[..., None], logits, 0.0) ** 2)

    rows = sharding.batch_sharding(mesh, 2)
    args = (jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                         nnx.to_pure_dict(state), params),
            jax.ShapeDtypeStruct((4, tokens), jnp.int32, sharding=rows),
            jax.ShapeDtypeStruct((4, tokens), jnp.bool_, sharding=rows))
    step = jax.jit(jax.value_and_grad(loss), in_shardings=(params, rows, rows),
                   out_shardings=(NamedSharding(mesh, P()), params))
    return step.lower(*args)


def test_both_attention_paths_compile_for_a_tpu_topology(monkeypatch):
    mesh = _topology_mesh("v5e:2x2")
    monkeypatch.setattr(tpu_attention, "MIN_TOKENS", 512)  # short rows compile faster
    with pytest.raises(ValueError, match="needs the default matmul precision"):  # conftest asks for 'highest'
        _lower_for(mesh, "splash", 512)
    with jax.default_matmul_precision("default"):  # as training runs
        xla = _lower_for(mesh, None, 512).compile().as_text()
        splash = _lower_for(mesh, "splash", 512).compile().as_text()
        short = _lower_for(mesh, "splash", 384).as_text()
    assert "tpu_custom_call" not in xla
    # the layer's forward, dq and dk/dv kernels, over padded (segmented) rows
    kernels = re.findall(r'custom_call_target="tpu_custom_call"', splash)
    assert len(kernels) == 3, len(kernels)
    assert "splash_mha_fwd_segmented" in splash and "splash_mha_dkv_segmented" in splash
    assert "tpu_custom_call" not in short  # rows shorter than the threshold keep XLA's attention


def test_auto_picks_splash_for_a_tpu_target_and_refuses_it_elsewhere():
    mesh = _topology_mesh("v5e:2x2")
    tpu, cpu = mesh.devices.flat[0], jax.devices()[0]
    chosen, said = kernel_choice.resolve(kernels(), jnp.bfloat16, device=tpu)
    assert chosen["attention"] == "splash" and chosen["mlp"] == "xla" and chosen["block_tail"] == "xla"
    assert "splash" in said[0] and "TPU v5 lite" in said[0] and "no GPU (the device is tpu" in said[1]
    chosen, said = kernel_choice.resolve(kernels(), jnp.bfloat16, device=cpu)
    assert chosen["attention"] is None and "no GPU (the device is cpu" in said[0]
    with pytest.raises(ValueError, match="runs on TPUs only"):
        kernel_choice.resolve({"attention": "splash"}, jnp.bfloat16, device=cpu)
    assert kernel_choice.resolve({"attention": "splash"}, jnp.bfloat16, device=tpu)[0] == {"attention": "splash"}
    with pytest.raises(ValueError, match="'splash' runs on TPUs only"):
        _model("splash")  # built for this CPU
    _model("splash", mesh)  # built for the TPU mesh: accepted


def _student(attn_impl, mesh=None):
    from liteframe_jax.models.student import LiteFrameStudent, StudentConfig
    return LiteFrameStudent(StudentConfig.preset("tiny"), rngs=nnx.Rngs(0), attn_impl=attn_impl, mesh=mesh)


def _student_loss(graphdef, params, frames):
    return jnp.sum(nnx.merge(graphdef, params)(frames) ** 2) / 1e2


def test_the_students_attention_as_splash_on_a_mesh_equals_xla():
    """`kernels.tower_attention=splash`: the student's non-causal attention through the kernel on 8 CPU devices
    (clips over data x fsdp, heads over tensor) in interpret mode gives XLA's loss and parameter gradients."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    frames = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8, 56, 56, 3)), jnp.float32)
    graphdef, params = nnx.split(_student(None))
    want, want_grads = jax.value_and_grad(_student_loss, 1)(graphdef, params, frames)
    with tpu_attention.interpreted():
        graphdef, params = nnx.split(_student(tpu_attention.TOWER_NAME, mesh))
        step = jax.jit(jax.value_and_grad(_student_loss, 1), static_argnums=0)
        got, got_grads = step(graphdef, params, frames)
        assert "manual_computation" in step.lower(graphdef, params, frames).as_text()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda g, h: np.testing.assert_allclose(g, h, atol=1e-4, rtol=1e-4), got_grads, want_grads)


def test_tower_attention_is_xla_unless_asked_and_splash_only_on_a_tpu():
    mesh = _topology_mesh("v5e:2x2")
    tpu, cpu = mesh.devices.flat[0], jax.devices()[0]
    chosen, said = kernel_choice.resolve(kernels(), jnp.bfloat16, device=tpu)
    assert chosen["tower_attention"] == "xla" and any("tower_attention=auto -> xla" in s for s in said)
    assert kernel_choice.tower_attention_impl(chosen) == "splash"  # the LLM's name: towers run XLA's on it
    asked = kernels()
    asked.tower_attention = "splash"
    chosen, _ = kernel_choice.resolve(asked, jnp.bfloat16, device=tpu)
    assert kernel_choice.tower_attention_impl(chosen) == tpu_attention.TOWER_NAME
    with pytest.raises(ValueError, match="tower_attention=splash runs on TPUs only"):
        kernel_choice.resolve(asked, jnp.float32, device=cpu)
    asked.tower_attention = "flash"
    with pytest.raises(ValueError, match="unknown kernels.tower_attention 'flash'"):
        kernel_choice.resolve(asked, jnp.float32, device=cpu)
    with jax.default_matmul_precision("default"):
        graphdef, state = nnx.split(nnx.eval_shape(lambda: _student(tpu_attention.TOWER_NAME, mesh)))
        params = sharding.param_shardings(state, SHARDING_RULES, mesh)
        rows = sharding.batch_sharding(mesh, 5)
        args = (jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, jnp.bfloat16, sharding=s),
                             nnx.to_pure_dict(state), params),
                jax.ShapeDtypeStruct((4, 8, 56, 56, 3), jnp.bfloat16, sharding=rows))
        step = jax.jit(jax.grad(lambda p, f: _student_loss(graphdef, p, f)), in_shardings=(params, rows))
        compiled = step.lower(*args).compile().as_text()
    # each block's forward, dq and dk/dv kernels: two blocks in the tiny student
    assert len(re.findall(r'custom_call_target="tpu_custom_call"', compiled)) == 6
