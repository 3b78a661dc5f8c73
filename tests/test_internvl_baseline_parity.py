"""The InternVL3 baseline (InternViT + pixel-unshuffle + projector + Qwen2) against
transformers.InternVLForConditionalGeneration on a tiny random config (float32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from liteframe_jax.models.video_llm import load_internvl_chat  # noqa: E402

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=28,
              patch_size=7, attention_bias=True)
TEXT = dict(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=1e4, tie_word_embeddings=False)


@pytest.mark.parametrize("tie", [False, True])
def test_internvl_chat_logits_match_transformers(tmp_path, tie):
    torch.manual_seed(0)
    cfg = transformers.InternVLConfig(vision_config=VISION, text_config={**TEXT, "tie_word_embeddings": tie},
                                      image_token_id=63, image_seq_length=4, tie_word_embeddings=tie)
    ref = transformers.InternVLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0).add_(torch.randn(p.shape) * 0.2)
    ref.save_pretrained(tmp_path)
    ours = load_internvl_chat(str(tmp_path))
    rng = np.random.default_rng(0)
    # two frames -> 2 x 4 image tokens (28 px, patch 7 -> 4x4 -> pixel-unshuffle 2x2)
    tokens = np.concatenate([rng.integers(0, 60, 5), [63] * 8, rng.integers(0, 60, 6)])[None]
    pixels = rng.normal(size=(1, 2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(tokens),
                   pixel_values=torch.from_numpy(pixels[0].transpose(0, 3, 1, 2))).logits.numpy()
    got = np.asarray(ours(tokens, pixels))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
