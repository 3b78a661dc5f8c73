"""Protocols (prompts and answer extraction as lmms-eval and the benchmark authors write them), scoring per
category, M-Avg, and the resumable harness that refuses to mix answers of different evaluations."""

import json
import os

import numpy as np
import pytest
from helpers import load_config, make_videos
from test_benchmark_formats import write_mlvu, write_videomme

from liteframe_jax.data.benchmarks import MCQuestion
from liteframe_jax.eval import extraction, harness, prompts, scoring

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
    official = prompts.protocol("mlvu", "official").render(q)  # MLVU's videochat2/choice_bench.py
    assert official.user == "Question: Who drives?\nOptions:\n(A) a man\n(B) a woman\nOnly give the best option."
    assert official.system.startswith("Carefully watch this video and pay attention to every detail.")
    assert official.system.endswith("the question.\n") and official.assistant_prefix == "Best option:("
    generic = prompts.protocol("mlvu", "official_generic")  # multiple_choice_evaluation/choice_bench.py
    assert generic.render(q).user == "Question: Who drives?\nOptions:\n(A) a man\n(B) a womanOnly give the best option."
    assert generic.system.endswith("the question.") and generic.assistant_prefix == "Best Option: ("
    assert "videochat2/choice_bench.py" in prompts.protocol("mlvu", "official").reference
    assert "multiple_choice_evaluation/choice_bench.py" in generic.reference
    assert prompts.protocol("mlvu", "lmms_eval").render(q).user == \
        "Who drives?\n(A) a man\n(B) a woman\nOnly give the best option.\nBest option: ("
    # lmms-eval's MLVU rows are asked as released (the stem keeps its trailing space)
    released = MCQuestion("2", "v.mp4", "Who? ", ("x", "y"), "B", released_question="Who? \n(A) x\n(B) y")
    assert prompts.protocol("mlvu", "lmms_eval").render(released).user.startswith("Who? \n(A) x\n(B) y\nOnly")
    assert prompts.protocol("longvideobench", "official").render(q).user == \
        "Question: Who drives?\nA. a man\nB. a woman\nAnswer with the option's letter from the given choices directly."
    assert prompts.protocol("longvideobench", "lmms_eval").render(q).user == \
        "Who drives?\nA. a man\nB. a woman\nAnswer with the option's letter from the given choices directly.\n"
    hashes = {prompts.protocol(b, p).fingerprint() for b in ("videomme", "mlvu", "longvideobench")
              for p in ("lmms_eval", "lmms_eval_v0.7.1", "official")}
    assert len(hashes) == 9
    with pytest.raises(ValueError, match="choose one of"):
        prompts.protocol("videomme", "vlmevalkit")
    with pytest.raises(ValueError, match="no 'official_generic' protocol for benchmark 'videomme'"):
        prompts.protocol("videomme", "official_generic")


def test_protocols_name_the_lmms_eval_release_they_follow():
    for bench in ("videomme", "mlvu", "longvideobench"):
        assert prompts.protocol(bench, "lmms_eval").lmms_eval_version == "0.7.3"
        assert prompts.protocol(bench, "lmms_eval_v0.7.1").lmms_eval_version == "0.7.1"
        assert prompts.protocol(bench, "official").lmms_eval_version is None
        assert prompts.protocol(bench, "lmms_eval").render(Q4) == prompts.protocol(bench, "lmms_eval_v0.7.1").render(Q4)
    assert prompts.protocol("videomme", "lmms_eval").extraction == "lmms_eval_mcq"
    assert prompts.protocol("videomme", "lmms_eval_v0.7.1").extraction == "videomme"
    assert prompts.protocol("mlvu", "lmms_eval_v0.7.1").extraction == "before_paren"


# (answer, lmms-eval 0.7.3's extract_mcq_answer over A-D, Video-MME's extract_characters_regex)
ANSWER_SHAPES = [
    ("B", "B", "B"), ("B.", "B", "B"), ("(C) the dog", "C", "C"), ("Answer: B", "B", "A"),
    ("Best option:(C) Apples.", "C", "B"), ("The answer is A.", "A", "A"), ("答案是B", "B", "B"),
    ("I think it is C because D is wrong", "D", "C"), ("A cat sits.", "A", "A"), ("no letter here", None, None),
    ("", None, None), ("it is hard to say what happens in this video at all honestly", None, None),
    ("D: four", "D", "D"), ("Option C is correct, not A.", "A", "C"), ("E", None, None), ("c", None, None),
]


@pytest.mark.parametrize("answer,mcq,old", ANSWER_SHAPES)
def test_lmms_eval_reading_against_the_old_one(answer, mcq, old):
    assert extraction.extract("lmms_eval_mcq", answer, 4) == mcq
    assert extraction.extract("videomme", answer, 4) == old


def test_reasoning_blocks_are_stripped_as_lmms_eval_does():
    tags = extraction.LMMS_EVAL_REASONING_TAGS
    assert extraction.strip_reasoning("<think>A or D?</think> B", tags) == "B"
    assert extraction.strip_reasoning("reasoning A</think>\nC", tags) == "C"  # the template opened the block
    assert extraction.strip_reasoning("<think>unclosed B", tags) == "<think>unclosed B"
    assert extraction.strip_reasoning("<analysis>A</analysis><think>x</think>  D ", tags) == "D"
    proto = prompts.protocol("videomme", "lmms_eval")
    row = scoring.score(proto, Q4, "<think>Maybe B or C.</think>\nThe answer is A.", None, 0)
    assert row["correct"] and row["letter"] == "A" and row["read"] == "The answer is A."
    old = scoring.score(prompts.protocol("videomme", "official"), Q4, "<think>Maybe B.</think> A", None, 0)
    assert old["letter"] == "B" and "read" not in old  # the authors' script reads the raw answer


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
    assert ex("before_paren", "(B) a woman", 2) == "B" and ex("before_paren", " B", 2) == "B"
    assert ex("before_paren", "a woman", 2) is None
    assert ex("before_paren_unstripped", " B", 2) is None and ex("before_paren_unstripped", "B) x", 2) == "B"
    assert extraction.is_degenerate("!!!!!!") and extraction.is_degenerate("  ") and not extraction.is_degenerate("A")


def test_the_internvl_baseline_is_asked_as_model_chat_or_as_the_hf_processor():
    """InternVL's model.chat with the internvl2_5 template: its system message, then one "Frame{i}: <image>"
    line per frame (each <image> replaced by <img>, the tokens, </img>) and the question."""
    from liteframe_jax.data.conversations import PromptBuilder
    from liteframe_jax.data.tokenizer import ByteTokenizer
    from liteframe_jax.eval.answer import INTERNVL_SYSTEM_MESSAGE, VideoQA

    assert INTERNVL_SYSTEM_MESSAGE == "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
    tok = ByteTokenizer()
    qa = VideoQA.__new__(VideoQA)  # the prompt side of a baseline, without weights
    qa.builder = PromptBuilder(tok, visual_groups=2, tokens_per_group=3, separators="internvl")
    qa.identity = {"internvl": "/ckpt/InternVL3-8B-hf", "step": None}
    pad = "<|video_pad|>" * 3
    frames = "".join(f"Frame{i}: <img>{pad}</img>\n" for i in (1, 2))
    user = f"<|im_start|>user\n{frames}Who?<|im_end|>\n<|im_start|>assistant\n"
    chat = tok.decode(qa.ask_as("chat")._prompt(prompts.Prompt("Who?"), [0.0, 1.0]), skip_special=False)
    assert chat == f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|>\n" + user
    assert qa.fingerprint["prompt_form"] == "chat"
    hf = tok.decode(qa.ask_as("hf")._prompt(prompts.Prompt("Who?"), [0.0, 1.0]), skip_special=False)
    assert hf == user and qa.fingerprint["prompt_form"] == "hf"
    own = qa.ask_as("chat")._prompt(prompts.Prompt("Who?", system="Watch."), [0.0, 1.0])
    assert tok.decode(own, skip_special=False).startswith("<|im_start|>system\nWatch.<|im_end|>")  # MLVU official's
    with pytest.raises(ValueError, match="unknown InternVL prompt form 'vlmevalkit'"):
        qa.ask_as("vlmevalkit")
    qa.identity = {"run": "runs/lma1", "step": 5}
    with pytest.raises(ValueError, match="applies to the InternVL3 baseline"):
        qa.ask_as("hf")


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
    assert by_id["q6"]["fallback"] and by_id["q6"]["letter"] == scoring.fallback_letter("q6", 5)
    record = json.load(open(tmp_path / "out" / "results.json"))
    assert record["protocol"] == "lmms_eval" and record["lmms_eval_version"] == "0.7.3"
    assert "longvideobench_doc_to_text" in record["protocol_reference"] and record["prompt_form"] is None
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


class ScriptedBaseline(ScriptedAnswerer):
    """A scripted model with the InternVL3 baseline's prompt forms."""

    prompt_form, system_prompt = "chat", "SYSTEM"

    def ask_as(self, form):
        self.prompt_form, self.system_prompt = form, None
        self.fingerprint = {**self.fingerprint, "prompt_form": form}
        return self


def test_results_name_the_baselines_prompt_form_and_a_resume_in_another_is_refused(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]
    write_videomme(tmp_path, video)
    cfg = load_config("eval", "videomme")
    cfg.data.root, cfg.max_questions = str(tmp_path), 1
    assert cfg.model.internvl_prompt == "chat"  # InternVL's model.chat by default
    harness.evaluate(cfg, str(tmp_path / "chat"), ScriptedBaseline(["B"]))
    record = json.load(open(tmp_path / "chat" / "results.json"))
    assert record["prompt_form"] == "chat" and record["model_system_prompt"] == "SYSTEM"
    cfg.model.internvl_prompt = "hf"
    with pytest.raises(ValueError, match="prompt_form"):  # the same workdir, asked the other way
        harness.evaluate(cfg, str(tmp_path / "chat"), ScriptedBaseline(["B"]))
    harness.evaluate(cfg, str(tmp_path / "hf"), ScriptedBaseline(["B"]))
    record = json.load(open(tmp_path / "hf" / "results.json"))
    assert record["prompt_form"] == "hf" and record["model_system_prompt"] is None


def font(text):
    return f'<font color="white" size=".72c">{text}</font>'


# Blocks as the release writes them; the fourth has no font tag, the fifth repeats the first's times (its
# text replaces the first's), the sixth lies after the video's end.
SRT = "\n".join([
    "1", "00:00:00,000 --> 00:00:00,500", font("Hello there."), "",
    "2", "00:00:00,500 --> 00:00:01,000", font("Second line,"), font("continued."), "",
    "3", "00:00:01,200 --> 00:00:01,250", font("Short one."), "",
    "4", "00:00:01,500 --> 00:00:02,000", "no font tag", "",
    "5", "00:00:00,000 --> 00:00:00,500", font("Replaced first."), "",
    "6", "00:00:05,000 --> 00:00:06,000", font("Too late."), ""])


def test_videomme_subtitles_as_lmms_eval_reads_them(tmp_path):
    from liteframe_jax.eval import subtitles
    srt = tmp_path / "fFjv93ACGo8.srt"
    srt.write_bytes(SRT.replace("\n", "\r\n").encode())  # universal newlines, as lmms-eval opens the file
    assert [t for _, _, t in subtitles.parse_srt(SRT)][0] == font("Replaced first.")
    # 24 frames at 12 fps: the 32 sampled frames fall in blocks 1-4; block 3 covers frame 14 alone
    assert subtitles.videomme_subtitles(str(srt), 12.0, 24) == "Replaced first.\nSecond line,\nShort one."
    assert subtitles.videomme_subtitles(str(srt), 12.0, 24, frame_num=2) == "Replaced first."  # frames 0, 23
    assert subtitles.videomme_subtitles(str(tmp_path / "none.srt"), 12.0, 24) == "No subtitles available"


def test_videomme_with_subtitles_asks_with_the_lines_of_its_video(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]  # 24 frames at 12 fps
    write_videomme(tmp_path, video)
    os.makedirs(tmp_path / "subtitle")
    (tmp_path / "subtitle" / "fFjv93ACGo8.srt").write_text(SRT)
    cfg = load_config("eval", "videomme")
    cfg.data.root, cfg.max_questions, cfg.protocol = str(tmp_path), 3, "lmms_eval_w_subtitle"
    model = ScriptedAnswerer(["B", "C", "The answer is A"])
    summary = harness.evaluate(cfg, str(tmp_path / "out"), model)
    assert summary["overall"] == 1.0
    first, _, third = model.asked  # fFjv93ACGo8 has subtitles, Xu9kxV3hH2c none
    assert first.startswith("This video's subtitles are listed below: \nReplaced first.\nSecond line,\nShort one.\n"
                            "Select the best answer to the following multiple-choice question based on the video and "
                            "the subtitles.")
    assert first.endswith("\nA. one\nB. two\nC. three\nD. four\nThe best answer is:")
    assert third.startswith("This video's subtitles are listed below: \nNo subtitles available\nSelect")
    with pytest.raises(ValueError, match="asks with the video's subtitles; none were given"):
        prompts.protocol("videomme", "lmms_eval_w_subtitle").render(Q4)


class ClipAnswerer(ScriptedAnswerer):
    """A scripted model that sees frames 0, 6, 12, 18 (0, 0.5, 1 and 1.5 s of a 12 fps video) in two clips of two
    frames, each clip two visual groups."""

    clip_frames = 2

    def frame_plan(self, path):
        return [0, 6, 12, 18], [0.0, 0.5, 1.0, 1.5]


def _lvb_release(root, video):
    """A LongVideoBench release in its published layout: lvb_val.json, videos/, subtitles/<subtitle_path> in
    both of its forms, and subtitle files that are missing, not JSON or in neither form."""
    os.makedirs(root / "videos")
    os.makedirs(root / "subtitles")
    os.link(video, root / "videos" / "v.mp4")
    (root / "subtitles" / "capt_en.json").write_text(json.dumps([
        {"start": "00:00:10.100", "end": "00:00:10.300", "line": "first"},  # shorter than 1 s: widened
        {"start": "00:00:10.600", "end": "00:00:10.900", "line": "between the clips"},
        {"start": "00:00:11.200", "end": "00:00:11.300", "line": "inside clip two"},
        {"start": "00:00:15.000", "end": "00:00:16.000", "line": "after the video"}]))
    (root / "subtitles" / "asr_en.json").write_text(json.dumps([
        {"timestamp": [0.0, 1.2], "text": " whole"}, {"timestamp": [1.4, None], "text": " to the end"}]))
    (root / "subtitles" / "broken_en.json").write_text('[{"start": "00:00:01.0"')
    (root / "subtitles" / "odd_en.json").write_text(json.dumps([{"line": "no times"}]))
    rows = [{"id": f"s{k}", "video_path": "v.mp4", "question": f"What is said {k}?", "candidates": ["yes", "no"],
             "correct_choice": 0, "duration_group": 15, "question_category": "S2E", "duration": 2.0,
             "starting_timestamp_for_subtitles": offset, "subtitle_path": sub}
            for k, (sub, offset) in enumerate([("capt_en.json", 10), ("asr_en.json", 0), ("gone_en.json", 0),
                                               ("broken_en.json", 0), ("odd_en.json", 0), ("asr_en.json", 0)])]
    del rows[5]["subtitle_path"]
    (root / "lvb_val.json").write_text(json.dumps(rows))


def test_longvideobench_interleaved_subtitles_between_whole_clips(tmp_path):
    video = make_videos(tmp_path / "v", count=1)[0]  # 24 frames at 12 fps
    _lvb_release(tmp_path / "lvb", video)
    cfg = load_config("eval", "longvideobench")
    cfg.data.root, cfg.protocol = str(tmp_path / "lvb"), "official_interleaved"
    model = ClipAnswerer(["A", "B"])
    summary = harness.evaluate(cfg, str(tmp_path / "out"), model)
    clip = "<video_group>" * 2
    # "inside clip two" falls between that clip's frames: it follows the whole clip
    assert model.asked == [
        f"{clip}\nfirst\nbetween the clips\n{clip}\ninside clip two\nQuestion: What is said 0?\nA. yes\nB. no\n"
        "Answer with the option's letter from the given choices directly.",
        f"{clip}\n whole\n{clip}\n to the end\nQuestion: What is said 1?\nA. yes\nB. no\n"
        "Answer with the option's letter from the given choices directly."]
    assert summary["questions"] == 6 and summary["errors"] == 4 and summary["overall"] == pytest.approx(1 / 6)
    record = json.load(open(tmp_path / "out" / "results.json"))
    assert record["subtitle_errors"] == {"malformed": 1, "missing": 1, "no subtitle fields in the annotation row": 1,
                                         "not JSON": 1}
    errors = {r["id"]: r["error"] for r in harness.read_done(str(tmp_path / "out" / "results.jsonl")).values()}
    assert errors["s2"].endswith("gone_en.json: missing")
    assert "odd_en.json: malformed (entry 0 has neither 'timestamp' nor 'start' and 'end')" in errors["s4"]
    # the same questions without subtitles are all asked
    cfg.protocol = "official"
    assert harness.evaluate(cfg, str(tmp_path / "plain"), ClipAnswerer(["A"] * 6))["errors"] == 0


def test_subtitle_lines_between_runs_of_video_groups_in_the_prompt():
    """A run of adjacent group markers becomes those groups as the whole video block writes them; without
    lines between them the prompt is the video block's."""
    from liteframe_jax.data import conversations
    from liteframe_jax.data.tokenizer import ByteTokenizer
    tok = ByteTokenizer()
    pad = tok.video_token
    for separators in ("none", "frame", "timestamp", "internvl"):
        builder = conversations.PromptBuilder(tok, visual_groups=4, tokens_per_group=1, separators=separators)
        times = [0.0, 0.5, 1.0, 1.5]
        whole = builder.messages((("user", "<video>\nQ?"),), times)
        assert builder.messages((("user", "<video_group>" * 4 + "\nQ?"),), times) == whole
        text = builder.messages((("user", "<video_group>" * 2 + "\nhi\n" + "<video_group>" * 2 + "\nQ?"),),
                                times)[0]["content"]
        assert text == (builder.video_block(times, range(0, 2)) + "\nhi\n" + builder.video_block(times, range(2, 4))
                        + "\nQ?")
        assert text.count(pad) == 4
    assert "Frame3: <img>" in text  # groups keep their place in the video
    with pytest.raises(ValueError, match="3 markers for 4 groups"):
        builder.messages((("user", "<video_group>" * 3),))
