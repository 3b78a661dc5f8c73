"""Qwen2 against transformers.Qwen2ForCausalLM (float32, tiny random configs): logits and greedy generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from liteframe_jax.convert.registry import load_pretrained  # noqa: E402
from liteframe_jax.models.generate import generate  # noqa: E402

BASE = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rope_theta=5000.0, eos_token_id=None,
            bos_token_id=None, pad_token_id=None)


def _reference(tmp_path, **options):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**{**BASE, **options})
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0).add_(torch.randn(p.shape) * 0.15)
    ref.save_pretrained(tmp_path)
    return ref


@pytest.mark.parametrize("options", [
    {"tie_word_embeddings": False},
    {"tie_word_embeddings": True},
    {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
])
def test_logits_match_transformers(tmp_path, options):
    ref = _reference(tmp_path, **options)
    ours = load_pretrained(str(tmp_path))
    tokens = np.random.default_rng(0).integers(0, 96, (2, 17))
    with torch.no_grad():
        want = ref(torch.from_numpy(tokens)).logits.numpy()
    got = np.asarray(ours(jnp.asarray(tokens)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_left_padding_does_not_change_logits(tmp_path):
    _reference(tmp_path)
    ours = load_pretrained(str(tmp_path))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 96, (1, 9)))
    plain = np.asarray(ours(tokens))
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], 1)
    valid = jnp.arange(12)[None] >= 3
    positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
    got = np.asarray(ours(padded, positions, valid))[:, 3:]
    np.testing.assert_allclose(got, plain, atol=1e-5)


def test_a_prefill_in_query_blocks_gives_the_same_states_and_tokens(tmp_path, monkeypatch):
    """Answering's prefill into the KV cache takes its queries a block at a time (a 17k-token prompt's scores
    would not fit otherwise): left-padded prompts give the same hidden states, cache and greedy tokens."""
    from liteframe_jax.models import qwen2
    _reference(tmp_path)
    ours = load_pretrained(str(tmp_path))
    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.integers(0, 96, (2, 7)))
    valid = jnp.asarray([[True] * 7, [False] * 3 + [True] * 4])
    positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
    graphdef, params = nnx.split(ours)

    def prefill_and_generate(new_tokens):  # a count of its own each time: `generate` is traced afresh
        h, cache = ours.hidden(ours.embed_tokens(ids), positions, valid, ours.init_cache(2, 12))
        tokens, _ = generate(graphdef, params, ours.embed_tokens(ids), valid, jnp.asarray([-1]), jax.random.key(0),
                             max_new_tokens=new_tokens)
        return np.asarray(h), np.asarray(cache["layers"][-1]["k"]), np.asarray(tokens)[:, :4]

    whole = prefill_and_generate(4)
    monkeypatch.setattr(qwen2, "PREFILL_QUERY_BLOCK", 3)  # blocks of 3, 3 and 1 queries
    blocked = prefill_and_generate(5)
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-5)
    np.testing.assert_allclose(blocked[1], whole[1], atol=1e-6)
    np.testing.assert_array_equal(blocked[2], whole[2])


@pytest.mark.parametrize("window", [0, 3])
def test_prefill_attention_on_rotated_rows_equals_the_masked_attention(window):
    """A GPU prefills with cuDNN's kernel, which takes right-padded rows with lengths: left-padded prompts turned
    round and back give the masked attention's outputs at every valid token (XLA here stands in for cuDNN)."""
    from liteframe_jax.models import qwen2
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.normal(size=(3, 9, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(3, 9, 2, 8)), jnp.float32) for _ in range(2))
    valid = jnp.arange(9)[None] >= jnp.asarray([0, 2, 5])[:, None]
    positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
    want = jax.nn.dot_product_attention(q, k, v, mask=qwen2.attention_mask(positions, positions, valid, window),
                                        scale=0.3)
    got = qwen2.prefill_attention(q, k, v, valid, scale=0.3, window=window)
    np.testing.assert_allclose(np.where(valid[..., None, None], got, 0), np.where(valid[..., None, None], want, 0),
                               atol=1e-5)


def test_greedy_generation_matches_transformers(tmp_path):
    ref = _reference(tmp_path)
    ours = load_pretrained(str(tmp_path))
    prompts = [[5, 17, 33, 2, 9, 71], [40, 41, 3]]
    want = []
    with torch.no_grad():
        for p in prompts:
            out = ref.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)
            want.append(out[0, len(p):].tolist())
    # one left-padded batch
    width = max(map(len, prompts))
    ids = np.array([[0] * (width - len(p)) + p for p in prompts])
    valid = np.array([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    graphdef, params = nnx.split(ours)
    tokens, lengths = generate(graphdef, params, ours.embed_tokens(jnp.asarray(ids)), jnp.asarray(valid),
                               jnp.asarray([-1]), jax.random.key(0), max_new_tokens=10)
    assert np.asarray(tokens).tolist() == want
    assert np.asarray(lengths).tolist() == [10, 10]


def test_generation_stops_at_stop_tokens(tmp_path):
    _reference(tmp_path)
    ours = load_pretrained(str(tmp_path))
    graphdef, params = nnx.split(ours)
    embeds = ours.embed_tokens(jnp.asarray([[5, 17, 33]]))
    free, _ = generate(graphdef, params, embeds, jnp.ones((1, 3), bool), jnp.asarray([-1]), jax.random.key(0),
                       max_new_tokens=8)
    stop = int(free[0, 2])
    tokens, lengths = generate(graphdef, params, embeds, jnp.ones((1, 3), bool), jnp.asarray([stop]),
                               jax.random.key(0), max_new_tokens=8, pad_id=95)
    first = list(np.asarray(free[0])).index(stop)
    assert int(lengths[0]) == first + 1
    assert np.all(np.asarray(tokens[0, first + 1:]) == 95)


def test_unsupported_rope_is_rejected(tmp_path):
    _reference(tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope type 'linear' is not supported"):
        load_pretrained(str(tmp_path))


def test_remat_policies_and_scanned_layers_give_the_same_loss_and_gradients():
    import jax
    from flax import nnx

    from liteframe_jax.models.qwen2 import LoraConfig, Qwen2, Qwen2Config
    # layers 1-2 with a sliding window of 4 over 9 tokens: the scanned stack runs three loops (windows 0, 4, 0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                      sliding_window=4, sliding_layers=(False, True, True, False))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 64)
    lora = LoraConfig(rank=4, alpha=8.0, targets="q|k|v|o|gate|up|down")

    def loss_and_grads(policy, scan_layers=False):
        graph, params = nnx.split(Qwen2(cfg, rngs=nnx.Rngs(0), remat=policy, scan_layers=scan_layers, lora=lora))
        params = jax.tree.map(lambda x: x + 0.01, params)  # LoRA's B starts at zero: make it count
        loss = lambda p: jax.nn.log_softmax(nnx.merge(graph, p)(tokens)).mean()
        return jax.value_and_grad(loss)(params)

    ref_loss, ref_grads = loss_and_grads("none")
    assert Qwen2(cfg, rngs=nnx.Rngs(0), remat="full", scan_layers=True)._window_runs() == [(0, 1), (1, 3), (3, 4)]
    for policy, scan_layers in (("full", False), ("dots", False), ("full", True), ("dots", True)):
        loss, grads = loss_and_grads(policy, scan_layers)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    with pytest.raises(ValueError, match="unknown remat policy 'fulll'"):
        Qwen2(cfg, rngs=nnx.Rngs(0), remat="fulll")
    with pytest.raises(ValueError, match="scan_layers needs a remat policy"):
        Qwen2(cfg, rngs=nnx.Rngs(0), scan_layers=True)


def test_hidden_without_a_validity_mask_means_every_token_is_real():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    llm = Qwen2(cfg, rngs=nnx.Rngs(0))
    embeds = llm.embed_tokens(jax.random.randint(jax.random.key(0), (2, 9), 0, 64))
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    want, _ = llm.hidden(embeds, positions, jnp.ones((2, 9), bool))
    got, _ = llm.hidden(embeds, positions, None)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    padded, _ = llm.hidden(embeds, positions, jnp.arange(9)[None] < jnp.array([[9], [5]]))
    assert not np.allclose(np.asarray(padded[1, :]), np.asarray(want[1, :]))  # the mask is not ignored


def test_pickled_weights_are_refused_with_the_command_that_converts_them(tmp_path):
    import shlex
    import subprocess
    import sys
    ref = _reference(tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")  # as older folders hold their weights
    with pytest.raises(ValueError, match="holds its weights as pytorch_model.bin: pickled weights are never read") as e:
        load_pretrained(str(tmp_path))
    command = str(e.value).split("runs no code): ", 1)[1]
    args = shlex.split(command)
    assert args[0] == "python"
    subprocess.run([sys.executable, *args[1:]], check=True)
    ours = load_pretrained(str(tmp_path))
    tokens = np.random.default_rng(0).integers(0, 96, (2, 17))
    with torch.no_grad():
        want = ref(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens))), want, atol=1e-4, rtol=0)
