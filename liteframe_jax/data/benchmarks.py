"""Benchmark releases as published -> multiple-choice questions (`MCQuestion`), with the rows that do not fit
reported by file and row, never a crash.

Layouts read (ROOT is `data.root`; `data.annotation` names another annotation file):
- Video-MME: `ROOT/videomme/test-00000-of-00001.parquet` (columns video_id, duration, domain, sub_category,
  url, videoID, question_id, task_type, question, options ["A. ...", ...], answer "A"), or a JSON/JSONL
  export of the same rows; videos `ROOT/data/<videoID>.mp4` (or `.MP4` / `.mkv`, as lmms-eval accepts);
  subtitles `ROOT/subtitle/<videoID>.srt` (videos without speech have none).
- MLVU dev, the authors' release: `ROOT/json/<n>_<task>.json` (video, duration, question, candidates,
  answer as text, question_type; the needle task is `findNeedle`), videos `ROOT/video/<n>_<task>/<video>`.
  Rows without candidates are the open-ended tasks (listed as not scored). A row whose answer is not among
  its candidates is an annotation error (reported, not scored).
- MLVU dev, lmms-eval's layout (the `sy1998/MLVU_dev` release its `mlvu_dev` task reads): rows with
  video_name, duration, question (the stem, then one "(A) ..." line per option), candidates, answer (a
  letter), task_type and question_id, in a JSON/JSONL/parquet file; videos `ROOT/<video_name>` (or under
  `ROOT/video/`, one task folder deep). Each row is told apart by the fields only its layout has:
  `video_name` + `task_type` (lmms-eval's) or `video` + `question_type` (the authors').
- LongVideoBench val: `ROOT/lvb_val.json` (candidates, correct_choice, duration_group, question_category,
  video_path, ...) or its parquet form (option0..option4, "N/A" = absent); videos `ROOT/videos/<video_path>`;
  subtitles `ROOT/subtitles/<subtitle_path>` (eval/lvb_subtitles.py reads them, with the row's
  starting_timestamp_for_subtitles and duration).
- demo: the generated QA set's `eval_mc.json` (data/qa_demo.py).
- needle: the generated needle test's `needle.json` (data/needle.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

from liteframe_jax.core import paths

LETTERS = "ABCDEFGH"
VIDEOMME_EXTENSIONS = (".mp4", ".MP4", ".mkv")


@dataclasses.dataclass(frozen=True)
class MCQuestion:
    id: str
    video: str
    question: str  # the question stem, without options
    options: tuple[str, ...]  # option texts without letters
    answer: str  # the correct letter
    categories: tuple[tuple[str, str], ...] = ()  # (name, value): duration, domain, task_type, ...
    # The release's own text, for protocols that print it unchanged: the question field where the options
    # are inside it (lmms-eval's MLVU rows), and the options with their letters (Video-MME's "A. ...").
    released_question: str = ""
    released_options: tuple[str, ...] = ()
    subtitles: str = ""  # the release's subtitle file for the video (Video-MME's subtitle/<videoID>.srt), if any
    # LongVideoBench: the seconds its subtitle times count before the video starts, and the video's duration
    # (None where the row does not say)
    subtitle_offset: float | None = None
    duration: float | None = None


@dataclasses.dataclass
class Benchmark:
    """What a release holds: the scored questions, the rows that could not be read, the unscored tasks."""

    name: str
    annotation: str  # the file (or folder) the questions came from
    questions: list[MCQuestion]
    annotation_errors: list[str] = dataclasses.field(default_factory=list)  # "file row N (id): why"
    not_scored: dict[str, int] = dataclasses.field(default_factory=dict)  # open-ended task -> rows

    def report(self) -> str:
        lines = [f"{self.name}: {len(self.questions)} multiple-choice questions from {self.annotation}"]
        if self.annotation_errors:
            lines.append(f"  {len(self.annotation_errors)} annotation errors (not scored):")
            lines += [f"    {e}" for e in self.annotation_errors[:10]]
        if self.not_scored:
            lines.append("  open-ended tasks, not scored: " +
                         ", ".join(f"{k} ({v} rows)" for k, v in sorted(self.not_scored.items())))
        return "\n".join(lines)


class RowError(ValueError):
    """An annotation row that does not fit its format; the message names the row and the field."""


def _field(row: dict, key: str, where: str):
    if not isinstance(row, dict):
        raise RowError(f"{where}: not an object")
    if key not in row or row[key] is None:
        raise RowError(f"{where}: no field {key!r}")
    return row[key]


def _strip_letter(option: str) -> str:
    return re.sub(r"^\s*\(?[A-H][\.\):]\s*", "", str(option))


def read_table(path: str) -> list[dict]:
    """Rows of a parquet, JSON (a list) or JSONL file."""
    if not paths.isfile(path):
        raise FileNotFoundError(f"annotation file {path!r} does not exist")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        with paths.local_copy(path) as local:
            return pq.read_table(local).to_pylist()
    with paths.open(path) as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows")
    return rows


def _first_file(root: str, patterns, bench: str) -> str:
    for pattern in patterns:
        found = paths.glob(os.path.join(root, pattern))
        if found:
            return found[0]
    raise FileNotFoundError(f"{bench}: no annotation under {root!r} (looked for {', '.join(patterns)}); "
                            "pass --config.data.annotation=FILE")


def _existing(candidates) -> str | None:
    return next((c for c in candidates if paths.isfile(c)), None)


def _parse_row(parse, row, where: str, errors: list[str]):
    """`parse(row, where)`, or None with the reason added to `errors`: a value of the wrong type (a letter
    where a number belongs, a string where a list does) is a row that does not fit, not a crash."""
    try:
        return parse(row, where)
    except RowError as e:
        errors.append(str(e))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        errors.append(f"{where}: {type(e).__name__}: {e}")
    return None


def _collect(out: Benchmark, path: str, parse) -> Benchmark:
    """`parse(row, where)` for every row of `path`: its MCQuestion joins the benchmark, a row that does not
    fit the annotation errors."""
    for i, row in enumerate(read_table(path)):
        question = _parse_row(parse, row, f"{os.path.basename(path)} row {i}", out.annotation_errors)
        if question is not None:
            out.questions.append(question)
    return out


def load_videomme(root: str, annotation: str | None = None) -> Benchmark:
    path = annotation or _first_file(root, ("videomme/test-*.parquet", "**/*.parquet", "*.json", "*.jsonl"),
                                     "Video-MME")

    def parse(row, where):
        where += f" (question_id {_field(row, 'question_id', where)})"
        released = tuple(str(o) for o in _list(row, "options", where))
        options = tuple(_strip_letter(o) for o in released)
        answer = str(_field(row, "answer", where)).strip()
        if answer not in LETTERS[:len(options)]:
            raise RowError(f"{where}: answer {answer!r} is not one of its {len(options)} option letters")
        video_id = str(_field(row, "videoID", where))
        stem = os.path.join(root, "data", video_id)
        video = _existing(stem + ext for ext in VIDEOMME_EXTENSIONS) or stem + ".mp4"
        return MCQuestion(str(row["question_id"]), video, str(_field(row, "question", where)), options, answer,
                          tuple((k, str(row.get(k, ""))) for k in ("duration", "domain", "sub_category", "task_type")),
                          released_options=released, subtitles=os.path.join(root, "subtitle", video_id + ".srt"))

    return _collect(Benchmark("videomme", path, []), path, parse)


_OPTION_LINE = re.compile(r"^\(([A-H])\) ?(.*)$")


def _split_options(text: str, where: str) -> tuple[str, tuple[str, ...]]:
    """lmms-eval's MLVU question: the stem, then one "(A) text" line per option. The stem is the text before
    the newline that starts the options, unchanged (whitespace included)."""
    lines = text.split("\n")
    first = next((k for k, line in enumerate(lines) if (m := _OPTION_LINE.match(line)) and m.group(1) == "A"), None)
    if first is None:
        raise RowError(f"{where}: the question holds no '(A) ...' option lines")
    options = []
    while len(lines) > first + 1 and not lines[-1].strip():  # the text may end with a newline
        lines = lines[:-1]
    for line in lines[first:]:
        m = _OPTION_LINE.match(line)
        if not m or m.group(1) != LETTERS[len(options)]:
            raise RowError(f"{where}: line {line!r} after the options is not the option "
                           f"'({LETTERS[len(options)]}) ...'")
        options.append(m.group(2))
    return "\n".join(lines[:first]), tuple(options)


def _list(row: dict, key: str, where: str) -> list:
    value = _field(row, key, where)
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise RowError(f"{where}: field {key!r} is not a list ({type(value).__name__})")
    return list(value)


def _int(row: dict, key: str, where: str) -> int:
    value = _field(row, key, where)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RowError(f"{where}: field {key!r} is not a whole number ({value!r})") from None


# The fields only one MLVU layout has, which tell a row's layout.
MLVU_LMMS_EVAL_FIELDS = ("video_name", "task_type")
MLVU_AUTHORS_FIELDS = ("video", "question_type")


def mlvu_layout(row, where: str) -> str:
    """'lmms_eval' or 'authors', by the fields the row carries."""
    if not isinstance(row, dict):
        raise RowError(f"{where}: not an object")
    # a table's missing cells read as None: a parquet of mixed rows gives every row every column
    lmms = all(row.get(k) is not None for k in MLVU_LMMS_EVAL_FIELDS)
    authors = all(row.get(k) is not None for k in MLVU_AUTHORS_FIELDS)
    if lmms == authors:
        raise RowError(f"{where}: {'both' if lmms else 'neither'} of MLVU's layouts: the authors' rows carry "
                       f"{' and '.join(MLVU_AUTHORS_FIELDS)}, lmms-eval's {' and '.join(MLVU_LMMS_EVAL_FIELDS)}")
    return "lmms_eval" if lmms else "authors"


def load_mlvu(root: str, annotation: str | None = None) -> Benchmark:
    """The authors' `json/<n>_<task>.json` files, or one file in lmms-eval's layout (`data.annotation`, or a
    parquet under ROOT when there is no `json/` folder)."""
    files = [annotation] if annotation else paths.glob(os.path.join(root, "json", "*.json"))
    source = annotation or os.path.join(root, "json")
    if not files:
        files = [_first_file(root, ("**/*.parquet",), "MLVU")]
        source = files[0]
    out = Benchmark("mlvu", source, [])
    for path in files:
        folder = os.path.splitext(os.path.basename(path))[0]  # 1_plotQA: the release's video folder
        for i, row in enumerate(read_table(path)):
            question = _parse_row(functools.partial(_mlvu_row, root, folder, i), row,
                                  f"{os.path.basename(path)} row {i}", out.annotation_errors)
            if isinstance(question, str):  # an open-ended task
                out.not_scored[question] = out.not_scored.get(question, 0) + 1
            elif question is not None:
                out.questions.append(question)
    return out


def _mlvu_row(root: str, folder: str, i: int, row, where: str):
    """An MCQuestion, or the task name of an open-ended row."""
    if mlvu_layout(row, where) == "lmms_eval":
        return _mlvu_lmms_eval_row(root, folder, i, row, where)
    task = str(_field(row, "question_type", where))
    if row.get("candidates") is None:
        return task
    options = tuple(str(c) for c in _list(row, "candidates", where))
    answer_text = str(_field(row, "answer", where))
    if answer_text not in options:
        raise RowError(f"{where}: answer {answer_text!r} is not among its candidates {list(options)}")
    name = str(_field(row, "video", where))
    video = _existing([os.path.join(root, "video", folder, name), os.path.join(root, "video", name)]) or \
        os.path.join(root, "video", folder, name)
    return MCQuestion(f"{folder}#{i}", video, str(_field(row, "question", where)), options,
                      LETTERS[options.index(answer_text)], (("task_type", task),))


def _mlvu_lmms_eval_row(root: str, folder: str, i: int, row: dict, where: str) -> MCQuestion:
    """A `sy1998/MLVU_dev` row: the model is asked the question field as released (options inside it); the
    option texts are its `candidates`, which must be as many as the question's option lines."""
    where += f" (question_id {row.get('question_id')})"
    task = str(_field(row, "task_type", where))
    text = str(_field(row, "question", where))
    stem, lines = _split_options(text, where)
    options = tuple(str(c) for c in _list(row, "candidates", where)) if row.get("candidates") is not None else lines
    if len(options) != len(lines):
        raise RowError(f"{where}: {len(options)} candidates but {len(lines)} option lines in the question")
    answer = str(_field(row, "answer", where)).strip().strip("()")
    if answer not in LETTERS[:len(options)]:
        raise RowError(f"{where}: answer {answer!r} is not one of its {len(options)} option letters")
    name = str(_field(row, "video_name", where))
    video = _existing([os.path.join(root, name), os.path.join(root, "video", name),
                       *paths.glob(os.path.join(root, "video", "*", name))]) or os.path.join(root, name)
    return MCQuestion(f"{folder}#{i}", video, stem, options, answer, (("task_type", task),), released_question=text)


def load_longvideobench(root: str, annotation: str | None = None) -> Benchmark:
    path = annotation or _first_file(root, ("lvb_val.json", "**/validation-*.parquet", "**/*val*.parquet"),
                                     "LongVideoBench")

    def parse(row, where):
        where += f" (id {_field(row, 'id', where)})"
        if row.get("candidates") is not None:
            options = tuple(str(c) for c in _list(row, "candidates", where))
        else:
            options = tuple(str(row[f"option{k}"]) for k in range(5) if row.get(f"option{k}") not in (None, "N/A"))
        if not options:
            raise RowError(f"{where}: no candidates or option0..option4")
        choice = _int(row, "correct_choice", where)
        if not 0 <= choice < len(options):
            raise RowError(f"{where}: correct_choice {choice} is outside its {len(options)} options")
        subtitle = row.get("subtitle_path")
        return MCQuestion(str(row["id"]), os.path.join(root, "videos", str(_field(row, "video_path", where))),
                          str(_field(row, "question", where)), options, LETTERS[choice],
                          (("duration_group", str(row.get("duration_group", ""))),
                           ("question_category", str(row.get("question_category", "")))),
                          subtitles=os.path.join(root, "subtitles", str(subtitle)) if subtitle is not None else "",
                          subtitle_offset=_seconds_or_none(row, "starting_timestamp_for_subtitles", where),
                          duration=_seconds_or_none(row, "duration", where))

    return _collect(Benchmark("longvideobench", path, []), path, parse)


def _seconds_or_none(row: dict, key: str, where: str) -> float | None:
    """A number of seconds the row may leave out (only the subtitle protocols need it)."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"{where}: field {key!r} is not a number of seconds ({value!r})")
    return float(value)


def load_demo(root: str, annotation: str | None = None) -> Benchmark:
    path = annotation or os.path.join(root, "eval_mc.json")

    def parse(row, where):
        return MCQuestion(str(_field(row, "id", where)), os.path.join(root, str(_field(row, "video", where))),
                          str(_field(row, "question", where)), tuple(_field(row, "options", where)),
                          str(_field(row, "answer", where)), (("task_type", str(row.get("task_type", ""))),))

    return _collect(Benchmark("demo", path, []), path, parse)


def load_needle(root: str, annotation: str | None = None) -> Benchmark:
    """The needle test's `needle.json` (data/needle.py), each question filed by its needle's depth and its
    video's length."""
    path = annotation or os.path.join(root, "needle.json")

    def parse(row, where):
        return MCQuestion(str(_field(row, "id", where)), os.path.join(root, str(_field(row, "video", where))),
                          str(_field(row, "question", where)), tuple(_field(row, "options", where)),
                          str(_field(row, "answer", where)),
                          (("depth", f"{float(_field(row, 'depth', where)):.2f}"),
                           ("minutes", f"{float(_field(row, 'minutes', where)):g}")))

    return _collect(Benchmark("needle", path, []), path, parse)


LOADERS = {"videomme": load_videomme, "mlvu": load_mlvu, "longvideobench": load_longvideobench,
           "demo": load_demo, "needle": load_needle}


def load(benchmark: str, root: str, annotation: str | None = None) -> Benchmark:
    if benchmark not in LOADERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {sorted(LOADERS)}")
    loaded = LOADERS[benchmark](root, annotation)
    inside = [q for q in loaded.questions if paths.within(root, q.video)]
    loaded.annotation_errors += [f"question {q.id}: video {q.video} resolves outside the data root {root} (an "
                                 "absolute path, '..' or a symbolic link); not read" for q in loaded.questions
                                 if not paths.within(root, q.video)]
    loaded.questions = inside
    if not loaded.questions:
        raise ValueError(f"{benchmark}: no usable question in {loaded.annotation}\n{loaded.report()}")
    return loaded
