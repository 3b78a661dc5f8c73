"""The frame sweep on the demo: a tiny LMA run folder (random weights, written as training writes one) scored at
several frame counts through the eval job, each count timed as answering runs it, the table and the frontier
written; a count the model cannot take is refused before any work."""

import json
import os

import jax
import numpy as np
import pytest
from helpers import load_config

from liteframe_jax import jobs
from liteframe_jax.assembly.specs import StudentSpec, VideoLLMSpec
from liteframe_jax.bench.export import random_params, write_run
from liteframe_jax.data import qa_demo
from liteframe_jax.data.tokenizer import ByteTokenizer
from liteframe_jax.eval import harness, latency, sweep
from liteframe_jax.eval.answer import VideoQA
from liteframe_jax.models.qwen2 import Qwen2Config
from liteframe_jax.models.student import StudentConfig
from liteframe_jax.models.video_llm import ProjectorConfig

# 4-frame clips of 32 px -> 2 x 2 x 2 tokens a clip; the run answers about 8 frames (16 visual tokens)
TINY = VideoLLMSpec(
    encoder=StudentSpec(StudentConfig(image_size=32, num_frames=4, patch_size=(1, 8, 8), width=32, num_heads=4,
                                      mlp_dim=64, stages=((1, (2, 2, 2)),), out_dim=40)),
    projector=ProjectorConfig(kind="mlp", hidden=48, act="gelu", norm=True),
    llm=Qwen2Config(vocab_size=261, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                    rope_theta=10_000.0, tie_word_embeddings=False, max_position_embeddings=512),
    tokenizer="bytes", num_frames=8, separators="frame")


def tiny_run(folder: str) -> str:
    """TINY's run folder, its matrices drawn 4x as large as `random_params` draws them: each question then gets
    an answer of its own (at 1x every answer is the same stop token), so answers that differ show."""
    params = random_params(TINY, seed=4, video_token_id=ByteTokenizer().video_token_id)
    write_run(folder, TINY, jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params), step=5)
    return folder


def demo_config(qa_root: str, run: str, **fields):
    cfg = load_config("eval", "demo")
    cfg.model.run, cfg.data.root, cfg.max_questions, cfg.max_new_tokens = run, qa_root, 6, 4
    for key, value in fields.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(the demo's question folder, a tiny LMA run folder)."""
    root = tmp_path_factory.mktemp("sweep")
    qa_demo.make_qa_set(str(root / "qa"), num_train=2, num_eval=6, num_frames=16, size=48)
    return str(root / "qa"), tiny_run(str(root / "run"))


@pytest.mark.integration  # about 20 s of compiling on 2 cores: two counts, each answered and timed
def test_demo_sweep_scores_times_and_draws_each_count(demo, tmp_path):
    qa_root, run = demo
    cfg = demo_config(qa_root, run, frames=(4, 8), latency_runs=1, devices=1)
    jobs.JOBS["eval"].run(cfg, str(tmp_path / "sweep"))
    record = json.load(open(tmp_path / "sweep" / "sweep.json"))
    assert [r["frames"] for r in record["rows"]] == [4, 8] and record["benchmark"] == "demo"
    assert [r["visual_tokens"] for r in record["rows"]] == [8, 16]  # 2 x 2 x 2 tokens a 4-frame clip
    for r in record["rows"]:
        results = json.load(open(tmp_path / "sweep" / f"frames_{r['frames']}" / "results.json"))
        assert r["accuracy"] == results["summary"]["overall"] and r["questions"] == 6
        assert results["frames_per_question"] == r["frames"]
        rows = harness.read_done(str(tmp_path / "sweep" / f"frames_{r['frames']}" / "results.jsonl"))
        assert len(rows) == 6 and all(x["frames"] == r["frames"] for x in rows.values())
        timed = json.load(open(tmp_path / "sweep" / f"frames_{r['frames']}" / "latency.json"))
        assert min(timed["decode_ms"], timed["encode_ms"], timed["prefill_ms"]) > 0
        assert r["ttft_ms"] == pytest.approx(timed["encode_ms"] + timed["prefill_ms"])
        assert r["ttft_with_decode_ms"] == pytest.approx(r["ttft_ms"] + timed["decode_ms"])
        assert timed["prompt_tokens"] > r["visual_tokens"] and timed["device"] == record["device"]
    table = open(tmp_path / "sweep" / "sweep.md").read()
    assert "| 4 | 8 |" in table and "| 8 | 16 |" in table
    assert open(tmp_path / "sweep" / "frontier.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # at the run's own count the sweep answers as the one-count evaluation does
    single = demo_config(qa_root, run, devices=1)
    jobs.JOBS["eval"].run(single, str(tmp_path / "single"))
    one = harness.read_done(str(tmp_path / "single" / "results.jsonl"))
    swept = harness.read_done(str(tmp_path / "sweep" / "frames_8" / "results.jsonl"))
    assert {k: r["raw"] for k, r in one.items()} == {k: r["raw"] for k, r in swept.items()}
    # the same command again: every count resumes with nothing left to answer, and is timed again
    before = {n: open(tmp_path / "sweep" / f"frames_{n}" / "results.jsonl").read() for n in (4, 8)}
    jobs.JOBS["eval"].run(cfg, str(tmp_path / "sweep"))
    assert {n: open(tmp_path / "sweep" / f"frames_{n}" / "results.jsonl").read() for n in (4, 8)} == before
    # another sweep (the baseline's, here this one's rows moved) drawn beside it, if it compares
    other = dict(record, model="InternVL3 baseline from /models/InternVL3-8B",
                 rows=[dict(r, ttft_ms=r["ttft_ms"] * 3) for r in record["rows"]])
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "sweep.json").write_text(json.dumps(other))
    same = demo_config(qa_root, run, frontier_with=f" {tmp_path / 'baseline'} ")
    assert sweep.others(same, record["device"])[0]["rows"][0]["ttft_ms"] == other["rows"][0]["ttft_ms"]
    assert os.path.getsize(sweep.plot([record, other], str(tmp_path / "both.png"))) > 5000
    mismatched = demo_config(qa_root, run, protocol="official", frontier_with=str(tmp_path / "baseline"))
    with pytest.raises(ValueError, match="protocol 'lmms_eval'"):
        sweep.others(mismatched, record["device"])
    with pytest.raises(ValueError, match="device"):
        sweep.others(same, "TPU v5 lite")


def test_the_first_token_timed_is_the_one_answering_gives(demo):
    qa_root, run = demo
    qa = VideoQA.from_run(run).at_frames(4)
    cfg = demo_config(qa_root, run)
    question, prompt = sweep.timing_question(cfg)
    timed = latency.time_to_first_token(qa, question.video, prompt, runs=1)
    frames, times = qa.load_frames(question.video)
    ids = qa.answerer.token_ids(qa.params, [qa.prompt_ids(prompt, times)], [frames], max_new_tokens=1)
    assert timed["first_token"] == ids[0][0] and timed["frames"] == 4 and timed["visual_tokens"] == 8


def test_counts_the_model_cannot_take_are_refused_before_any_work(demo):
    qa_root, run = demo
    qa = VideoQA.from_run(run)
    with pytest.raises(ValueError, match="--config.frames: 6 frames is not a positive multiple of the encoder's "
                                         "4-frame clips"):
        sweep.models_at(qa, [4, 6])
    with pytest.raises(ValueError, match="256 frames make 512 visual tokens, which leave no room for a "
                                         "question in the LLM's context of 512"):
        sweep.models_at(qa, [256])
    for bad in ((8, 8), (0, 4)):
        with pytest.raises(ValueError, match="give distinct frame counts above 0"):
            sweep.frame_counts(demo_config(qa_root, run, frames=bad))
    with pytest.raises(ValueError, match="--config.latency_runs=0: time each count's request at least once"):
        sweep.frame_counts(demo_config(qa_root, run, frames=(4,), latency_runs=0))
    with pytest.raises(FileNotFoundError, match="has no sweep.json"):
        sweep.others(demo_config(qa_root, run, frontier_with=qa_root), "cpu")
    with pytest.raises(ValueError, match="at least once"):
        latency.time_to_first_token(qa, "v.mp4", "Q?", runs=0)
    assert np.array_equal(qa.at_frames(8).params["llm"]["embed"], qa.params["llm"]["embed"])  # the same weights


@pytest.mark.integration  # two counts answered and timed, as the sweep above
def test_the_needle_test_times_each_count_for_the_frontier(demo, tmp_path):
    _, run = demo
    cfg = load_config("eval", "needle")
    cfg.model.run, cfg.data.root, cfg.devices, cfg.latency_runs = run, str(tmp_path / "set"), 1, 1
    cfg.needle.update(frames=(4, 8), minutes=(1.0,), depths=(0.1, 0.9), per_cell=2, fps=4, size=32, needle_frames=3)
    jobs.JOBS["eval"].run(cfg, str(tmp_path / "needle"))
    record = json.load(open(tmp_path / "needle" / "sweep.json"))
    summary = json.load(open(tmp_path / "needle" / "needle.json"))
    assert record["benchmark"] == "needle" and [r["frames"] for r in record["rows"]] == [4, 8]
    for r in record["rows"]:
        assert r["accuracy"] == pytest.approx(summary["accuracy"][str(r["frames"])]) and r["questions"] == 4
        timed = json.load(open(tmp_path / "needle" / f"frames_{r['frames']}" / "latency.json"))
        assert r["ttft_ms"] == pytest.approx(timed["encode_ms"] + timed["prefill_ms"]) and r["ttft_ms"] > 0
    assert open(tmp_path / "needle" / "frontier.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    cfg.frontier_with = str(tmp_path / "needle")  # a second needle run (the baseline's) drawn beside this one
    assert sweep.others(cfg, record["device"])[0]["rows"] == record["rows"]
