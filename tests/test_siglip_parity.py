"""SigLIP / SigLIP2 vision towers (HF folders and big_vision .npz) and towers at other resolutions, against
transformers (PyTorch CPU, float32, tiny random configs)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import randomise  # noqa: E402

from liteframe_jax.convert.registry import load_pretrained  # noqa: E402
from liteframe_jax.models import resize  # noqa: E402

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64,
            max_position_embeddings=16)


def _pixels(size, batch=2, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _naflex_patches(x, p):
    """NHWC images -> Siglip2's (B, N, p*p*C) patch rows, as `Siglip2ImageProcessor` lays them out."""
    b, h, w, c = x.shape
    rows = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), -1)
    return torch.from_numpy(rows.copy())


def _close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# the table's own grid; upsampled; downsampled; a size that ends in a partial patch (as 384 px at 14 does)
@pytest.mark.parametrize("native, size", [(32, None), (32, 48), (32, 24), (36, None)])
def test_siglip_vision_model_matches_transformers(tmp_path, native, size):
    ref = randomise(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION, image_size=native)))
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path), image_size=size)
    size = size or native
    x = _pixels(size)
    with torch.no_grad():
        want = ref(pixel_values=_nchw(x), interpolate_pos_encoding=size != native)
    _close(ours(x), want.last_hidden_state)
    _close(ours.pooled(x), want.pooler_output)
    assert ours.features(x, "vit").shape == (2, size // 8, size // 8, 32)
    np.testing.assert_array_equal(ours.features(x, "vit").reshape(2, -1, 32), ours(x))


@pytest.mark.parametrize("size", [32, 48, 24])
def test_siglip2_vision_model_matches_transformers(tmp_path, size):
    ref = randomise(transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**VISION, num_patches=16)), 2)
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path), image_size=size)
    x = _pixels(size)
    n, g = (size // 8) ** 2, size // 8
    with torch.no_grad():
        want = ref(pixel_values=_naflex_patches(x, 8), pixel_attention_mask=torch.ones(2, n, dtype=torch.long),
                   spatial_shapes=torch.tensor([[g, g]] * 2))
    _close(ours(x), want.last_hidden_state)
    _close(ours.pooled(x), want.pooler_output)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_whole_models_give_their_vision_tower(tmp_path, family):
    if family == "siglip":
        cfg = transformers.SiglipConfig(vision_config=dict(VISION, image_size=32), text_config=TEXT)
        ref = randomise(transformers.SiglipModel(cfg), 4)
    else:
        cfg = transformers.Siglip2Config(vision_config=dict(VISION, num_patches=16), text_config=TEXT)
        ref = randomise(transformers.Siglip2Model(cfg), 5)
    ref.save_pretrained(tmp_path)
    x = _pixels(32)
    with torch.no_grad():
        if family == "siglip":
            want = ref.vision_model(pixel_values=_nchw(x))
        else:
            want = ref.vision_model(pixel_values=_naflex_patches(x, 8), spatial_shapes=torch.tensor([[4, 4]] * 2),
                                    pixel_attention_mask=torch.ones(2, 16, dtype=torch.long))
    ours = load_pretrained(str(tmp_path))
    _close(ours(x), want.last_hidden_state)
    _close(ours.pooled(x), want.pooler_output)
    headless = load_pretrained(str(tmp_path), use_head=False)  # CTD reads the grid: the head is not loaded
    assert headless.head is None
    _close(headless(x), want.last_hidden_state)


def _big_vision_names(state: dict, layers: int, stacked: bool) -> dict:
    """A transformers SiglipVisionModel's tensors under big_vision's published names and layouts (the reverse
    of transformers' convert_siglip_to_hf.py): HWIO embedding, (width, heads, head_dim) attention kernels."""
    t = {k.removeprefix("vision_model."): v.numpy() for k, v in state.items()}
    d, heads = VISION["hidden_size"], VISION["num_attention_heads"]
    out = {"params/img/embedding/kernel": t["embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
           "params/img/embedding/bias": t["embeddings.patch_embedding.bias"],
           "params/img/pos_embedding": t["embeddings.position_embedding.weight"][None],
           "params/img/Transformer/encoder_norm/scale": t["post_layernorm.weight"],
           "params/img/Transformer/encoder_norm/bias": t["post_layernorm.bias"],
           "params/txt/Embed_0/embedding": np.zeros((4, d), np.float32),  # a text tower, which is not read
           "params/t": np.ones((1,), np.float32)}

    def attention(theirs, prefix):
        for bv, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            yield f"{prefix}MultiHeadDotProductAttention_0/{bv}/kernel", theirs[f"{hf}.weight"].T.reshape(d, heads, -1)
            yield f"{prefix}MultiHeadDotProductAttention_0/{bv}/bias", theirs[f"{hf}.bias"].reshape(heads, -1)
        yield f"{prefix}MultiHeadDotProductAttention_0/out/kernel", theirs["out_proj.weight"].T.reshape(heads, -1, d)
        yield f"{prefix}MultiHeadDotProductAttention_0/out/bias", theirs["out_proj.bias"]

    def mlp(theirs, prefix):
        for i in (0, 1):
            yield f"{prefix}MlpBlock_0/Dense_{i}/kernel", theirs[f"fc{i + 1}.weight"].T
            yield f"{prefix}MlpBlock_0/Dense_{i}/bias", theirs[f"fc{i + 1}.bias"]

    blocks = []
    for i in range(layers):
        layer = {k[len(f"encoder.layers.{i}."):]: v for k, v in t.items() if k.startswith(f"encoder.layers.{i}.")}
        block = {"LayerNorm_0/scale": layer["layer_norm1.weight"], "LayerNorm_0/bias": layer["layer_norm1.bias"],
                 "LayerNorm_1/scale": layer["layer_norm2.weight"], "LayerNorm_1/bias": layer["layer_norm2.bias"]}
        block.update(attention({k[len("self_attn."):]: v for k, v in layer.items() if k.startswith("self_attn.")}, ""))
        block.update(mlp({k[len("mlp."):]: v for k, v in layer.items() if k.startswith("mlp.")}, ""))
        blocks.append(block)
    if stacked:
        for name in blocks[0]:
            out[f"params/img/Transformer/encoderblock/{name}"] = np.stack([b[name] for b in blocks])
    else:
        for i, block in enumerate(blocks):
            out.update({f"params/img/Transformer/encoderblock_{i}/{n}": v for n, v in block.items()})
    head = {k[len("head."):]: v for k, v in t.items() if k.startswith("head.")}
    q, k, v = np.split(head["attention.in_proj_weight"], 3)
    qb, kb, vb = np.split(head["attention.in_proj_bias"], 3)
    att = {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "q_proj.bias": qb, "k_proj.bias": kb,
           "v_proj.bias": vb, "out_proj.weight": head["attention.out_proj.weight"],
           "out_proj.bias": head["attention.out_proj.bias"]}
    out["params/img/MAPHead_0/probe"] = head["probe"]
    out["params/img/MAPHead_0/LayerNorm_0/scale"] = head["layernorm.weight"]
    out["params/img/MAPHead_0/LayerNorm_0/bias"] = head["layernorm.bias"]
    out.update({f"params/img/MAPHead_0/{n}": v for n, v in attention(att, "")})
    out.update({f"params/img/MAPHead_0/{n}": v for n, v in mlp({k[4:]: v for k, v in head.items()
                                                                  if k.startswith("mlp.")}, "")})
    return out


@pytest.mark.parametrize("stacked", [False, True])
def test_big_vision_npz_matches_transformers(tmp_path, stacked):
    ref = randomise(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION, image_size=32)), 6)
    path = tmp_path / "webli_tiny.npz"
    np.savez(path, **_big_vision_names(ref.state_dict(), VISION["num_hidden_layers"], stacked))
    ours = load_pretrained(str(path))
    assert (ours.cfg.num_layers, ours.cfg.num_heads, ours.cfg.intermediate_size, ours.cfg.image_size) == (2, 4, 64, 32)
    x = _pixels(32)
    with torch.no_grad():
        want = ref(pixel_values=_nchw(x))
    _close(ours(x), want.last_hidden_state)
    _close(ours.pooled(x), want.pooler_output)
    x48 = _pixels(48)
    with torch.no_grad():
        want48 = ref(pixel_values=_nchw(x48), interpolate_pos_encoding=True)
    _close(load_pretrained(str(path), image_size=48, use_head=False)(x48), want48.last_hidden_state)


def test_bad_siglip_inputs_are_named(tmp_path):
    ref = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION, image_size=32, vision_use_head=False))
    ref.save_pretrained(tmp_path / "headless")
    with pytest.raises(ValueError, match="use_head=True, but this checkpoint has no attention-pooling head"):
        load_pretrained(str(tmp_path / "headless"), use_head=True)
    with pytest.raises(ValueError, match="no attention-pooling head"):
        load_pretrained(str(tmp_path / "headless")).pooled(_pixels(32))
    with pytest.raises(ValueError, match="image_size 6 is smaller than one patch"):
        load_pretrained(str(tmp_path / "headless"), image_size=6)
    with pytest.raises(ValueError, match="teacher output 'projector' is not available from a SigLIP tower"):
        load_pretrained(str(tmp_path / "headless")).grid_shape("projector")
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION, image_size=32, hidden_act="gelu_10")
                                   ).save_pretrained(tmp_path / "act")
    with pytest.raises(ValueError, match="hidden_act='gelu_10' is not supported"):
        load_pretrained(str(tmp_path / "act"))
    np.savez(tmp_path / "text_only.npz", **{"params/txt/Embed_0/embedding": np.zeros((4, 8), np.float32)})
    with pytest.raises(ValueError, match="no image-tower arrays"):
        load_pretrained(str(tmp_path / "text_only.npz"))


@pytest.mark.parametrize("size", [42, 14])
def test_internvit_at_another_resolution_matches_transformers(tmp_path, size):
    cfg = transformers.InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, image_size=28, patch_size=7)
    ref = randomise(transformers.InternVLVisionModel(cfg), 7)
    ref.save_pretrained(tmp_path)
    x = _pixels(size)
    with torch.no_grad():
        want = ref(pixel_values=_nchw(x)).last_hidden_state
    _close(load_pretrained(str(tmp_path), image_size=size)(x), want)


@pytest.mark.parametrize("method, mode", [("bicubic", dict(mode="bicubic", align_corners=False)),
                                          ("bilinear_antialias", dict(mode="bilinear", align_corners=False,
                                                                      antialias=True))])
def test_position_table_resize_is_torch_interpolate(method, mode):
    x = np.random.default_rng(0).normal(size=(3, 7, 7)).astype(np.float64)
    for out in (4, 7, 11, 16):
        want = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(out, out), **mode)[0].numpy()
        m = resize.interpolation_matrix(7, out, method)
        np.testing.assert_allclose(np.einsum("Hh,Ww,chw->cHW", m, m, x), want, atol=1e-12)
