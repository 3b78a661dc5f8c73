"""The needle test (data/needle.py, eval/needle.py) and the frame-budget planner (plan/, bench/latency_profile.py)."""

import json
import os

import numpy as np
import pytest

from liteframe_jax.data import demo, needle, sampling, video
from liteframe_jax.eval import needle as needle_eval
from liteframe_jax.plan import planner, profile
from tests.helpers import load_config

SMALL = dict(minutes=(1.0,), depths=(0.1, 0.5, 0.9), per_cell=2, fps=4, size=32, needle_frames=3, seed=0)


def test_the_set_is_reproducible_and_a_folder_of_another_set_is_refused(tmp_path):
    one = needle.make_needle_set(str(tmp_path / "a"), **SMALL)
    two = needle.make_needle_set(str(tmp_path / "b"), **SMALL)
    rows_a, rows_b = json.load(open(one)), json.load(open(two))
    assert [{k: v for k, v in r.items()} for r in rows_a] == rows_b and len(rows_a) == 6
    assert len({r["answer"] for r in rows_a}) > 1  # the needle's colour varies with the seed
    r = rows_a[3]
    idx = list(range(r["needle_start"] - 2, r["needle_start"] + r["needle_frames"] + 2))
    frames_a = video.decode_frames(os.path.join(tmp_path / "a", r["video"]), idx, 32)
    frames_b = video.decode_frames(os.path.join(tmp_path / "b", r["video"]), idx, 32)
    np.testing.assert_array_equal(frames_a, frames_b)  # the same video, pixel for pixel
    colour = np.array(demo.COLOURS[needle.OPTIONS["ABCDEF".index(r["answer"])]])
    shows = [int((np.abs(f.astype(int) - colour).sum(-1) < 60).sum()) for f in frames_a]
    assert all(s > 20 for s in shows[2:-2]) and shows[:2] == [0, 0] and shows[-2:] == [0, 0]  # only its frames
    with pytest.raises(ValueError, match="per_cell: 2 there, 4 asked"):
        needle.make_needle_set(str(tmp_path / "a"), **{**SMALL, "per_cell": 4})


def test_the_training_set_is_made_once_and_a_folder_of_another_set_is_refused(tmp_path):
    folder = str(tmp_path / "qa")
    train, held_out = needle.make_qa_set(folder, num_train=12, num_eval=2, num_frames=16, size=32,
                                         needle_frames=(1, 6))
    rows = [json.loads(line) for line in open(train)]
    assert len(rows) == 24 and {r["format"] for r in rows} == {"open", "mc"}
    assert needle.make_qa_set(folder, num_train=12, num_eval=2, num_frames=16, size=32,
                              needle_frames=(1, 6)) == (train, held_out)  # made once
    with pytest.raises(ValueError, match=r"needle_frames: \[1, 6\] there, \[1, 2\] asked"):
        needle.make_qa_set(folder, num_train=12, num_eval=2, num_frames=16, size=32)


class ColourReader:
    """Answers the needle question from the frames it is given: the option colour that covers the most pixels,
    else 'A' (a guess). What any model can know is bounded by what its sampled frames hold."""

    step, preprocessing = 0, {"sampling": "uniform"}

    def __init__(self, frames):
        self.num_frames, self.visual_tokens = frames, frames
        self.source, self.fingerprint = f"colour reader at {frames} frames", {"reader": frames}

    def load_frames(self, path):
        info = video.probe(path)
        return video.decode_frames(path, sampling.uniform_indices(info.num_frames, self.num_frames), 32), [0.0]

    def check_prompt(self, prompt, times):
        assert needle.QUESTION in prompt.user and "F. cyan" in prompt.user

    def answer_batch(self, frames, times, prompts, max_new_tokens):
        out = []
        for f in frames:
            counts = [int((np.abs(f.astype(int) - np.array(demo.COLOURS[c])).sum(-1) < 60).sum())
                      for c in needle.OPTIONS]
            out.append("ABCDEF"[int(np.argmax(counts))] if max(counts) else "A")
        return out


def test_more_frames_find_more_needles(tmp_path):
    """On seed 0, 128 frames of a one-minute video (240 frames) answer at least 50 points more needles than 16:
    16 frames land on a 3-frame needle about one time in five, 128 always."""
    cfg = load_config("eval", "needle")
    cfg.data.root = str(tmp_path / "set")
    cfg.needle.update(frames=(16, 128), **{k: v for k, v in SMALL.items()})
    cfg.latency_runs = 0  # a reader of pixels: nothing to time
    summary = needle_eval.sweep(cfg, str(tmp_path / "out"), ColourReader, "colour reader", "uniform")
    acc, cover = summary["accuracy"], summary["coverage"]
    assert acc[128] - acc[16] >= 0.5, summary
    assert cover[128] == 1.0 and cover[16] < 0.5 and acc[128] == 1.0
    assert acc[16] <= cover[16] + (1 - cover[16]) * 0.5  # misses are guesses
    assert set(summary["grid"]) == {"0.10", "0.50", "0.90"}
    for png in ("needle_heatmap.png", "needle_frames.png"):
        assert os.path.getsize(tmp_path / "out" / png) > 5000
    again = needle_eval.sweep(cfg, str(tmp_path / "out"), ColourReader, "colour reader", "uniform")
    assert again["accuracy"] == acc  # resumed from the harness's rows, not asked again


def _profile(**model_changes):
    model = {"fingerprint": "x", "baseline": False, "clip_frames": 8, "tokens_per_clip": 64, "groups_per_clip": 4,
             "text_tokens": 100, "text_tokens_per_group": 0, "prompt_width_step": 1,
             "encode": {"a": 1.0, "b": 10.0}, "prefill": {"a": 2.0, "b": 0.01, "c": 1e-5},
             "memory": {"param_bytes": 1000, "image_size": 64, "hidden_bytes_per_token": 512,
                        "kv_bytes_per_token": 2048, "score_bytes_per_token2": 16}, **model_changes}
    dec = {"open_ms": 5.0, "ms_per_decoded_frame": 0.1, "video": {"fps": 4.0, "keyframe_every": 60, "width": 64,
                                                                   "height": 64}}
    return {"device": "test", "date": "today", "decoders": {"pyav": dec}, "models": {"m": model}}


def test_fit_keeps_costs_from_falling():
    xs = np.array([1, 2, 4, 8, 16.0])
    assert profile.fit(xs, 3 + 2 * xs, 1) == pytest.approx([3, 2])
    a, b, c = profile.fit(xs, 5 - 0.1 * xs + 0.5 * xs ** 2, 2)
    assert min(a, b, c) >= 0 and c > 0.4


def test_the_planner_takes_the_most_frames_within_the_budget_and_names_the_stage():
    prof = _profile()
    name, model = planner.model_entry(prof)
    out = planner.plan(model, prof, budget_ms=300)
    assert out["frames"] % 8 == 0 and out["ttft_ms"] <= 300 and out["bounded_by"] == "the budget"
    assert profile.predict(model, prof["decoders"]["pyav"], profile.Video(8192 * 4, 4.0, 60),
                           out["frames"] + 8)["ttft_ms"] > 300
    assert out["limiting_stage"] == max(out["stages_ms"], key=out["stages_ms"].get)
    assert out["visual_tokens"] == out["frames"] // 8 * 64
    # a 20-minute video at 4 fps, no budget: one frame every 2 s, 600 frames
    twenty = planner.plan(model, prof, video=profile.Video.of_minutes(20, 4.0, 60))
    assert twenty["frames"] == 600 and "every 2 s" in twenty["bounded_by"]
    short = planner.plan(model, prof, budget_ms=1e9, video=profile.Video.of_minutes(0.5, 4.0, 60))
    assert short["frames"] == 120 and short["bounded_by"] == "the video's length"
    with pytest.raises(ValueError, match="no frame count fits 5 ms: 8 frames"):
        planner.plan(model, prof, budget_ms=5)
    with pytest.raises(ValueError, match="a latency budget"):
        planner.plan(model, prof)


def test_the_shipped_cpu_profile_answers_out_of_the_box(capsys):
    from liteframe_jax.plan.__main__ import main
    out = main(["--video_minutes=20"])
    text = capsys.readouterr().out
    assert out["frames"] >= 8 and "limiting stage" in text and "memory" in text
    base = main(["--baseline", "--budget_ms", str(out["ttft_ms"])])
    assert base["ttft_ms"] <= out["ttft_ms"]
