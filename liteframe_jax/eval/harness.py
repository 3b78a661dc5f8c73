"""The benchmark harness: questions -> frames (uniform over the whole video) -> greedy answer -> letter ->
accuracy overall and per category, written as it goes so an interrupted evaluation resumes exactly.

Outputs in the workdir: `results.jsonl` (one row per question: raw output, extracted letter, correctness,
frame and visual-token counts), `results.json` (summary, config, checkpoint and step, package versions,
parse-failure and degenerate-answer counts) and `categories.png` (accuracy per category).
Missing videos are listed before the first question and scored as errors (wrong), never dropped.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import json
import os
import time

import numpy as np

from liteframe_jax.eval import benchmarks
from liteframe_jax.train.metrics import log

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "av", "numpy")


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_done(path: str) -> dict[str, dict]:
    """Rows already written (a partial last line from a kill is dropped and redone)."""
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[row["id"]] = row
    return done


def score(benchmark: str, q: benchmarks.MCQuestion, raw: str | None, error: str | None, seed: int) -> dict:
    row = {"id": q.id, "video": q.video, "answer": q.answer, "categories": dict(q.categories), "raw": raw,
           "error": error}
    letter = None if raw is None else benchmarks.extract_letter(raw, len(q.options))
    row["parsed"] = letter is not None
    row["degenerate"] = raw is not None and benchmarks.is_degenerate(raw)
    if letter is None and raw is not None and benchmark == "longvideobench":
        letter = benchmarks.fallback_letter(q.id, len(q.options), seed)
        row["fallback"] = True
    row["letter"] = letter
    row["correct"] = letter == q.answer
    return row


def summarise(rows: list[dict], benchmark: str) -> dict:
    acc = lambda rs: float(np.mean([r["correct"] for r in rs])) if rs else float("nan")
    out = {"questions": len(rows), "overall": acc(rows), "errors": sum(r["error"] is not None for r in rows),
           "parse_failures": sum(not r["parsed"] for r in rows if r["error"] is None),
           "degenerate": sum(r["degenerate"] for r in rows), "by": {}}
    names = sorted({k for r in rows for k in r["categories"]})
    for name in names:
        groups = {}
        for r in rows:
            groups.setdefault(r["categories"].get(name, ""), []).append(r)
        out["by"][name] = {value: acc(rs) for value, rs in sorted(groups.items())}
    if benchmark == "mlvu" and "task_type" in out["by"]:
        tasks = [v for k, v in out["by"]["task_type"].items() if k in benchmarks.MLVU_MC_TASKS]
        out["m_avg"] = float(np.mean(tasks)) if tasks else float("nan")
    return out


def plot(summary: dict, path: str, title: str) -> str | None:
    bars = [(f"{name}: {value}", a) for name, groups in summary["by"].items() for value, a in groups.items()]
    if not bars:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(bars) + 2), 4))
    ax.bar(range(len(bars)), [a * 100 for _, a in bars], color="tab:blue")
    ax.axhline(summary["overall"] * 100, color="tab:orange", linestyle="--", label=f"overall {summary['overall']:.1%}")
    ax.set_xticks(range(len(bars)), [b for b, _ in bars], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(config, workdir: str, model) -> dict:
    """Run `config.benchmark` with `model` (an eval.answer.VideoQA); returns the summary."""
    bench = config.benchmark
    questions = benchmarks.LOADERS[bench](config.data.root, config.data.annotation)
    if config.max_questions:
        questions = questions[:config.max_questions]
    missing = sorted({q.video for q in questions if not os.path.isfile(q.video)})
    if missing:
        log(f"[eval] {len(missing)} videos are missing; their questions count as errors:\n  " +
            "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else ""))
    os.makedirs(workdir, exist_ok=True)
    results_path = os.path.join(workdir, "results.jsonl")
    done = read_done(results_path)
    todo = [q for q in questions if q.id not in done]
    log(f"[eval] {bench}: {len(questions)} questions, {len(done)} already answered, {len(todo)} to go; "
        f"{model.num_frames} frames -> {model.visual_tokens} visual tokens per question; model {model.source}")
    bs = int(config.batch_size)
    t0, answered = time.perf_counter(), 0

    def load(q):
        if q.video in missing:
            return q, None, None, "missing video"
        try:
            frames, times = model.load_frames(q.video)
            model.check_prompt(benchmarks.prompt(bench, q), times)
            return q, frames, times, None
        except Exception as e:  # an unreadable video or an over-long prompt is an error row, not a crash
            return q, None, None, f"{type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(int(config.decode_workers)) as pool, open(results_path, "a") as out:
        for start in range(0, len(todo), bs):
            loaded = list(pool.map(load, todo[start:start + bs]))
            ok = [x for x in loaded if x[3] is None]
            raws = {}
            if ok:
                answers = model.answer_batch([x[1] for x in ok], [x[2] for x in ok],
                                             [benchmarks.prompt(bench, x[0]) for x in ok],
                                             max_new_tokens=int(config.max_new_tokens))
                raws = {x[0].id: a for x, a in zip(ok, answers)}
            for q, _, _, error in loaded:
                row = score(bench, q, raws.get(q.id), error, config.seed)
                row.update(frames=model.num_frames, visual_tokens=model.visual_tokens)
                out.write(json.dumps(row) + "\n")
                done[q.id] = row
            out.flush()
            answered += len(loaded)
            rate = answered / (time.perf_counter() - t0)
            log(f"[eval] {len(done)}/{len(questions)} | {rate:.2f} questions/s | "
                f"ETA {int((len(todo) - answered) / max(rate, 1e-9))}s")
    rows = [done[q.id] for q in questions]
    summary = summarise(rows, bench)
    failures = summary["parse_failures"] / max(summary["questions"], 1)
    if failures > config.parse_failure_threshold:
        log(f"[eval] WARNING: {summary['parse_failures']} of {summary['questions']} answers ({failures:.0%}) had no "
            f"parsable letter (threshold {config.parse_failure_threshold:.0%}): the score is not trustworthy")
        summary["parse_failure_warning"] = True
    record = {"benchmark": bench, "summary": summary, "model": model.source, "step": model.step,
              "frames_per_question": model.num_frames, "visual_tokens_per_question": model.visual_tokens,
              "config": json.loads(config.to_json_best_effort()), "versions": _versions(),
              "missing_videos": missing, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(record, f, indent=2)
    chart = plot(summary, os.path.join(workdir, "categories.png"), f"{bench}: {model.source}")
    log(table(summary, bench) + f"\nresults: {results_path}, {os.path.join(workdir, 'results.json')}, {chart}")
    return summary


def table(summary: dict, bench: str) -> str:
    lines = [f"{bench}: overall {summary['overall']:.1%} over {summary['questions']} questions "
             f"({summary['errors']} errors, {summary['parse_failures']} unparsed, {summary['degenerate']} degenerate)"]
    if "m_avg" in summary:
        lines.append(f"  M-Avg (multiple-choice tasks): {summary['m_avg']:.1%}")
    for name, groups in summary["by"].items():
        lines.append(f"  by {name}: " + ", ".join(f"{k or '-'} {v:.1%}" for k, v in groups.items()))
    return "\n".join(lines)
