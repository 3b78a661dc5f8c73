"""Benchmark releases read as published: fixtures written in each release's own file names, folders and
fields (Video-MME's parquet, MLVU dev's json/ and video/<n>_<task>/ folders and lmms-eval's MLVU layout,
LongVideoBench's lvb_val.json and parquet)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_videos

from liteframe_jax.data import benchmarks


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("v"), count=1)[0]


def write_videomme(root, video):
    """videomme/test-00000-of-00001.parquet with the release's columns; videos data/<videoID>.mp4 / .MP4."""
    os.makedirs(root / "videomme")
    os.makedirs(root / "data")
    os.link(video, root / "data" / "fFjv93ACGo8.mp4")
    os.link(video, root / "data" / "Xu9kxV3hH2c.MP4")
    rows = []
    for k, (vid, duration, domain, sub, task, answer) in enumerate([
            ("fFjv93ACGo8", "short", "Knowledge", "Humanity & History", "Counting Problem", "B"),
            ("fFjv93ACGo8", "short", "Knowledge", "Humanity & History", "OCR Problems", "C"),
            ("Xu9kxV3hH2c", "medium", "Sports Competition", "Football", "Counting Problem", "A"),
            ("gone00000ab", "long", "Life Record", "Travel", "Temporal Reasoning", "D")]):
        rows.append({"video_id": f"{k // 3 + 1:03d}", "duration": duration, "domain": domain, "sub_category": sub,
                     "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid,
                     "question_id": f"{k // 3 + 1:03d}-{k % 3 + 1}", "task_type": task,
                     "question": f"What is shown {k}?", "options": ["A. one", "B. two", "C. three", "D. four"],
                     "answer": answer})
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    return rows


def test_videomme_parquet_as_released(tmp_path, video):
    write_videomme(tmp_path, video)
    bench = benchmarks.load("videomme", str(tmp_path))
    assert bench.annotation.endswith("videomme/test-00000-of-00001.parquet")
    qs = {q.id: q for q in bench.questions}
    assert set(qs) == {"001-1", "001-2", "001-3", "002-1"}
    q = qs["001-1"]
    assert q.options == ("one", "two", "three", "four") and q.answer == "B" and q.question == "What is shown 0?"
    assert q.released_options == ("A. one", "B. two", "C. three", "D. four")
    assert dict(q.categories) == {"duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
                                  "task_type": "Counting Problem"}
    assert q.video.endswith("data/fFjv93ACGo8.mp4") and os.path.isfile(q.video)
    assert qs["001-3"].video.endswith("data/Xu9kxV3hH2c.MP4")  # the other spelling lmms-eval accepts
    assert not os.path.exists(qs["002-1"].video)  # missing: scored as an error by the harness


def write_mlvu(root, video):
    """MLVU dev as the authors release it: json/<n>_<task>.json, videos under video/<n>_<task>/."""
    os.makedirs(root / "json")
    for folder, name in (("1_plotQA", "movie101_66.mp4"), ("2_needle", "needle_32.mp4"), ("3_ego", "ego_35.mp4")):
        os.makedirs(root / "video" / folder)
        os.link(video, root / "video" / folder / name)
    (root / "json" / "1_plotQA.json").write_text(json.dumps([
        {"video": "movie101_66.mp4", "duration": 246, "question": "What colour is the car?",
         "candidates": ["red", "blue", "green", "white"], "answer": "green", "question_type": "plotQA"},
        {"video": "movie101_66.mp4", "duration": 246, "question": "Who drives?",
         "candidates": ["a man", "a woman", "a dog", "nobody"], "answer": "a man", "question_type": "plotQA"}]))
    (root / "json" / "2_needle.json").write_text(json.dumps([
        {"video": "needle_32.mp4", "duration": 467, "question": "What is inserted?",
         "candidates": ["a cat", "a hat", "a bat", "a mat"], "answer": "a hat", "question_type": "findNeedle"},
        # a real-release slip: the answer text is not among the candidates
        {"video": "needle_32.mp4", "duration": 467, "question": "Which object?",
         "candidates": ["cup", "pen", "book", "key"], "answer": "spoon", "question_type": "findNeedle"}]))
    (root / "json" / "3_ego.json").write_text(json.dumps([
        {"video": "ego_35.mp4", "duration": 300, "question": "Where did I put the keys?",
         "candidates": ["table", "drawer", "bag", "floor"], "answer": "bag", "question_type": "ego"}]))
    (root / "json" / "8_sub_scene.json").write_text(json.dumps([
        {"video": "subPlot_1.mp4", "duration": 500, "question": "Describe the scene.",
         "answer": "A man walks.", "question_type": "subPlot", "scoring_points": ["man", "walks"]}]))


def test_mlvu_dev_as_released(tmp_path, video):
    write_mlvu(tmp_path, video)
    bench = benchmarks.load("mlvu", str(tmp_path))
    tasks = [dict(q.categories)["task_type"] for q in bench.questions]
    assert sorted(tasks) == ["ego", "findNeedle", "plotQA", "plotQA"]  # the needle task as the files name it
    assert all(os.path.isfile(q.video) for q in bench.questions)  # video/<n>_<task>/<file>
    car = next(q for q in bench.questions if q.question == "What colour is the car?")
    assert car.answer == "C" and car.options == ("red", "blue", "green", "white")
    assert len(bench.annotation_errors) == 1
    assert "2_needle.json row 1" in bench.annotation_errors[0] and "'spoon'" in bench.annotation_errors[0]
    assert bench.not_scored == {"subPlot": 1}
    assert "open-ended tasks, not scored: subPlot (1 rows)" in bench.report()


# `sy1998/MLVU_dev` rows as lmms-eval's `mlvu_dev` task reads them: every released column; the stem of the
# first keeps the trailing space the release's text has before its option lines.
MLVU_LMMS_ROWS = [
    {"video_name": "count_12.mp4", "duration": 300.5,
     "question": "How many times does he jump? \n(A) 1\n(B) 3\n(C) 5\n(D) 7",
     "candidates": ["1", "3", "5", "7"], "answer": "B", "task_type": "count", "question_id": "count_0"},
    {"video_name": "needle_3.mp4", "duration": 467.0, "question": "What is inserted?\n(A) a cat\n(B) a hat\n",
     "candidates": ["a cat", "a hat"], "answer": "A", "task_type": "needle", "question_id": "needle_1"},
]


def write_mlvu_lmms_eval(root, video, name="mlvu_dev.parquet", extra=()):
    """lmms-eval's MLVU release: one table of rows, videos found by video_name under video/<task>/."""
    for folder, file in (("count", "count_12.mp4"), ("needle", "needle_3.mp4")):
        os.makedirs(root / "video" / folder, exist_ok=True)
        os.link(video, root / "video" / folder / file)
    rows = MLVU_LMMS_ROWS + list(extra)
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), root / name)
    else:
        (root / name).write_text(json.dumps(rows))
    return root / name


def test_mlvu_in_lmms_eval_layout(tmp_path, video):
    """Told from the authors' rows by video_name and task_type although it also has candidates; the stem
    keeps its text exactly; the question as released is kept for the prompt lmms-eval asks."""
    bad = [{**MLVU_LMMS_ROWS[0], "question_id": "count_9", "answer": "E"},
           {**MLVU_LMMS_ROWS[0], "question_id": "count_10", "candidates": ["1", "3"]},
           {**MLVU_LMMS_ROWS[0], "question_id": "count_11", "question": "How many?\n(A) 1\nsee above"}]
    path = write_mlvu_lmms_eval(tmp_path, video, extra=bad)
    bench = benchmarks.load("mlvu", str(tmp_path))  # no json/ folder: the parquet under ROOT
    assert bench.annotation == str(path)
    count, needle = bench.questions
    assert count.question == "How many times does he jump? " and count.options == ("1", "3", "5", "7")
    assert count.answer == "B" and count.released_question == MLVU_LMMS_ROWS[0]["question"]
    assert dict(count.categories) == {"task_type": "count"} and count.video.endswith("video/count/count_12.mp4")
    assert needle.answer == "A" and os.path.isfile(needle.video)
    errors = bench.annotation_errors
    assert len(errors) == 3 and all(e.startswith("mlvu_dev.parquet row ") for e in errors)
    assert "row 2 (question_id count_9): answer 'E'" in errors[0]
    assert "row 3 (question_id count_10): 2 candidates but 4 option lines" in errors[1]
    assert "row 4 (question_id count_11): line 'see above' after the options" in errors[2]
    both = {"video": "x.mp4", "video_name": "x.mp4", "question": "Q?", "task_type": "count", "question_type": "count"}
    path = write_mlvu_lmms_eval(tmp_path / "j", video, "dev.json", extra=[both])
    from_json = benchmarks.load("mlvu", str(tmp_path / "j"), str(path))
    assert [q.released_question for q in from_json.questions] == [r["question"] for r in MLVU_LMMS_ROWS]
    assert from_json.annotation_errors == ["dev.json row 2: both of MLVU's layouts: the authors' rows carry video and "
                                           "question_type, lmms-eval's video_name and task_type"]


def test_rows_that_do_not_fit_are_reported_never_a_crash(tmp_path, video):
    write_mlvu(tmp_path, video)
    (tmp_path / "json" / "9_odd.json").write_text(json.dumps([
        "not a row", {"question": "Q?", "answer": "a"},  # neither layout
        {"video": "ego_35.mp4", "question": "Q?", "candidates": "abc", "answer": "a", "question_type": "ego"}]))
    bench = benchmarks.load("mlvu", str(tmp_path))
    odd = [e for e in bench.annotation_errors if e.startswith("9_odd.json")]
    assert odd == ["9_odd.json row 0: not an object",
                   "9_odd.json row 1: neither of MLVU's layouts: the authors' rows carry video and question_type, "
                   "lmms-eval's video_name and task_type",
                   "9_odd.json row 2: field 'candidates' is not a list (str)"]
    assert len(bench.questions) == 4  # the release's rows still load
    rows = [{**LVB_ROW, "candidates": ["a", "b"]},
            {**LVB_ROW, "id": "x1", "candidates": ["a"], "correct_choice": "one"}]
    (tmp_path / "lvb_val.json").write_text(json.dumps(rows))
    lvb = benchmarks.load("longvideobench", str(tmp_path))
    assert len(lvb.questions) == 1
    assert lvb.annotation_errors == ["lvb_val.json row 1 (id x1): field 'correct_choice' is not a whole number ('one')"]


LVB_ROW = {"video_id": "86CxyhFV9MI", "duration_group": 600, "question": "What is the man holding?",
           "question_wo_referring_query": "What is he holding?", "starting_timestamp_for_subtitles": 0,
           "duration": 523.4, "view_count": 1, "video_path": "86CxyhFV9MI.mp4", "correct_choice": 1,
           "position": [1, 2], "topic_category": "NP-News-Programs", "question_category": "TOS",
           "level": "L2-Relation", "id": "86CxyhFV9MI_0", "subtitle_path": "86CxyhFV9MI_en.json"}


def test_longvideobench_json_and_parquet(tmp_path, video):
    os.makedirs(tmp_path / "videos")
    os.link(video, tmp_path / "videos" / "86CxyhFV9MI.mp4")
    (tmp_path / "lvb_val.json").write_text(json.dumps([{**LVB_ROW, "candidates": ["a cup", "a phone", "a pen"]}]))
    from_json = benchmarks.load("longvideobench", str(tmp_path)).questions[0]
    assert from_json.options == ("a cup", "a phone", "a pen") and from_json.answer == "B"
    assert dict(from_json.categories) == {"duration_group": "600", "question_category": "TOS"}
    assert os.path.isfile(from_json.video)
    parquet = tmp_path / "validation-00000-of-00001.parquet"
    row = {**LVB_ROW, "option0": "a cup", "option1": "a phone", "option2": "a pen", "option3": "N/A",
           "option4": "N/A"}
    bad = {**row, "id": "bad_1", "correct_choice": 3}
    pq.write_table(pa.Table.from_pylist([row, bad]), parquet)
    bench = benchmarks.load("longvideobench", str(tmp_path), str(parquet))
    assert bench.questions == [from_json]
    assert "(id bad_1): correct_choice 3 is outside its 3 options" in bench.annotation_errors[0]


def test_missing_field_names_row_and_field(tmp_path):
    (tmp_path / "lvb_val.json").write_text(json.dumps([{"id": "bad7", "video_path": "v.mp4", "question": "Q",
                                                        "candidates": ["a", "b"]}]))
    with pytest.raises(ValueError, match=r"row 0 \(id bad7\): no field 'correct_choice'"):
        benchmarks.load("longvideobench", str(tmp_path))


def test_a_video_outside_the_data_root_is_not_read_and_counted(tmp_path, video):
    os.makedirs(tmp_path / "videos")
    os.link(video, tmp_path / "videos" / "86CxyhFV9MI.mp4")
    escaping = [{**LVB_ROW, "id": "up", "video_path": "../../secret.mp4"},
                {**LVB_ROW, "id": "abs", "video_path": "/etc/passwd"}]
    (tmp_path / "lvb_val.json").write_text(json.dumps([{**LVB_ROW, "candidates": ["a", "b", "c"]}] +
                                                      [{**r, "candidates": ["a", "b", "c"]} for r in escaping]))
    bench = benchmarks.load("longvideobench", str(tmp_path))
    assert [q.id for q in bench.questions] == [LVB_ROW["id"]]
    assert len(bench.annotation_errors) == 2
    assert all("resolves outside the data root" in e for e in bench.annotation_errors)
    assert "question up: video" in bench.annotation_errors[0] and "question abs" in bench.annotation_errors[1]
