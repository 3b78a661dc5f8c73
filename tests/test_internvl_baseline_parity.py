"""The InternVL3 baseline (InternViT + pixel-unshuffle + projector + Qwen2) against
transformers.InternVLForConditionalGeneration on a tiny random config (float32)."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from liteframe_jax.assembly.baseline import load_internvl_video_llm  # noqa: E402
from liteframe_jax.assembly.specs import VideoLLMSpec  # noqa: E402

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
    spec = VideoLLMSpec.internvl(str(tmp_path))
    graphdef, params = load_internvl_video_llm(spec, str(tmp_path))
    ours = nnx.merge(graphdef, params)
    rng = np.random.default_rng(0)
    # two frames -> 2 x 4 image tokens (28 px, patch 7 -> 4x4 -> pixel-unshuffle 2x2)
    tokens = np.concatenate([rng.integers(0, 60, 5), [63] * 8, rng.integers(0, 60, 6)])[None]
    pixels = rng.normal(size=(1, 2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(tokens),
                   pixel_values=torch.from_numpy(pixels[0].transpose(0, 3, 1, 2))).logits.numpy()
    # the pieces answering composes: the frames' tokens at the placeholders, the LLM over the whole row
    embeds = spec.embeds_with(ours, jnp.asarray(tokens), ours.visual_tokens(jnp.asarray(pixels)))
    hidden, _ = ours.llm.hidden(embeds, jnp.arange(tokens.shape[1])[None], None)
    got = np.asarray(ours.llm.logits(hidden))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def _tiny_tokenizer(folder):
    """A byte-level tokenizer with InternVL's special tokens, built offline (no hub)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    alphabet = ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    return {s: tok.token_to_id(s) for s in specials}, tok.get_vocab_size()


def test_internvl_baseline_answers_like_transformers(tmp_path):
    """`eval.answer.internvl_baseline` end to end: InternVL's video prompt, frames, greedy answer == HF's."""
    from helpers import make_videos

    from liteframe_jax.data import video
    from liteframe_jax.eval.answer import internvl_baseline
    folder = tmp_path / "internvl"
    folder.mkdir()
    ids, vocab = _tiny_tokenizer(folder)
    torch.manual_seed(0)
    cfg = transformers.InternVLConfig(vision_config=VISION, text_config={**TEXT, "vocab_size": vocab},
                                      image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=4)
    ref = transformers.InternVLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0).add_(torch.randn(p.shape) * 0.2)
    ref.save_pretrained(folder)
    path = make_videos(tmp_path / "v", count=1, num_frames=12)[0]

    vqa = internvl_baseline(str(folder), num_frames=2, dtype="float32")
    frames, times = vqa.load_frames(path)
    prompt = vqa._prompt("What moves?", times)
    text = vqa.tokenizer.decode(prompt, skip_special=False)
    pad = "<IMG_CONTEXT>" * 4
    assert f"Frame1: <img>{pad}</img>\nFrame2: <img>{pad}</img>" in text  # InternVL's own video prompt
    ours = vqa.answer_batch([frames], [times], ["What moves?"], max_new_tokens=5)[0]
    assert vqa(path, "What moves?", max_new_tokens=5) == ours  # encoded streaming behind decoding, the same

    # InternVL's reference video loader written out: get_index over the last frame index, a PIL bicubic
    # stretch (torchvision's Resize on a PIL image), ImageNet statistics
    import av
    from PIL import Image
    seg = (video.probe(path).num_frames - 1) / 2
    want_idx = [int(seg / 2 + np.round(seg * i)) for i in range(2)]
    assert list(vqa.frame_plan(path)[0]) == want_idx
    with av.open(path) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
    reference = np.stack([np.asarray(decoded[i].resize((28, 28), Image.Resampling.BICUBIC)) for i in want_idx])
    np.testing.assert_array_equal(frames, reference)
    assert vqa.preprocessing["sampling"] == "internvl" and vqa.preprocessing["resize"] == "bicubic"
    assert vqa.preprocessing["pixel_mean"] == [0.485, 0.456, 0.406]
    pixels = reference.astype(np.float32) / 255.0
    pixels = (pixels - np.asarray(vqa.spec.encoder.pixel_mean)) / np.asarray(vqa.spec.encoder.pixel_std)
    with torch.no_grad():
        out = ref.generate(input_ids=torch.from_numpy(np.asarray(prompt, np.int64))[None],
                           pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32)),
                           max_new_tokens=5, do_sample=False, pad_token_id=ids["<|endoftext|>"],
                           eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
    want = vqa.tokenizer.decode(out[0, len(prompt):].numpy(), skip_special=True)
    assert want.strip() and ours.strip() == want.strip()  # a non-empty answer, token for token

    # the eval option `model.mlp_kernel` reaches the tower: 'pallas' is refused on this device or dtype
    with pytest.raises(ValueError, match="MLP kernel 'pallas'"):
        internvl_baseline(str(folder), num_frames=2, dtype="float32", mlp_kernel="pallas")
