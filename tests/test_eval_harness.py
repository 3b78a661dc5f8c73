"""Benchmark formats, prompts, letter extraction and the resumable harness (with a scripted answerer)."""

import json
import os

import numpy as np
import pytest

from helpers import load_config, make_videos
from liteframe_jax.eval import benchmarks, harness


def test_letter_extraction_follows_lmms_eval():
    assert benchmarks.extract_letter("The best answer is: B.", 4) == "B"
    assert benchmarks.extract_letter("(C) the dog", 4) == "C"
    assert benchmarks.extract_letter("E", 4) is None and benchmarks.extract_letter("E", 5) == "E"
    assert benchmarks.extract_letter("it is hard to say what happens in this video at all honestly", 4) is None
    assert benchmarks.fallback_letter("q7", 5) == benchmarks.fallback_letter("q7", 5)
    assert benchmarks.is_degenerate("!!!!!!") and benchmarks.is_degenerate("  ") and not benchmarks.is_degenerate("A")


def test_prompts_end_as_the_protocols_say():
    q = benchmarks.MCQuestion("1", "v.mp4", "What?", ("x", "y", "z", "w"), "A")
    assert benchmarks.prompt("videomme", q).endswith("D. w\nThe best answer is:")
    assert "Respond with only the letter (A, B, C, or D)" in benchmarks.prompt("videomme", q)
    assert benchmarks.prompt("mlvu", q).endswith("Only give the best option.\nBest option: (")
    assert benchmarks.prompt("longvideobench", q).endswith(
        "Answer with the option's letter from the given choices directly.")


def _bench_files(root, video):
    os.makedirs(root / "data")
    os.link(video, root / "data" / "vid1.mp4")
    (root / "videomme.json").write_text(json.dumps([
        {"question_id": "001-1", "videoID": "vid1", "duration": "short", "domain": "Knowledge", "task_type": "Counting",
         "question": "How many?", "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "B"},
        {"question_id": "002-1", "videoID": "gone", "duration": "long", "domain": "Sports", "task_type": "OCR",
         "question": "What?", "options": ["A. a", "B. b", "C. c", "D. d"], "answer": "C"}]))
    os.makedirs(root / "json")
    (root / "json" / "1_plotQA.json").write_text(json.dumps([
        {"video": "v.mp4", "question": "Q?", "candidates": ["p", "q", "r"], "answer": "r", "question_type": "plotQA"},
        {"video": "v.mp4", "question": "Sum up", "answer": "text", "question_type": "subPlot"}]))
    (root / "lvb_val.json").write_text(json.dumps([
        {"id": "x1", "video_path": "v.mp4", "question": "Q?", "option0": "a", "option1": "b", "option2": "c",
         "option3": "N/A", "option4": "N/A", "correct_choice": 2, "duration_group": 15,
         "question_category": "E2O"}]))


def test_loaders_read_the_official_fields(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]
    _bench_files(tmp_path, video)
    vmme = benchmarks.load_videomme(str(tmp_path), str(tmp_path / "videomme.json"))
    assert vmme[0].options == ("one", "two", "three", "four") and vmme[0].answer == "B"
    assert dict(vmme[0].categories)["duration"] == "short" and os.path.isfile(vmme[0].video)
    mlvu = benchmarks.load_mlvu(str(tmp_path))
    assert len(mlvu) == 1 and mlvu[0].answer == "C"  # open-ended rows are not multiple choice
    lvb = benchmarks.load_longvideobench(str(tmp_path))
    assert lvb[0].options == ("a", "b", "c") and lvb[0].answer == "C"


def test_malformed_row_names_its_id_and_field(tmp_path):
    (tmp_path / "lvb_val.json").write_text(json.dumps([{"id": "bad7", "video_path": "v.mp4", "question": "Q",
                                                        "option0": "a"}]))
    with pytest.raises(ValueError, match="row bad7 has no field 'correct_choice'"):
        benchmarks.load_longvideobench(str(tmp_path))


class ScriptedAnswerer:
    """Answers from a fixed list, in order; fails after `crash_after` batches (a killed evaluation)."""

    source, step, num_frames, visual_tokens = "scripted", 0, 4, 16

    def __init__(self, answers, crash_after=None):
        self.answers, self.crash_after, self.calls, self.asked = list(answers), crash_after, 0, []

    def load_frames(self, path):
        return np.zeros((4, 8, 8, 3), np.uint8), [0.0]

    def check_prompt(self, question, times):
        pass

    def answer_batch(self, frames, times, questions, max_new_tokens):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.asked += questions
        return [self.answers.pop(0) for _ in questions]


def test_harness_resumes_without_repeating_and_counts_everything(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]
    root = tmp_path / "bench"
    root.mkdir()
    rows = [{"id": f"q{i}", "video_path": "v.mp4" if i != 3 else "missing.mp4", "question": f"Q{i}?",
             "option0": "a", "option1": "b", "option2": "c", "option3": "d", "option4": "e", "correct_choice": i % 5,
             "duration_group": 60 if i < 4 else 600, "question_category": "T"} for i in range(7)]
    (root / "lvb_val.json").write_text(json.dumps(rows))
    os.makedirs(root / "videos")
    os.link(video, root / "videos" / "v.mp4")
    cfg = load_config("eval", "longvideobench")
    cfg.data.root, cfg.batch_size = str(root), 2
    answers = ["A", "The answer is B", "C", "!!!!", "E", "no idea"]  # six readable videos
    first = ScriptedAnswerer(answers, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        harness.evaluate(cfg, str(tmp_path / "out"), first)
    written = harness.read_done(str(tmp_path / "out" / "results.jsonl"))
    assert len(written) == 4  # two batches of two (q3's missing video is an error row, not a question asked)
    second = ScriptedAnswerer(answers[3:])
    summary = harness.evaluate(cfg, str(tmp_path / "out"), second)
    assert not set(first.asked) & set(second.asked)  # nothing asked twice
    results = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert sorted(r["id"] for r in results) == [f"q{i}" for i in range(7)]
    assert summary["questions"] == 7 and summary["errors"] == 1
    assert summary["parse_failures"] == 2 and summary["degenerate"] == 1  # "!!!!" and "no idea"
    # q0 A ok, q1 B ok, q2 C ok, q3 missing, q4 degenerate -> seeded fallback, q5 E? (answer A) wrong, q6 fallback
    by_id = {r["id"]: r for r in results}
    assert by_id["q0"]["correct"] and by_id["q1"]["correct"] and by_id["q2"]["correct"]
    assert not by_id["q3"]["correct"] and by_id["q3"]["error"] == "missing video"
    assert by_id["q6"]["fallback"] and by_id["q6"]["letter"] == benchmarks.fallback_letter("q6", 5)
    record = json.load(open(tmp_path / "out" / "results.json"))
    assert record["missing_videos"] and record["versions"]["jax"] and record["visual_tokens_per_question"] == 16
    assert set(record["summary"]["by"]["duration_group"]) == {"60", "600"}
    assert os.path.getsize(tmp_path / "out" / "categories.png") > 5000
    assert summary["parse_failure_warning"]  # 2 of 7 is over the 5% threshold
