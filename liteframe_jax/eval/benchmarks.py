"""Benchmark annotation formats, prompts and answer extraction (lmms-eval conventions, see PAPER.md).

Each loader turns the benchmark's own files into `MCQuestion`s; a malformed row is an error naming its id
and field. Formats:
- Video-MME: parquet or JSON rows with videoID, question_id, duration, domain, sub_category, task_type,
  question, options (["A. ...", ...]), answer ("A"); videos at ROOT/data/<videoID>.mp4 (or ROOT/videos/).
- MLVU (dev): ROOT/json/*.json, rows with video (or video_name), question, candidates, answer (text),
  question_type (or task_type); videos at ROOT/video/<name>. Options are lettered in candidate order.
- LongVideoBench (val): ROOT/lvb_val.json, rows with id, video_path, question, candidates or
  option0..option4 ("N/A" = absent), correct_choice (index), duration_group, question_category; videos at
  ROOT/videos/<video_path>.
- demo: the generated QA set's multiple-choice file (data/qa_demo.py).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import random
import re

LETTERS = "ABCDE"
MLVU_MC_TASKS = ("topic_reasoning", "anomaly_reco", "needle", "ego", "plotQA", "order", "count")


@dataclasses.dataclass(frozen=True)
class MCQuestion:
    id: str
    video: str
    question: str
    options: tuple[str, ...]  # option texts without letters
    answer: str  # the correct letter
    categories: tuple[tuple[str, str], ...] = ()  # (name, value): duration, domain, task_type, ...


def _field(row: dict, key: str, rid, bench: str):
    if key not in row or row[key] is None:
        raise ValueError(f"{bench}: row {rid} has no field {key!r}")
    return row[key]


def _strip_letter(option: str) -> str:
    return re.sub(r"^\s*\(?[A-E][\.\):]\s*", "", option)


def _find_video(root: str, folders, name: str) -> str:
    for folder in folders:
        for candidate in (os.path.join(root, folder, name), *glob.glob(os.path.join(root, folder, name + ".*"))):
            if os.path.isfile(candidate):
                return candidate
    return os.path.join(root, folders[0], name)  # reported as missing up front


def _read_table(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow (or pass the JSON export)") from None
        return pq.read_table(path).to_pylist()
    with open(path) as f:
        text = f.read()
    return [json.loads(line) for line in text.splitlines() if line.strip()] if path.endswith(".jsonl") \
        else json.loads(text)


def load_videomme(root: str, annotation: str | None = None) -> list[MCQuestion]:
    if annotation is None:
        found = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True)) or \
            sorted(glob.glob(os.path.join(root, "*.json")))
        if not found:
            raise FileNotFoundError(f"Video-MME: no parquet or JSON annotation under {root!r}")
        annotation = found[0]
    out = []
    for row in _read_table(annotation):
        rid = row.get("question_id", "?")
        options = [_strip_letter(o) for o in _field(row, "options", rid, "Video-MME")]
        answer = str(_field(row, "answer", rid, "Video-MME")).strip()
        if answer not in LETTERS[:len(options)]:
            raise ValueError(f"Video-MME: row {rid} has answer {answer!r} outside its {len(options)} options")
        video_id = _field(row, "videoID", rid, "Video-MME")
        out.append(MCQuestion(str(rid), _find_video(root, ("data", "videos"), f"{video_id}.mp4"),
                              _field(row, "question", rid, "Video-MME"), tuple(options), answer,
                              (("duration", str(row.get("duration", ""))), ("domain", str(row.get("domain", ""))),
                               ("task_type", str(row.get("task_type", ""))))))
    return out


def load_mlvu(root: str, annotation: str | None = None) -> list[MCQuestion]:
    files = [annotation] if annotation else sorted(glob.glob(os.path.join(root, "json", "*.json")))
    if not files:
        raise FileNotFoundError(f"MLVU: no JSON annotation under {os.path.join(root, 'json')!r}")
    out = []
    for path in files:
        for i, row in enumerate(_read_table(path)):
            rid = f"{os.path.basename(path)}#{i}"
            task = row.get("question_type") or row.get("task_type")
            if task is None:
                raise ValueError(f"MLVU: row {rid} has no field 'question_type'")
            if "candidates" not in row:
                continue  # open-ended tasks (summaries) are not part of M-Avg
            options = [str(c) for c in row["candidates"]]
            answer_text = str(_field(row, "answer", rid, "MLVU"))
            if answer_text not in options:
                raise ValueError(f"MLVU: row {rid} answer {answer_text!r} is not among its candidates")
            name = row.get("video") or _field(row, "video_name", rid, "MLVU")
            out.append(MCQuestion(rid, _find_video(root, ("video", "videos"), name),
                                  str(_field(row, "question", rid, "MLVU")), tuple(options),
                                  LETTERS[options.index(answer_text)], (("task_type", str(task)),)))
    return out


def load_longvideobench(root: str, annotation: str | None = None) -> list[MCQuestion]:
    path = annotation or os.path.join(root, "lvb_val.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LongVideoBench: no annotation {path!r}")
    out = []
    for row in _read_table(path):
        rid = row.get("id", "?")
        if "candidates" in row:
            options = [str(c) for c in row["candidates"]]
        else:
            options = [str(row[f"option{k}"]) for k in range(5) if row.get(f"option{k}") not in (None, "N/A")]
        if not options:
            raise ValueError(f"LongVideoBench: row {rid} has no options")
        choice = int(_field(row, "correct_choice", rid, "LongVideoBench"))
        if not 0 <= choice < len(options):
            raise ValueError(f"LongVideoBench: row {rid} correct_choice {choice} outside {len(options)} options")
        out.append(MCQuestion(str(rid), _find_video(root, ("videos", "."), _field(row, "video_path", rid,
                                                                                    "LongVideoBench")),
                              str(_field(row, "question", rid, "LongVideoBench")), tuple(options),
                              LETTERS[choice], (("duration_group", str(row.get("duration_group", ""))),
                                                ("question_category", str(row.get("question_category", ""))))))
    return out


def load_demo(root: str, annotation: str | None = None) -> list[MCQuestion]:
    path = annotation or os.path.join(root, "eval_mc.json")
    out = []
    for row in _read_table(path):
        rid = _field(row, "id", "?", "demo")
        out.append(MCQuestion(rid, os.path.join(root, _field(row, "video", rid, "demo")),
                              _field(row, "question", rid, "demo"), tuple(_field(row, "options", rid, "demo")),
                              _field(row, "answer", rid, "demo"), (("task_type", row.get("task_type", "")),)))
    return out


def options_block(q: MCQuestion) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(q.options))


def prompt(benchmark: str, q: MCQuestion) -> str:
    if benchmark == "videomme":
        return ("Select the best answer to the following multiple-choice question based on the video. "
                "Respond with only the letter (A, B, C, or D) of the correct option.\n"
                f"{q.question}\n{options_block(q)}\nThe best answer is:")
    if benchmark == "mlvu":
        return f"{q.question}\n{options_block(q)}\nOnly give the best option.\nBest option: ("
    if benchmark in ("longvideobench", "demo"):
        return f"{q.question}\n{options_block(q)}\nAnswer with the option's letter from the given choices directly."
    raise ValueError(f"unknown benchmark {benchmark!r}")


_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
             "The correct option is", "Best answer:", "Best option:", "Answer:", "Option:")


def extract_letter(text: str, num_options: int) -> str | None:
    """The first option letter in `text` after stripping answer prefixes (lmms-eval's rule), else None."""
    s = text.strip()
    for p in _PREFIXES:
        s = s.replace(p, "")
    letters = LETTERS[:num_options]
    if len(s.split()) > 10 and not re.search(f"[{letters}]", s):
        return None
    m = re.search(f"[{letters}]", s)
    return m.group(0) if m else None


def fallback_letter(question_id: str, num_options: int, seed: int = 0) -> str:
    """LongVideoBench's protocol: a (seeded) random option when no letter parses."""
    return random.Random(f"{seed}:{question_id}").choice(LETTERS[:num_options])


def is_degenerate(text: str) -> bool:
    """Empty, or one character repeated (e.g. '!!!!!!!!')."""
    s = text.strip()
    return not s or (len(s) >= 4 and len(set(s)) == 1)


LOADERS = {"videomme": load_videomme, "mlvu": load_mlvu, "longvideobench": load_longvideobench,
           "demo": load_demo}
