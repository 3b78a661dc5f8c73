"""The plain-JAX probe of `bench probe` computes the same functions as our InternViT and Qwen2, so timing
one against the other compares implementations, not models; and the bench runs end to end on a CPU."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liteframe_jax.bench import probe
from liteframe_jax.bench.__main__ import main
from liteframe_jax.bench.common import paper_models, qwen25_7b_config
from liteframe_jax.core.tree import flatten, pure_dict
from liteframe_jax.models.internvit import InternViT
from liteframe_jax.models.qwen2 import Qwen2


def _randomised(model):
    """The model's float32 parameters replaced by random values (biases and norm scales included)."""
    graph, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    leaves = [0.1 * jax.random.normal(k, x.shape, x.dtype) + (1.0 if x.ndim == 1 else 0.0)
              for k, x in zip(keys, leaves)]
    model = nnx.merge(graph, jax.tree.unflatten(tree, leaves))
    return model, flatten(pure_dict(nnx.state(model)))


def test_vit_probe_is_internvit():
    cfg = paper_models(small=True)[0]
    ours, p = _randomised(InternViT(cfg, rngs=nnx.Rngs(0)))
    stack = lambda fmt: jnp.stack([p[fmt.format(i)] for i in range(cfg.num_layers)])
    pair = lambda a, b: jnp.stack([stack(a), stack(b)], 1)
    params = {"patch": p["patch_kernel"].reshape(-1, cfg.hidden_size), "patch_bias": p["patch_bias"],
              "cls": p["cls_token"], "pos": p["pos_embedding"],
              "blocks": {"ln1": pair("block_{}/norm1/scale", "block_{}/norm1/bias"),
                         "ln2": pair("block_{}/norm2/scale", "block_{}/norm2/bias"),
                         "bqkv": jnp.stack([stack(f"block_{{}}/attn/{w}/bias") for w in "qkv"], 1),
                         **{f"w{w}": stack(f"block_{{}}/attn/{w}/kernel") for w in "qkv"},
                         "wo": stack("block_{}/attn/out/kernel"), "bo": stack("block_{}/attn/out/bias"),
                         "w1": stack("block_{}/mlp/fc1/kernel"), "b1": stack("block_{}/mlp/fc1/bias"),
                         "w2": stack("block_{}/mlp/fc2/kernel"), "b2": stack("block_{}/mlp/fc2/bias"),
                         "ls1": stack("block_{}/ls1"), "ls2": stack("block_{}/ls2")}}
    pixels = jax.random.normal(jax.random.key(1), (2, cfg.image_size, cfg.image_size, 3))
    got = probe.vit_forward(params, pixels, cfg, "erf (XLA)", attn_impl=None)
    np.testing.assert_allclose(got, ours(pixels), atol=1e-4, rtol=0)


def test_prefill_probe_is_qwen2():
    cfg = qwen25_7b_config(small=True)
    ours, p = _randomised(Qwen2(cfg, rngs=nnx.Rngs(0)))
    stack = lambda name: jnp.stack([p[f"layer_{i}/{name}"] for i in range(cfg.num_layers)])
    params = {"embed": p["embed"], "norm": p["final_norm/scale"], "lm_head": p["lm_head"],
              "layers": {"ln1": stack("input_norm/scale"), "ln2": stack("post_norm/scale"),
                         **{f"w{w}": stack(f"attn/{w}/dense/kernel") for w in "qkvo"},
                         **{f"b{w}": stack(f"attn/{w}/dense/bias") for w in "qkv"},
                         "wg": stack("mlp/gate/dense/kernel"), "wu": stack("mlp/up/dense/kernel"),
                         "wd": stack("mlp/down/dense/kernel")}}
    tokens = jax.random.randint(jax.random.key(2), (1, 24), 0, cfg.vocab_size)
    got = probe.llm_last_logits(params, tokens, cfg, attn_impl=None)
    np.testing.assert_allclose(got, ours(tokens)[:, -1], atol=1e-4, rtol=0)


def test_bench_probe_runs_and_compares_stage_by_stage(tmp_path, capsys):
    out = tmp_path / "probe.json"
    main(["probe", "--small", "--attention", "xla", "--out", str(out)])
    import json
    rows = json.loads(out.read_text())["rows"]
    assert {(r["stage"], r["model"].split(",")[0]) for r in rows} == {
        ("InternViT-300M-shaped encoder", "plain-JAX probe"), ("InternViT-300M-shaped encoder", "ours"),
        ("Qwen2.5-7B-shaped prefill", "plain-JAX probe"), ("Qwen2.5-7B-shaped prefill", "ours")}
    for r in rows:
        assert r["ms"] > 0 and (("vs_probe" in r) == r["model"].startswith("ours"))
    assert "vs_probe=" in capsys.readouterr().out
