"""InternViT and the InternVL3 head against transformers (PyTorch CPU, float32, tiny random configs)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import randomise  # noqa: E402

from liteframe_jax.convert.registry import load_pretrained  # noqa: E402

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=28,
              patch_size=7)
TEXT = dict(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
            vocab_size=128)


def _pixels(batch=2, size=28, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("options", [
    {},
    {"attention_bias": True, "use_qk_norm": True},
    {"norm_type": "rms_norm", "use_mean_pooling": False, "hidden_act": "gelu_pytorch_tanh"},
    {"use_absolute_position_embeddings": False, "use_mask_token": True, "attention_bias": True},
])
def test_vision_model_matches_transformers(tmp_path, options):
    cfg = transformers.InternVLVisionConfig(**VISION, **options)
    ref = randomise(transformers.InternVLVisionModel(cfg))
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    x = _pixels()
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
    got = np.asarray(ours(x))
    assert got.shape == want.shape == (2, 1 + 16, 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("options", [{}, {"vision_feature_layer": -2, "downsample_ratio": 0.5}])
def test_internvl_projector_matches_transformers(tmp_path, options):
    vision = dict(VISION, image_size=56)  # 8x8 patches -> 4x4 after pixel-unshuffle
    cfg = transformers.InternVLConfig(vision_config=vision, text_config=TEXT, **options)
    ref = randomise(transformers.InternVLModel(cfg), seed=3)
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    x = _pixels(size=56)
    with torch.no_grad():
        px = torch.from_numpy(x.transpose(0, 3, 1, 2))
        want_tokens = ref.get_image_features(pixel_values=px).pooler_output.numpy()
        want_last = ref.vision_tower(pixel_values=px).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(ours(x)), want_last, atol=1e-4, rtol=0)
    got = np.asarray(ours.features(x, "projector"))
    assert got.shape == (2, 4, 4, 48)
    np.testing.assert_allclose(got.reshape(2, 16, 48), want_tokens, atol=1e-4, rtol=0)


def test_rejects_unsupported_options(tmp_path):
    cfg = transformers.InternVLConfig(vision_config=VISION, text_config=TEXT, vision_feature_select_strategy="full")
    transformers.InternVLModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        load_pretrained(str(tmp_path))


def test_rejects_weights_of_another_shape(tmp_path):
    transformers.InternVLVisionModel(transformers.InternVLVisionConfig(**VISION)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mlp\.fc1\.(weight|bias).*has shape"):
        load_pretrained(str(tmp_path))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(str(tmp_path / "nope"))
