"""Protocols (prompts and answer extraction as lmms-eval and the benchmark authors write them), scoring per
category, M-Avg, and the resumable harness that refuses to mix answers of different evaluations."""

import json
import os

import numpy as np
import pytest
from helpers import load_config, make_videos
from test_benchmark_formats import write_mlvu, write_videomme

from liteframe_jax.data.benchmarks import MCQuestion
from liteframe_jax.eval import extraction, harness, prompts

Q4 = MCQuestion("1", "v.mp4", "What is the color of the clothing worn by the persons in the video?",
                ("Black.", "Gray.", "Green.", "Brown."), "A")


def test_videomme_prompts_word_for_word():
    official = prompts.protocol("videomme", "official").render(Q4)
    # the "Without subtitles" example of Video-MME's README
    assert official.user == (
        "Select the best answer to the following multiple-choice question based on the video. Respond with only "
        "the letter (A, B, C, or D) of the correct option.\nWhat is the color of the clothing worn by the persons "
        "in the video?\nA. Black.\nB. Gray.\nC. Green.\nD. Brown.\nThe best answer is:")
    assert official.system is None and official.assistant_prefix == ""
    lmms = prompts.protocol("videomme", "lmms_eval").render(Q4).user
    # videomme_doc_to_text + the yaml's default post_prompt
    assert lmms.startswith("Select the best answer to the following multiple-choice question based on the video "
                           "and the subtitles.")
    assert lmms.endswith("D. Brown.\n\nAnswer with the option's letter from the given choices directly.")


def test_mlvu_and_longvideobench_prompts():
    q = MCQuestion("1", "v.mp4", "Who drives?", ("a man", "a woman"), "A")
    official = prompts.protocol("mlvu", "official").render(q)  # MLVU's choice_bench.py
    assert official.user == "Question: Who drives?\nOptions:\n(A) a man\n(B) a woman\nOnly give the best option."
    assert official.system.startswith("Carefully watch this video and pay attention to every detail.")
    assert official.assistant_prefix == "Best option:("
    assert prompts.protocol("mlvu", "lmms_eval").render(q).user == \
        "Who drives?\n(A) a man\n(B) a woman\nOnly give the best option.\nBest option: ("
    assert prompts.protocol("longvideobench", "official").render(q).user == \
        "Question: Who drives?\nA. a man\nB. a woman\nAnswer with the option's letter from the given choices directly."
    assert prompts.protocol("longvideobench", "lmms_eval").render(q).user == \
        "Who drives?\nA. a man\nB. a woman\nAnswer with the option's letter from the given choices directly.\n"
    hashes = {prompts.protocol(b, p).fingerprint() for b in ("videomme", "mlvu", "longvideobench")
              for p in prompts.PROTOCOLS}
    assert len(hashes) == 6
    with pytest.raises(ValueError, match="choose one of"):
        prompts.protocol("videomme", "vlmevalkit")


def test_extraction_rules_as_the_reference_scripts_read():
    ex = extraction.extract
    assert ex("videomme", "The best answer is: B.", 4) == "B"
    assert ex("videomme", "(C) the dog", 4) == "C"
    assert ex("videomme", "E", 4) is None  # Video-MME reads A-D only
    assert ex("videomme", "it is hard to say what happens in this video at all honestly", 4) is None
    # the reference prefix list joins two entries, so "Best answer:" is never stripped and "Best answer: C"
    # reads the B of "Best", exactly as Video-MME's script does; LongVideoBench's list strips it
    assert ex("videomme", "Best answer: C", 4) == "B"
    assert ex("longvideobench", "Best answer: C", 5) == "C" and ex("longvideobench", "E", 5) == "E"
    assert ex("mlvu_official", "B) a woman", 2) == "B" and ex("mlvu_official", "(B) a woman", 2) is None
    assert ex("mlvu_lmms_eval", "(B) a woman", 2) == "B" and ex("mlvu_lmms_eval", "B", 2) == "B"
    assert ex("mlvu_lmms_eval", "a woman", 2) is None
    assert extraction.is_degenerate("!!!!!!") and extraction.is_degenerate("  ") and not extraction.is_degenerate("A")


class ScriptedAnswerer:
    """Answers from a fixed list, in order; fails after `crash_after` batches (a killed evaluation)."""

    source, step, num_frames, visual_tokens = "scripted", 0, 4, 16
    preprocessing = {"sampling": "uniform", "resize": "bilinear"}

    def __init__(self, answers, crash_after=None, step=0):
        self.answers, self.crash_after, self.calls, self.asked = list(answers), crash_after, 0, []
        self.fingerprint = {"source": "scripted", "step": step}

    def load_frames(self, path):
        return np.zeros((4, 8, 8, 3), np.uint8), [0.0]

    def check_prompt(self, prompt, times):
        assert isinstance(prompt, prompts.Prompt)

    def answer_batch(self, frames, times, questions, max_new_tokens):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.asked += [q.user for q in questions]
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
    by_id = {r["id"]: r for r in results}
    assert by_id["q0"]["correct"] and by_id["q1"]["correct"] and by_id["q2"]["correct"]
    assert not by_id["q3"]["correct"] and by_id["q3"]["error"] == "missing video"
    assert by_id["q6"]["fallback"] and by_id["q6"]["letter"] == harness.fallback_letter("q6", 5)
    record = json.load(open(tmp_path / "out" / "results.json"))
    assert record["protocol"] == "lmms_eval"
    assert record["prompt_sha256"] == prompts.protocol("longvideobench", "lmms_eval").fingerprint()
    assert record["missing_videos"] and record["versions"]["jax"] and record["visual_tokens_per_question"] == 16
    assert record["preprocessing"]["sampling"] == "uniform"
    assert set(record["summary"]["by"]["duration_group"]) == {"60", "600"}
    assert os.path.getsize(tmp_path / "out" / "categories.png") > 5000
    assert summary["parse_failure_warning"]  # 2 of 7 is over the 5% threshold


def test_a_resume_by_another_model_or_protocol_is_refused(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]
    write_videomme(tmp_path, video)
    cfg = load_config("eval", "videomme")
    cfg.data.root = str(tmp_path)
    cfg.max_questions = 2
    harness.evaluate(cfg, str(tmp_path / "out"), ScriptedAnswerer(["B", "C"], step=100))
    with pytest.raises(ValueError, match=r"(?s)another evaluation.*model: answers so far .*'step': 100.*'step': 200"):
        harness.evaluate(cfg, str(tmp_path / "out"), ScriptedAnswerer(["B", "C"], step=200))
    cfg.protocol = "official"
    with pytest.raises(ValueError, match=r"protocol: answers so far 'lmms_eval', now 'official'"):
        harness.evaluate(cfg, str(tmp_path / "out"), ScriptedAnswerer(["B", "C"], step=100))
    assert len(harness.read_done(str(tmp_path / "out" / "results.jsonl"))) == 2  # nothing was mixed in
    cfg.protocol, cfg.max_questions = "lmms_eval", 0  # the same evaluation goes on with the rest
    summary = harness.evaluate(cfg, str(tmp_path / "out"), ScriptedAnswerer(["A", "D"], step=100))
    assert summary["questions"] == 4


def test_videomme_scores_by_category_and_official_excludes_unparsed(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]
    write_videomme(tmp_path, video)  # answers B, C, A and a missing video (D)
    cfg = load_config("eval", "videomme")
    cfg.data.root = str(tmp_path)
    lmms = harness.evaluate(cfg, str(tmp_path / "lmms"), ScriptedAnswerer(["B", "no letter here", "A"]))
    assert lmms["overall"] == 0.5 and lmms["scored"] == 4  # unparsed and missing both wrong
    assert lmms["by"]["duration"] == {"short": 0.5, "medium": 1.0, "long": 0.0}
    assert lmms["by"]["task_type"]["Counting Problem"] == 1.0 and lmms["by"]["task_type"]["OCR Problems"] == 0.0
    assert lmms["by"]["sub_category"]["Football"] == 1.0 and lmms["by"]["domain"]["Knowledge"] == 0.5
    cfg.protocol = "official"  # eval_your_results.py counts only the answers it could read
    official = harness.evaluate(cfg, str(tmp_path / "official"), ScriptedAnswerer(["B", "no letter here", "A"]))
    assert official["scored"] == 3 and official["overall"] == pytest.approx(2 / 3)
    assert official["by"]["duration"]["short"] == 1.0


def test_mlvu_m_avg_is_the_mean_over_task_types(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]
    write_mlvu(tmp_path, video)  # plotQA: C, A; findNeedle: B; ego: C
    cfg = load_config("eval", "mlvu")
    cfg.data.root = str(tmp_path)
    model = ScriptedAnswerer(["C) green", "B) a woman", "B) a hat", "C) bag"])
    summary = harness.evaluate(cfg, str(tmp_path / "out"), model)
    assert summary["by"]["task_type"] == {"ego": 1.0, "findNeedle": 1.0, "plotQA": 0.5}
    assert summary["m_avg"] == pytest.approx(2.5 / 3) and summary["overall"] == 0.75
    assert model.asked[0].endswith("(D) white\nOnly give the best option.\nBest option: (")
    record = json.load(open(tmp_path / "out" / "results.json"))
    assert record["not_scored"] == {"subPlot": 1} and len(record["annotation_errors"]) == 1
