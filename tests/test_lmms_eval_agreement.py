"""The `lmms_eval` protocol against lmms-eval 0.7.3 itself: its task functions (`doc_to_text` with its yaml's
default kwargs, `process_results`) and its evaluator's reasoning-tag stripping, on documents in each release's
layout, asked and scored by the harness the same way. Needs lmms-eval installed without its dependency list
(`pip install --no-deps -r requirements-lmms-eval.txt`); skipped, with that reason, where it is not."""

import importlib.metadata
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_videos
from test_benchmark_formats import LVB_ROW, MLVU_LMMS_ROWS

from liteframe_jax.data import benchmarks
from liteframe_jax.eval import extraction, harness, prompts, subtitles

INSTALL = "lmms-eval 0.7.3 is not installed (pip install --no-deps -r requirements-lmms-eval.txt)"
try:
    LMMS_VERSION = importlib.metadata.version("lmms_eval")
except importlib.metadata.PackageNotFoundError:
    LMMS_VERSION = None
if LMMS_VERSION != prompts.LMMS_EVAL_VERSION:
    pytest.skip(f"{INSTALL}; found {LMMS_VERSION}", allow_module_level=True)

lmms_videomme = pytest.importorskip("lmms_eval.tasks.videomme.utils", reason=INSTALL)
lmms_mlvu = pytest.importorskip("lmms_eval.tasks.mlvu.utils", reason=INSTALL)
lmms_lvb = pytest.importorskip("lmms_eval.tasks.longvideobench.utils", reason=INSTALL)
from lmms_eval.api.reasoning import parse_reasoning_tags_config, strip_reasoning_tags  # noqa: E402

# Answers of many shapes: terse, verbose, lettered in every form, reasoning blocks, other languages, none.
ANSWERS = ["A", "B", "C", "D", "B.", "(C)", "C) four", "(D) four", "Answer: B", "answer: c", "The answer is A.",
           "The best answer is: D", "Best option:(C) Apples.", "Best answer: C", "The correct option is (B).",
           "答案是B", "答案为 D", "I choose C", "My answer is D because A is wrong", "I think it is C because D is wrong",
           "A cat sits on the mat.", "Option C is correct, not A.", "B, since the man jumps", "D: four", "E",
           "c", "no letter here", "", "   ", "!!!!", "it is hard to say what happens in this video at all honestly",
           "<think>It might be A or D.</think> B", "<think>\nlong\n</think>\n\nThe correct answer is (D).",
           "reasoning opened by the template</think>C", "<analysis>A</analysis>C", "<think>unclosed B",
           "<think>a</think>x<think>b</think> A", "<think>The answer is B.</think>(C)",
           "A seems wrong</think>The answer is (C)", "The answer\nB"]


def _yaml_kwargs(module, name: str) -> dict:
    """The `lmms_eval_specific_kwargs.default` of one of lmms-eval's task yaml files, read as it reads them
    (lines with `!function` dropped)."""
    import yaml
    path = os.path.join(os.path.dirname(module.__file__), name)
    with open(path) as f:
        text = "".join(line for line in f if "!function" not in line)
    return yaml.safe_load(text)["lmms_eval_specific_kwargs"]["default"]


def _evaluator_tags():
    """The default of lmms-eval's `--reasoning_tags` (what its evaluator strips before `process_results`)."""
    import lmms_eval
    with open(os.path.join(os.path.dirname(lmms_eval.__file__), "__main__.py")) as f:
        default = re.search(r'"--reasoning_tags",.*?default=\'(.*?)\'', f.read(), re.S).group(1)
    return parse_reasoning_tags_config(cli_value=default)


def test_the_reasoning_tags_are_lmms_evals():
    tags = _evaluator_tags()
    assert [list(p) for p in extraction.LMMS_EVAL_REASONING_TAGS] == tags
    for answer in ANSWERS:
        ours = extraction.strip_reasoning(answer, extraction.LMMS_EVAL_REASONING_TAGS)
        assert ours == strip_reasoning_tags(answer, tags), answer


def _agree(bench, docs, questions, lmms_text, lmms_letter, protocol="lmms_eval"):
    """Every document's prompt as lmms-eval writes it, and every answer's letter and score as it reads it."""
    proto = prompts.protocol(bench, protocol)
    tags = _evaluator_tags()
    assert len(docs) == len(questions)
    for doc, q in zip(docs, questions):
        subtitles = harness._subtitles(q) if proto.subtitles else None
        assert proto.render(q, subtitles=subtitles).user == lmms_text(doc), q.id
        for answer in ANSWERS:
            row = harness.score(proto, q, answer, None, seed=0)
            theirs, correct = lmms_letter(doc, strip_reasoning_tags(answer, tags))
            if theirs is None:  # no letter: lmms-eval scores it wrong (LongVideoBench: a random option)
                assert not row["parsed"], (q.id, answer)
            else:
                assert row["letter"] == theirs and row["parsed"], (q.id, answer)
                assert row["correct"] == correct, (q.id, answer)


def test_videomme_as_lmms_eval_asks_and_scores(tmp_path):
    """Release rows (the parquet's columns; one option written "A.Black" without the space) loaded by the
    harness and handed to lmms-eval as its documents."""
    os.makedirs(tmp_path / "videomme")
    rows = [{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
             "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": f"001-{k}",
             "task_type": "Counting Problem", "question": question, "options": options, "answer": answer}
            for k, (question, options, answer) in enumerate([
                ("What is the color of the clothing?", ["A. Black.", "B. Gray.", "C. Green.", "D. Brown."], "A"),
                ("How many people appear?", ["A.Black", "B. 2", "C. 3", "D. 4"], "C"),
                ("Which comes first?  ", ["A. the dog", "B. the cat", "C. the bird", "D. the fish"], "D")], 1)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "videomme" / "test-00000-of-00001.parquet")
    questions = benchmarks.load("videomme", str(tmp_path)).questions
    kwargs = _yaml_kwargs(lmms_videomme, "videomme.yaml")

    def letter(doc, answer):
        result = lmms_videomme.videomme_process_results(doc, [answer])["videomme_perception_score"]
        return result["pred_answer"] or None, result["score"] == 1.0

    _agree("videomme", rows, questions, lambda doc: lmms_videomme.videomme_doc_to_text(doc, kwargs), letter)


def test_videomme_with_subtitles_as_lmms_eval_asks_and_scores(tmp_path, monkeypatch):
    """lmms-eval's `videomme_w_subtitle`: its cache folder holds the release (data/, subtitle/); the subtitle
    lines at its 32 sampled frames, from the video's own frame count and rate."""
    from test_eval_harness import SRT
    root = tmp_path / "videomme"
    videos = make_videos(tmp_path / "v", count=2)  # 24 frames at 12 fps
    for folder in ("videomme", "data", "subtitle"):
        os.makedirs(root / folder)
    os.link(videos[0], root / "data" / "fFjv93ACGo8.mp4")
    os.link(videos[1], root / "data" / "Xu9kxV3hH2c.mp4")  # no subtitle file: "No subtitles available"
    (root / "subtitle" / "fFjv93ACGo8.srt").write_text(SRT)
    rows = [{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
             "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": f"001-{k}",
             "task_type": "Counting Problem", "question": f"What is said {k}?",
             "options": ["A. hello", "B. bye", "C. thanks", "D. nothing"], "answer": "A"}
            for k, vid in enumerate(["fFjv93ACGo8", "Xu9kxV3hH2c"], 1)]
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    questions = benchmarks.load("videomme", str(root)).questions
    monkeypatch.setattr(lmms_videomme, "base_cache_dir", str(tmp_path))  # lmms-eval's HF_HOME
    kwargs = _yaml_kwargs(lmms_videomme, "videomme_w_subtitle.yaml")
    assert kwargs["frame_num"] == subtitles.LMMS_EVAL_SUBTITLE_FRAMES
    assert "Second line," in lmms_videomme.videomme_doc_to_text_subtitle(rows[0], kwargs)

    def letter(doc, answer):
        result = lmms_videomme.videomme_process_results(doc, [answer])["videomme_perception_score"]
        return result["pred_answer"] or None, result["score"] == 1.0

    _agree("videomme", rows, questions, lambda doc: lmms_videomme.videomme_doc_to_text_subtitle(doc, kwargs), letter,
           protocol="lmms_eval_w_subtitle")


def test_mlvu_dev_as_lmms_eval_asks_and_scores(tmp_path):
    """`sy1998/MLVU_dev` rows with every released column, the stems' whitespace included."""
    path = tmp_path / "mlvu_dev.json"
    path.write_text(json.dumps(MLVU_LMMS_ROWS))
    questions = benchmarks.load("mlvu", str(tmp_path), str(path)).questions
    kwargs = _yaml_kwargs(lmms_mlvu, "mlvu_dev.yaml")
    def letter(doc, answer):
        result = lmms_mlvu.mlvu_process_results(doc, [answer])["mlvu_percetion_score"]
        return result["pred_answer"] or None, result["pred_answer"] == result["answer"]

    _agree("mlvu", MLVU_LMMS_ROWS, questions, lambda doc: lmms_mlvu.mlvu_doc_to_text(doc, kwargs), letter)


def test_longvideobench_as_lmms_eval_asks_and_scores(tmp_path):
    """The validation parquet's rows (option0..option4, "N/A" where absent)."""
    rows = [{**LVB_ROW, "id": "v_0", "option0": "a cup", "option1": "a phone", "option2": "a pen", "option3": "N/A",
             "option4": "N/A", "correct_choice": 1},
            {**LVB_ROW, "id": "v_1", "question": "Where does it happen? ", "option0": "A kitchen", "option1": "a park",
             "option2": "a car", "option3": "a shop", "option4": "a boat", "correct_choice": 4}]
    parquet = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    questions = benchmarks.load("longvideobench", str(tmp_path), str(parquet)).questions
    kwargs = _yaml_kwargs(lmms_lvb, "longvideobench_val_v.yaml")

    def letter(doc, answer):
        # lmms-eval draws a random option where no letter parses (the harness's draw is seeded instead):
        # offered no options to draw from, its parser raises exactly there
        try:
            lmms_lvb.parse_multi_choice_response(answer, [], {})
        except IndexError:
            return None, False
        result = lmms_lvb.longvideobench_process_results(doc, [answer])["lvb_acc"]
        return result["parsed_pred"], result["parsed_pred"] == result["answer"]

    _agree("longvideobench", rows, questions, lambda doc: lmms_lvb.longvideobench_doc_to_text(doc, kwargs), letter)


# The release's two subtitle forms (the video's own captions; speech recognition, whose last entry has no end),
# with lines shorter than 1 s, lines that no sampled frame falls in and times counted before the clip starts.
LVB_CAPTIONS = [{"start": "00:00:12.000", "end": "00:00:13.500", "line": "Welcome back."},
                {"start": "00:00:14.100", "end": "00:00:14.400", "line": "A short one."},
                {"start": "00:00:31.000", "end": "00:00:38.000", "line": "Now the kitchen."},
                {"start": "00:01:02.250", "end": "00:01:02.500", "line": "Between frames."},
                {"start": "00:01:20.000", "end": "00:01:25.000", "line": "Goodbye!"}]
LVB_SPEECH = [{"timestamp": [0.0, 4.2], "text": " Hello and welcome."},
              {"timestamp": [4.2, 9], "text": " It ends late."},  # an int end: the authors read the video's end
              {"timestamp": [20.5, 21.0], "text": " Quick."}, {"timestamp": [40.0, None], "text": " The rest."}]


def test_longvideobench_interleaved_as_lmms_eval_asks(tmp_path, monkeypatch):
    """`longvideobench_val_i`: the release's subtitle files (both forms) interleaved with its 16 frames, read
    from lmms-eval's cache folder; the harness's interleaving at the same frame times gives the same text."""
    from liteframe_jax.eval import lvb_subtitles
    subs = tmp_path / "datasets" / "longvideobench" / "subtitles"
    os.makedirs(subs)
    (subs / "capt_en.json").write_text(json.dumps(LVB_CAPTIONS))
    (subs / "asr_en.json").write_text(json.dumps(LVB_SPEECH))
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # where lmms-eval looks for the release
    rows = [{**LVB_ROW, "id": "i_0", "subtitle_path": "capt_en.json", "starting_timestamp_for_subtitles": 10,
             "duration": 75.0, "option0": "a cup", "option1": "a phone", "option2": "N/A", "option3": "N/A",
             "option4": "N/A", "correct_choice": 0},
            {**LVB_ROW, "id": "i_1", "subtitle_path": "asr_en.json", "starting_timestamp_for_subtitles": 0,
             "duration": 50.5, "option0": "A kitchen", "option1": "a park", "option2": "a car", "option3": "a shop",
             "option4": "N/A", "correct_choice": 2},
            {**LVB_ROW, "id": "i_2", "subtitle_path": "asr_en.json", "starting_timestamp_for_subtitles": 0,
             "duration": 12.0, "option0": "yes", "option1": "no", "option2": "N/A", "option3": "N/A",
             "option4": "N/A", "correct_choice": 1}]  # shorter than 16 s: one frame a second
    parquet = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    questions = benchmarks.load("longvideobench", str(tmp_path), str(parquet)).questions
    kwargs = _yaml_kwargs(lmms_lvb, "longvideobench_val_i.yaml")
    assert kwargs["insert_interleave_subtitles"]
    proto = prompts.protocol("longvideobench", "lmms_eval_interleaved")
    for doc, q in zip(rows, questions):
        assert q.subtitles == os.path.join(str(tmp_path), "subtitles", doc["subtitle_path"])
        times = lmms_lvb.compute_frame_timestamps(doc["duration"], 16)
        lines = lvb_subtitles.read(str(subs / doc["subtitle_path"]))
        items = lvb_subtitles.interleave(times, 1, lines, q.subtitle_offset, q.duration)
        ours = proto.render(q, subtitles=lvb_subtitles.render(items, "<image>")).user
        assert ours == lmms_lvb.longvideobench_doc_to_text(doc, kwargs), q.id
        assert 0 < sum(isinstance(x, str) for x in items) < len(lines)  # some lines kept, some left out
    # the answers are read as the `lmms_eval` protocol reads them (compared with lmms-eval above)
    assert proto.extraction == prompts.protocol("longvideobench", "lmms_eval").extraction
    assert proto.unparsed == "random" and proto.reasoning_tags == extraction.LMMS_EVAL_REASONING_TAGS
