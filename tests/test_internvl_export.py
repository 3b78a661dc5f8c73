"""The InternVL3 baseline adapted with LMA leaves as one Hugging Face `internvl` folder: transformers' own
InternVLForConditionalGeneration (no custom code) answers with the JAX model's greedy token ids, and its
tokenizer writes the same prompt ids. The run is written as training
leaves one (random weights, LoRA on the LLM), from a tiny InternVL folder built offline."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from liteframe_jax.assembly import run_folder  # noqa: E402
from liteframe_jax.assembly.answering import Answerer  # noqa: E402
from liteframe_jax.assembly.specs import VideoLLMSpec  # noqa: E402
from liteframe_jax.bench.export import random_params, write_run  # noqa: E402
from liteframe_jax.export.__main__ import main as export_main  # noqa: E402
from liteframe_jax.export.run import ExportError, export_run  # noqa: E402
from liteframe_jax.models.qwen2 import LoraConfig  # noqa: E402
from test_internvl_baseline_parity import TEXT, VISION, _tiny_tokenizer  # noqa: E402

QUESTION = "<video>\nWhat moves?"


@pytest.fixture(scope="module")
def internvl_run(tmp_path_factory):
    """A run of the InternVL3 baseline with LoRA, as LMA writes it, and its export."""
    root = tmp_path_factory.mktemp("internvl_export")
    source = root / "source"
    source.mkdir()
    ids, vocab = _tiny_tokenizer(source)
    cfg = transformers.InternVLConfig(vision_config=VISION, text_config={**TEXT, "vocab_size": vocab},
                                      image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=4)
    transformers.InternVLForConditionalGeneration(cfg).save_pretrained(source)
    spec = dataclasses.replace(VideoLLMSpec.internvl(str(source), frames=3),
                               lora=LoraConfig(rank=2, alpha=4.0, targets="q|v|down"))
    run = str(root / "run")
    write_run(run, spec, random_params(spec, seed=5, video_token_id=ids["<IMG_CONTEXT>"]), step=2)
    assert export_main(["--run", run, "--out", str(root / "out"), "--max-shard-size", "100KB"]) == 0
    return run, root / "out" / "hf", ids


def test_transformers_internvl_answers_with_the_jax_tokens(internvl_run):
    run, hf, ids = internvl_run
    spec, tokenizer, graphdef, params, _ = run_folder.load_model(run)
    frames = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    prompt = spec.prompt_builder(tokenizer).generation_prompt((("user", QUESTION),), [0.0, 1.0, 2.0])
    want = Answerer(spec, tokenizer, graphdef, jnp.float32).token_ids(
        jax.tree.map(jnp.asarray, params), [prompt], [frames], max_new_tokens=8)[0]

    model = transformers.InternVLForConditionalGeneration.from_pretrained(str(hf), dtype=torch.float32).eval()
    pixels = (frames / 255.0 - np.asarray(spec.encoder.pixel_mean)) / np.asarray(spec.encoder.pixel_std)
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(np.asarray(prompt, np.int64))[None],
                             pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32)),
                             max_new_tokens=8, do_sample=False)
    got = out[0, len(prompt):].tolist()
    assert len(want) >= 2 and got[:len(want)] == want

    # the folder's tokenizer writes the same prompt ids; its image processor resizes to the tower's size
    # (InternVLProcessor's video half needs torchvision, which the suite does not install)
    text = tokenizer.decode(prompt, skip_special=False)
    assert transformers.AutoTokenizer.from_pretrained(str(hf))(text)["input_ids"] == list(prompt)
    images = transformers.GotOcr2ImageProcessor.from_pretrained(str(hf))
    assert images(frames[0], return_tensors="np")["pixel_values"].shape == (1, 3, 28, 28)


def test_every_file_reads_through_safe_open_with_the_published_names(internvl_run):
    _, hf, _ = internvl_run
    names = set()
    shards = sorted(hf.glob("model-*.safetensors"))
    assert len(shards) > 1 and (hf / "model.safetensors.index.json").is_file()
    for shard in shards:
        with safe_open(str(shard), "np") as f:
            names |= set(f.keys())
    assert {"language_model.model.embed_tokens.weight", "vision_tower.embeddings.cls_token",
            "multi_modal_projector.linear_2.weight"} <= names
    assert {n.split(".")[0] for n in names} == {"vision_tower", "multi_modal_projector", "language_model"}
    assert not any("lora" in n for n in names)  # merged


def test_what_an_internvl_folder_cannot_hold_is_refused(internvl_run, tmp_path):
    run, _, _ = internvl_run
    with pytest.raises(ExportError, match="lora=adapter.*merged"):
        export_run(run, str(tmp_path / "a"), lora="adapter")
