"""One scorer for every answer the package grades, so that a figure means the same wherever it is reported:

- a benchmark question (the harness, eval/harness.py): `score` reads the letter by the protocol's rule
  (eval/prompts.py, eval/extraction.py), its reasoning blocks removed first, and scores an unparsed answer as
  the protocol says; `summarise` gives accuracy overall and per category.
- a held-out conversation (LMA's evaluation during training, train/lma.py): `score_held_out` reads a lettered
  answer (`format` 'mc') exactly as the harness reads the demo's lettered questions, which such rows are
  written in (`HELD_OUT_PROTOCOL`), and holds an open-ended one against the gold text, case and punctuation
  aside; `held_out_metrics` gives accuracy and chance overall, per task type and per format.
"""

from __future__ import annotations

import random
import string

import numpy as np

from liteframe_jax.data.benchmarks import LETTERS, MCQuestion
from liteframe_jax.data.conversations import VIDEO_MARKER
from liteframe_jax.eval import extraction, prompts

# How a held-out row's lettered answer is read: as the harness reads the demo's questions (data/qa_demo.py
# writes both in this format), so LMA's figure and the harness's agree on the same questions.
HELD_OUT_PROTOCOL = prompts.protocol("demo", "official")


def read_letter(proto: prompts.Protocol, raw: str, num_options: int) -> tuple[str, str | None]:
    """(what the protocol's rule reads: `raw` without its reasoning blocks, the letter it reads there or None)."""
    read = extraction.strip_reasoning(raw, proto.reasoning_tags) if proto.reasoning_tags else raw
    return read, extraction.extract(proto.extraction, read, num_options)


# --- benchmark questions (the harness) ---
def score(proto: prompts.Protocol, q: MCQuestion, raw: str | None, error: str | None, seed: int) -> dict:
    """One result row. `scored` is False where the protocol leaves an unparsed answer out of the denominator;
    an error (missing or unreadable video) always scores as wrong."""
    row = {"id": q.id, "video": q.video, "answer": q.answer, "categories": dict(q.categories), "raw": raw,
           "error": error}
    letter = None
    if raw is not None:
        read, letter = read_letter(proto, raw, len(q.options))
        if read != raw:
            row["read"] = read  # what the rule read: the answer without its reasoning blocks
    row["parsed"] = letter is not None
    row["degenerate"] = raw is not None and extraction.is_degenerate(raw)
    row["scored"] = True
    if letter is None and raw is not None:
        if proto.unparsed == "random":
            letter = fallback_letter(q.id, len(q.options), seed)
            row["fallback"] = True
        elif proto.unparsed == "excluded":
            row["scored"] = False
    row["letter"] = letter
    row["correct"] = letter == q.answer
    return row


def fallback_letter(question_id: str, num_options: int, seed: int = 0) -> str:
    """LongVideoBench's rule for an unparsed answer: a random option, seeded per question so it repeats."""
    return random.Random(f"{seed}:{question_id}").choice(LETTERS[:num_options])


def summarise(rows: list[dict], benchmark: str) -> dict:
    """Accuracy over the scored rows, overall and per category; MLVU's M-Avg is the mean over task types."""
    def acc(rs):
        rs = [r for r in rs if r.get("scored", True)]
        return float(np.mean([r["correct"] for r in rs])) if rs else float("nan")

    out = {"questions": len(rows), "scored": sum(r.get("scored", True) for r in rows), "overall": acc(rows),
           "errors": sum(r["error"] is not None for r in rows),
           "parse_failures": sum(not r["parsed"] for r in rows if r["error"] is None),
           "degenerate": sum(r["degenerate"] for r in rows), "by": {}}
    names = sorted({k for r in rows for k in r["categories"]})
    for name in names:
        groups = {}
        for r in rows:
            groups.setdefault(r["categories"].get(name, ""), []).append(r)
        out["by"][name] = {value: acc(rs) for value, rs in sorted(groups.items())}
    if benchmark == "mlvu" and "task_type" in out["by"]:
        out["m_avg"] = float(np.mean(list(out["by"]["task_type"].values())))
    return out


# --- held-out conversations (LMA) ---
def normalise_answer(text: str) -> str:
    return text.strip().lower().strip(string.punctuation + " ").strip()


def score_held_out(row, answer: str) -> dict:
    """A held-out row's answer (a data/conversations.py row, its last turn the gold answer), right or wrong."""
    gold, fmt, n = row.turns[-1][1], row.get("format", "open"), row.get("num_options")
    if fmt == "mc":
        correct = read_letter(HELD_OUT_PROTOCOL, answer, n)[1] == gold
    else:
        correct = normalise_answer(answer) == normalise_answer(gold)
    return {"id": row.id, "task_type": row.get("task_type", "all"), "format": fmt,
            "question": row.turns[-2][1].replace(VIDEO_MARKER, "").strip(), "gold": gold,
            "answer": answer, "correct": bool(correct), "chance": 1.0 / n if n else float("nan")}


def held_out_metrics(results: list[dict]) -> dict:
    """Accuracy (and chance) overall and per task type; for a set holding both open-ended and lettered
    questions, each format on its own too (`accuracy_mc`, `accuracy_mc_colour`, ...)."""
    def add(prefix, rs):
        metrics[f"accuracy{prefix}"] = float(np.mean([r["correct"] for r in rs]))
        chance = [r["chance"] for r in rs if not np.isnan(r["chance"])]
        if chance:
            metrics[f"chance{prefix}"] = float(np.mean(chance))
        for task in sorted({r["task_type"] for r in rs}):
            metrics[f"accuracy{prefix}_{task}"] = float(np.mean([r["correct"] for r in rs if r["task_type"] == task]))

    metrics = {}
    add("", results)
    formats = sorted({r["format"] for r in results})
    if len(formats) > 1:
        for fmt in formats:
            add(f"_{fmt}", [r for r in results if r["format"] == fmt])
    return metrics
