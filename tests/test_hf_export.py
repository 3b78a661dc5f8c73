"""The exported Hugging Face folder (`OUT/hf/`) stands alone: in a process that cannot import this package (nor
JAX), transformers' `AutoProcessor` and `AutoModelForImageTextToText` with `trust_remote_code=True` answer a
question about a video file with the JAX model's greedy token ids; every exported safetensors file reads
through `safe_open`. The run is test_export.py's tiny random Video LLM (written in seconds, no training)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers import hf_folder_answers, make_videos
from liteframe_jax.assembly import run_folder
from liteframe_jax.assembly.answering import Answerer
from liteframe_jax.bench.export import random_params, write_run
from liteframe_jax.data.tokenizer import ByteTokenizer
from liteframe_jax.eval.answer import VideoQA
from liteframe_jax.export.__main__ import main as export_main
from liteframe_jax.pytorch.hf_processor import LiteFrameVideoProcessor, uniform_indices
from test_export import VIDEO_LLM

QUESTION = "Which way does the shape move?"

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A merged-LoRA and an adapter export of one run, and two demo videos."""
    root = tmp_path_factory.mktemp("hf_export")
    run = str(root / "run")
    write_run(run, VIDEO_LLM, random_params(VIDEO_LLM, seed=9, video_token_id=ByteTokenizer().video_token_id), step=3)
    for lora in ("merge", "adapter"):
        assert export_main(["--run", run, "--out", str(root / lora), "--lora", lora, "--max-shard-size", "200KB"]) == 0
    return run, root, make_videos(root / "videos", count=2, num_frames=30, seed=4)


@pytest.fixture(scope="module")
def jax_answers(exported):
    """The JAX model's greedy token ids for QUESTION about each video, from the file as evaluation reads it."""
    run, _, videos = exported
    qa = VideoQA.from_run(run)
    spec, tokenizer, graphdef, params, _ = run_folder.load_model(run)
    answerer = Answerer(spec, tokenizer, graphdef, jnp.float32)
    out = []
    for path in videos:
        frames, times = qa.load_frames(path)
        prompt = spec.prompt_builder(tokenizer).generation_prompt((("user", f"<video>\n{QUESTION}"),), times)
        out.append(answerer.token_ids(jax.tree.map(jnp.asarray, params), [prompt], [frames], max_new_tokens=12)[0])
    return out


@pytest.mark.parametrize("lora", ["merge", "adapter"])
def test_transformers_alone_answers_from_the_video_file_with_the_jax_tokens(exported, jax_answers, tmp_path, lora):
    _, root, videos = exported
    got = hf_folder_answers(str(root / lora / "hf"), videos, QUESTION, 12, tmp_path)
    assert (got["model"], got["processor"]) == ("LiteFrameForConditionalGeneration", "LiteFrameProcessor")
    assert got["text"].endswith(f"user\n<video>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert got["answers"] == jax_answers
    assert got["video_effect"] > 1e-2  # the two videos give other next-token logits: the frames reach the LLM
    assert jax_answers[0] != jax_answers[1] and all(len(set(a)) > 1 for a in jax_answers)  # (seed 9: they vary)


def test_every_exported_file_reads_with_safe_open(exported):
    """Each safetensors file of both exports opens with the library and holds finite float32 tensors; the
    folder's index names every tensor of every file; its LLM files are llm/'s own (hard links) where LoRA is
    merged, and its student tensors equal student/'s under `vision_tower.`."""
    _, root, _ = exported
    files = [os.path.join(d, f) for lora in ("merge", "adapter") for d, _, names in os.walk(root / lora)
             for f in names if f.endswith(".safetensors")]
    assert len(files) >= 10
    for path in files:
        with safe_open(path, framework="pt") as f:
            assert len(f.keys()) > 0
            for name in f.keys():
                t = f.get_tensor(name)
                assert t.dtype == torch.float32 and torch.isfinite(t).all(), (path, name)
    for lora in ("merge", "adapter"):
        hf = root / lora / "hf"
        index = json.load(open(hf / "model.safetensors.index.json"))
        listed = {}
        for name in set(index["weight_map"].values()):
            with safe_open(str(hf / name), framework="pt") as f:
                listed.update({k: name for k in f.keys()})
        assert listed == index["weight_map"]
        assert len(set(listed.values())) >= 3  # sharded: LLM shards beside the student and projector's file
    merged_hf, merged_llm = root / "merge" / "hf", root / "merge" / "llm"
    for name in os.listdir(merged_llm):
        if name.endswith(".safetensors"):
            assert os.stat(merged_hf / f"llm-{name}").st_ino == os.stat(merged_llm / name).st_ino
    with safe_open(str(merged_hf / "vision-model.safetensors"), framework="pt") as hf_file, \
            safe_open(str(root / "merge" / "student" / "model.safetensors"), framework="pt") as student_file:
        for name in student_file.keys():
            torch.testing.assert_close(hf_file.get_tensor(f"vision_tower.{name}"), student_file.get_tensor(name),
                                       rtol=0, atol=0)


def test_the_video_processor_samples_and_normalises_as_training(exported):
    """Frames given as an array are sampled by the training rule and normalised with the student's statistics;
    a path gives the JAX pipeline's frames and group start times."""
    run, root, videos = exported
    config = json.load(open(root / "merge" / "hf" / "video_preprocessor_config.json"))
    processor = LiteFrameVideoProcessor(**{k: v for k, v in config.items() if k not in ("auto_map", "processor_class",
                                                                                       "video_processor_type")})
    assert uniform_indices(30, 8) == [1, 5, 9, 13, 16, 20, 24, 28]
    video = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), np.uint8))
    pixels = processor(video)["pixel_values_videos"]
    mean, std = VIDEO_LLM.encoder.pixel_mean, VIDEO_LLM.encoder.pixel_std
    want = (video[[1, 5, 9, 13, 16, 20, 24, 28]].numpy() / 255.0 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(pixels[0].permute(0, 2, 3, 1).numpy(), want, atol=1e-5)
    frames, times = processor.frames(videos[0])
    jax_frames, jax_times = VideoQA.from_run(run).load_frames(videos[0])
    np.testing.assert_array_equal(frames.numpy(), jax_frames)
    assert times == pytest.approx(jax_times)


def test_our_pytorch_model_answers_from_the_video_file_with_the_jax_tokens(exported, jax_answers):
    """`LiteFrameVideoLLM.generate` given a path (the README's PyTorch snippet) decodes it as training did."""
    from liteframe_jax.pytorch import LiteFrameVideoLLM
    _, root, videos = exported
    model = LiteFrameVideoLLM.from_pretrained(str(root / "merge"))
    assert [model.generate_ids(v, QUESTION, max_new_tokens=12) for v in videos] == jax_answers


def test_opencv_decodes_close_to_the_trained_frames(exported):
    """Without PyAV the processor decodes with OpenCV: the same frame indices and times, pixels a few levels
    of 255 from the training pipeline's on average (another resize filter, not bit for bit)."""
    cv2 = pytest.importorskip("cv2")
    from liteframe_jax.pytorch import hf_processor
    run, _, videos = exported
    qa = VideoQA.from_run(run)
    for path in videos:
        frames, indices, fps = hf_processor._decode_opencv(cv2, path, 8, 32)
        want, times = qa.load_frames(path)
        assert indices == list(qa.frame_plan(path)[0]) and indices[0] / fps == pytest.approx(times[0])
        diff = np.abs(frames.numpy().astype(np.int32) - want.astype(np.int32))
        assert frames.shape == want.shape and diff.mean() < 4, diff.mean()


def test_chat_template_puts_the_video_and_the_run_system_prompt_where_training_did(exported):
    """The folder's template over a message's content items gives the text training rendered for
    `<video>\\n{question}`, with the run's system prompt first unless the messages bring their own."""
    from transformers import AutoTokenizer

    from liteframe_jax.data.tokenizer import CHATML_TEMPLATE
    from liteframe_jax.export.hf_folder import chat_template
    _, root, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(str(root / "merge" / "hf"))
    template = chat_template(CHATML_TEMPLATE, "Answer in one word.")
    items = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    render = lambda messages: tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                            add_generation_prompt=True)
    ours = ByteTokenizer()
    want = ours.apply_chat_template([{"role": "system", "content": "Answer in one word."},
                                     {"role": "user", "content": f"<video>\n{QUESTION}"}], add_generation_prompt=True)
    assert render(items) == want
    own = [{"role": "system", "content": "Be brief."}] + items
    assert render(own) == want.replace("Answer in one word.", "Be brief.")
    plain = [{"role": "user", "content": f"<video>\n{QUESTION}"}]  # text content passes through as it is
    assert render(plain) == want


def test_a_long_video_is_reached_by_seeking_to_the_same_frames(tmp_path):
    """Sampled frames hundreds apart in a 700-frame video with a keyframe every 50: the processor seeks to them
    (numbering frames by timestamp, as the training pipeline does) and gets its frames bit for bit."""
    from liteframe_jax.data import demo, video
    from liteframe_jax.data.sampling import uniform_indices as trained_indices
    path = demo.write_video(str(tmp_path / "long.mp4"), demo.render(demo.random_shapes(np.random.default_rng(1), 2), 700,
                                                                     width=64, height=48), keyframe_every=50)
    for n in (2, 8):  # 175 and 525 (a second seek, 350 frames on), and 8 frames 87 apart
        frames, _ = LiteFrameVideoProcessor(num_frames=n, size=32, visual_groups=1).frames(path)
        want = video.decode_frames(path, trained_indices(700, n), 32, "bilinear")
        np.testing.assert_array_equal(frames.numpy(), want)
