"""Export to PyTorch and Hugging Face (float32, CPU, tiny random models): the exported student gives the JAX
student's tokens, the exported LLM the JAX LLM's logits in transformers (merged LoRA, and PEFT's adapter) and in
our own loader again, the PyTorch Video LLM the JAX one's greedy tokens; bad input is one line, and a failed
export leaves nothing behind."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from liteframe_jax.assembly import run_folder
from liteframe_jax.assembly.answering import Answerer
from liteframe_jax.assembly.specs import InternVitSpec, StudentSpec, VideoLLMSpec
from liteframe_jax.bench.export import random_params, write_run
from liteframe_jax.convert import qwen2 as convert_qwen2
from liteframe_jax.convert.registry import load_pretrained
from liteframe_jax.data.tokenizer import ByteTokenizer, HFTokenizer
from liteframe_jax.export import qwen2 as export_qwen2
from liteframe_jax.export.__main__ import main as export_main
from liteframe_jax.export.tokenizer import write_byte_tokenizer
from liteframe_jax.models.internvit import InternVitConfig, InternVLHeadConfig
from liteframe_jax.models.pixels import normalise
from liteframe_jax.models.qwen2 import LoraConfig, Qwen2Config
from liteframe_jax.models.student import StudentConfig
from liteframe_jax.models.video_llm import ProjectorConfig
from liteframe_jax.pytorch import LiteFrameEncoder
from liteframe_jax.pytorch.video_llm import LiteFrameVideoLLM

# three stages: a spatial-only and a temporal-only downsampling, then none; 2-frame tubelets; not the demo's GELU
STUDENT = StudentSpec(StudentConfig(image_size=32, num_frames=4, patch_size=(2, 8, 8), width=32, num_heads=4,
                                    mlp_dim=64, stages=((1, (1, 2, 2)), (1, (2, 1, 1)), (1, (1, 1, 1))),
                                    out_dim=48, act="quick_gelu"), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
VIDEO_LLM = VideoLLMSpec(
    encoder=StudentSpec(StudentConfig(image_size=32, num_frames=4, patch_size=(1, 8, 8), width=32, num_heads=4,
                                      mlp_dim=64, stages=((1, (2, 2, 2)),), out_dim=40)),
    projector=ProjectorConfig(kind="mlp", hidden=48, act="gelu", norm=True),
    llm=Qwen2Config(vocab_size=261, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                    rope_theta=10_000.0, tie_word_embeddings=False, max_position_embeddings=512),
    lora=LoraConfig(rank=4, alpha=8.0, targets="q|v|down"), tokenizer="bytes", num_frames=8, separators="frame")


def _tokens_jax(spec, params, frames):
    model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: spec.build(rngs=nnx.Rngs(0)))), jax.tree.map(jnp.asarray, params))
    return np.asarray(model(jnp.asarray(frames)))


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("student_run"))
    params = random_params(STUDENT, seed=1)
    write_run(folder, STUDENT, params, step=7, trained=lambda path: True)
    return folder, params


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("lma_run"))
    params = random_params(VIDEO_LLM, seed=2, video_token_id=ByteTokenizer().video_token_id)
    write_run(folder, VIDEO_LLM, params, step=3)  # LoRA, encoder and projector trained; the LLM in frozen/
    return folder, params


def test_student_gives_the_same_tokens_in_pytorch(student_run, tmp_path):
    run, params = student_run
    assert export_main(["--run", run, "--out", str(tmp_path / "out")]) == 0
    encoder = LiteFrameEncoder.from_pretrained(str(tmp_path / "out" / "student"))
    frames = np.random.default_rng(0).standard_normal((2, 4, 32, 32, 3)).astype(np.float32)
    want = _tokens_jax(STUDENT, params, frames)
    got = encoder(torch.from_numpy(frames)).detach().numpy()
    assert got.shape == want.shape == (2, 4, 48)
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    # uint8 video in: normalised with the run's pixel statistics and cut into clips, as the JAX pipeline does
    video = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), np.uint8)
    clips = np.asarray(normalise(jnp.asarray(video), STUDENT.pixel_mean, STUDENT.pixel_std, jnp.float32))
    want = _tokens_jax(STUDENT, params, clips.reshape(2, 4, 32, 32, 3)).reshape(1, 8, 48)
    assert np.abs(encoder.encode_video(torch.from_numpy(video)).numpy() - want).max() < 1e-4
    card = open(tmp_path / "out" / "README.md").read()
    assert "step 7" in card and "Tubelet (2, 8, 8)" in card


@pytest.mark.parametrize("size", [16, 64])
def test_student_at_another_size_resamples_its_position_table_as_pytorch_does(student_run, tmp_path, size):
    """Trained at 32 px, the student runs at 16 or 64 px: its (4, 4) spatial position table resampled to the
    new grid with torch's bicubic `interpolate` (what InternVL does with its own table), in JAX and in the
    exported PyTorch model alike; at its own size nothing changes."""
    run, params = student_run
    assert STUDENT.at_image_size(32).arch.table_grid == (4, 4)
    frames = np.random.default_rng(3).standard_normal((2, 4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(_tokens_jax(STUDENT.at_image_size(32), params, frames),
                                  _tokens_jax(STUDENT, params, frames))
    spec, _, graphdef, loaded, _ = run_folder.load_model(run, image_size=size)
    assert spec.arch.image_size == size and spec.arch.table_grid == (4, 4)
    frames = np.random.default_rng(4).standard_normal((2, 4, size, size, 3)).astype(np.float32)
    want = np.asarray(nnx.merge(graphdef, jax.tree.map(jnp.asarray, loaded))(jnp.asarray(frames)))
    grid = spec.arch.output_grid
    assert want.shape == (2, grid[0] * grid[1] * grid[2], 48) and grid[1] == size // 16

    assert export_main(["--run", run, "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "student"
    config = json.loads((folder / "config.json").read_text())
    config["architecture"].update(image_size=size, position_grid=[4, 4])
    torch_encoder = LiteFrameEncoder(config)
    from liteframe_jax.pytorch.weights import read_folder
    torch_encoder.load_state_dict(read_folder(str(folder)))
    got = torch_encoder.eval()(torch.from_numpy(frames)).detach().numpy()
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()


def test_bfloat16_export_writes_bfloat16_weights(student_run, tmp_path):
    run, params = student_run
    assert export_main(["--run", run, "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    encoder = LiteFrameEncoder.from_pretrained(str(tmp_path / "bf16" / "student"))
    assert encoder.head.weight.dtype == torch.bfloat16
    frames = np.random.default_rng(0).standard_normal((1, 4, 32, 32, 3)).astype(np.float32)
    want = _tokens_jax(STUDENT, params, frames)
    got = encoder(torch.from_numpy(frames).to(torch.bfloat16)).detach().float().numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def _jax_llm_logits(params, tokens, lora=True):
    llm_params = params["llm"]
    if not lora:  # the base weights alone: every adapter's B set to zero
        llm_params = jax.tree_util.tree_map_with_path(
            lambda p, v: np.zeros_like(v) if "lora_b" in jax.tree_util.keystr(p) else v, llm_params)
    spec = VIDEO_LLM
    from liteframe_jax.models.qwen2 import Qwen2
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen2(spec.llm, rngs=nnx.Rngs(0), lora=spec.lora)))
    return np.asarray(nnx.merge(graphdef, jax.tree.map(jnp.asarray, llm_params))(jnp.asarray(tokens)))


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.numpy()


def test_llm_gives_the_same_logits_in_transformers_and_in_our_loader(llm_run, tmp_path):
    from transformers import AutoModelForCausalLM
    run, params = llm_run
    out = tmp_path / "out"
    assert export_main(["--run", run, "--out", str(out), "--max-shard-size", "40KB"]) == 0
    index = json.load(open(out / "llm" / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1  # sharded, as transformers shards
    tokens = np.random.default_rng(0).integers(0, 261, (2, 11)).astype(np.int32)
    want = _jax_llm_logits(params, tokens)
    hf = AutoModelForCausalLM.from_pretrained(str(out / "llm"), dtype=torch.float32)
    assert np.abs(_hf_logits(hf, tokens) - want).max() < 1e-4
    ours = load_pretrained(str(out / "llm"))  # the way back: merged LoRA, our own loader
    assert np.abs(np.asarray(ours(jnp.asarray(tokens))) - want).max() < 1e-4
    assert convert_qwen2.config_from_hf(json.load(open(out / "llm" / "config.json"))) == VIDEO_LLM.llm
    generation = json.load(open(out / "llm" / "generation_config.json"))
    assert generation["eos_token_id"] == ByteTokenizer().stop_ids and generation["do_sample"] is False


def test_lora_as_a_peft_adapter(llm_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    run, params = llm_run
    out = tmp_path / "out"
    assert export_main(["--run", run, "--out", str(out), "--lora", "adapter"]) == 0
    tokens = np.random.default_rng(1).integers(0, 261, (1, 9)).astype(np.int32)
    base = AutoModelForCausalLM.from_pretrained(str(out / "llm"), dtype=torch.float32)
    assert np.abs(_hf_logits(base, tokens) - _jax_llm_logits(params, tokens, lora=False)).max() < 1e-4
    adapted = PeftModel.from_pretrained(base, str(out / "llm_lora"))
    assert np.abs(_hf_logits(adapted, tokens) - _jax_llm_logits(params, tokens)).max() < 1e-4
    config = json.load(open(out / "llm_lora" / "adapter_config.json"))
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"] and config["r"] == 4


@pytest.mark.parametrize("lora", ["merge", "adapter"])
def test_video_llm_answers_with_the_same_greedy_tokens_in_pytorch(llm_run, tmp_path, lora):
    run, _ = llm_run
    out = tmp_path / "out"
    assert export_main(["--run", run, "--out", str(out), "--lora", lora]) == 0
    spec, tokenizer, graphdef, params, _ = run_folder.load_model(run)
    builder = spec.prompt_builder(tokenizer)
    video = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), np.uint8)
    times = [0.0, 0.5, 1.0, 1.5]
    question = "Which way does the shape move?"
    prompt = builder.generation_prompt((("user", f"<video>\n{question}"),), times)
    want = Answerer(spec, tokenizer, graphdef, jnp.float32).token_ids(jax.tree.map(jnp.asarray, params), [prompt],
                                                                      [video], max_new_tokens=12)[0]
    model = LiteFrameVideoLLM.from_pretrained(str(out))
    assert model.prompt_ids(question, times=times) == prompt.tolist()  # the same prompt, separators and all
    assert model.generate_ids(video, question, times=times, max_new_tokens=12) == want
    assert len(want) >= 2


def test_byte_tokenizer_exports_to_a_tokenizer_json_with_the_same_ids(tmp_path):
    from transformers import AutoTokenizer
    write_byte_tokenizer(str(tmp_path), ByteTokenizer(), max_length=512)
    ours, hf, theirs = ByteTokenizer(), HFTokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(str(tmp_path))
    text = "<|im_start|>user\n<|video_pad|><|video_pad|>Wie weit? é 漢字 🙂\t x<|im_end|>\n<pad><|endoftext|>"
    assert hf.encode(text) == ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    ids = ours.encode("naïve 🙂<|im_end|>")
    assert hf.decode(ids) == ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == "naïve 🙂"
    assert (hf.pad_id, hf.stop_ids, hf.video_token_id) == (ours.pad_id, ours.stop_ids, ours.video_token_id)
    messages = [{"role": "user", "content": "hi"}]
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(messages, add_generation_prompt=True)


def test_qwen2_config_round_trip_with_sliding_layers_and_head_dim():
    cfg = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_layers=4, num_heads=4, num_kv_heads=2,
                      head_dim=32, sliding_window=16, sliding_layers=(False, False, True, True), tie_word_embeddings=True)
    hf = export_qwen2.config(cfg, dtype="float32", bos_id=None, eos_ids=[1, 2], pad_id=0)
    assert hf["max_window_layers"] == 2 and hf["head_dim"] == 32 and hf["use_sliding_window"]
    assert convert_qwen2.config_from_hf(hf) == cfg


def _one_line_error(capsys, argv, match):
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_bad_input_is_one_line_and_leaves_nothing(student_run, tmp_path, capsys, monkeypatch):
    run, _ = student_run
    out = tmp_path / "out"
    _one_line_error(capsys, ["--run", str(tmp_path / "nowhere"), "--out", str(out)], "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["--run", str(tmp_path / "empty"), "--out", str(out)], "is not a run folder")
    _one_line_error(capsys, ["--run", run, "--out", str(out), "--step", "99"], "no checkpoint at step 99 (it has [7])")
    _one_line_error(capsys, ["--run", run, "--out", str(out), "--lora", "adapter"], "trains no LoRA adapters")
    _one_line_error(capsys, ["--run", run, "--out", os.path.join(run, "x")], "inside the run folder")
    internvit = tmp_path / "internvit_run"
    spec = VideoLLMSpec(encoder=InternVitSpec(InternVitConfig.preset("demo"), InternVLHeadConfig(out_features=128)),
                        projector=None, llm=Qwen2Config.preset("demo"), num_frames=8)
    run_folder.write_spec(str(internvit), spec)
    # an InternVL3 run leaves as an 'internvl' folder (tests/test_internvl_export.py), where the format holds it
    _one_line_error(capsys, ["--run", str(internvit), "--out", str(out)], "InternVLProcessor writes frames as")
    assert not out.exists()

    assert export_main(["--run", run, "--out", str(out)]) == 0
    capsys.readouterr()
    before = sorted(os.listdir(out))
    _one_line_error(capsys, ["--run", run, "--out", str(out)], "is not empty; pass --overwrite")

    # a failure while writing: the previous export stays whole, and no temporary folder is left beside it
    from liteframe_jax.export import run as export_run

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(export_run.card, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        export_main(["--run", run, "--out", str(out), "--overwrite"])
    assert sorted(os.listdir(out)) == before and os.listdir(tmp_path).count("out") == 1
    assert not [name for name in os.listdir(tmp_path) if ".export-" in name]


def test_the_pytorch_side_runs_where_jax_is_not_installed(llm_run, tmp_path):
    """The exported Video LLM loads and answers in a process where importing jax, flax or orbax fails."""
    import subprocess
    import sys

    from helpers import REPO
    run, _ = llm_run
    out = tmp_path / "out"
    assert export_main(["--run", run, "--out", str(out)]) == 0
    code = f"""
import sys
for name in ("jax", "jaxlib", "flax", "orbax", "optax", "grain"):
    sys.modules[name] = None  # import fails, as where they are not installed
import torch
from liteframe_jax.pytorch import LiteFrameVideoLLM
model = LiteFrameVideoLLM.from_pretrained({str(out)!r})
frames = torch.arange(8 * 32 * 32 * 3).reshape(8, 32, 32, 3).remainder(251).to(torch.uint8)
print(model.generate_ids(frames, "How many shapes?", max_new_tokens=6))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = LiteFrameVideoLLM.from_pretrained(str(out))
    frames = torch.arange(8 * 32 * 32 * 3).reshape(8, 32, 32, 3).remainder(251).to(torch.uint8)
    assert proc.stdout.strip().splitlines()[-1] == str(model.generate_ids(frames, "How many shapes?", max_new_tokens=6))
