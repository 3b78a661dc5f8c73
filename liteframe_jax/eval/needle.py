"""The needle test (`configs/eval.py:needle`): one model asked the needle questions (data/needle.py) at each
of several frame counts, through the benchmark harness (one folder per frame count, each resumable), then
accuracy over frame counts x needle depths as a heat map and accuracy against frames as a curve.

Beside each accuracy it records the needle's coverage: the share of questions where at least one sampled
frame lands on the needle. A model cannot do better than coverage + (1 - coverage) / 6 (it guesses the rest),
so coverage says how much of the accuracy the frame count allows and how much the model earns.

Each frame count's time to first token is measured on this device as the frame sweep measures it (eval/sweep.py,
`latency_runs`; 0: not timed), so that `frontier_with` (another needle run's workdir, e.g. the post-hoc
baseline's) draws accuracy against time to first token for both.

Outputs in the workdir: `frames_<F>/` (the harness's results for F frames, its `latency.json`), `needle.json`
(the grid, the curve, coverage, the set's manifest), `needle_heatmap.png`, `needle_frames.png`, and with timing
`sweep.json` and `frontier.png`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time

import jax
import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.core.log import log
from liteframe_jax.data import needle, sampling
from liteframe_jax.eval import harness, latency
from liteframe_jax.eval import sweep as frame_sweep
from liteframe_jax.eval.answer import VideoQA

CHANCE = 1 / len(needle.OPTIONS)


def at_frames(qa: VideoQA, frames: int) -> VideoQA:
    """The same model and weights reading `frames` frames per video (a multiple of its encoder's clip)."""
    clip = qa.spec.encoder.clip_frames
    if frames <= 0 or frames % clip:
        raise ValueError(f"needle.frames: {frames} is not a positive multiple of the encoder's clip of {clip} frames")
    out = copy.copy(qa)
    out.spec = dataclasses.replace(qa.spec, num_frames=int(frames))
    out.builder = out.spec.prompt_builder(qa.tokenizer)
    out.answerer = type(qa.answerer)(out.spec, qa.tokenizer, qa.graphdef, qa.answerer.dtype,
                                     beside_decoding=qa.decoder == "nvdec")
    return out


def covered(row: dict, frames: int, rule: str = "uniform") -> bool:
    """Whether a `frames`-frame sample of the row's video (by the model's sampling rule) holds a needle frame."""
    idx = sampling.sample_indices(rule, int(row["video_frames"]), frames)
    start = int(row["needle_start"])
    return any(start <= i < start + int(row["needle_frames"]) for i in idx)


def make_set(config) -> str:
    """The needle set of `config.needle` in `config.data.root`, generated on first use."""
    n = config.needle
    return needle.make_needle_set(
        config.data.root, minutes=tuple(n.minutes), depths=tuple(n.depths), per_cell=int(n.per_cell),
        fps=int(n.fps), size=int(n.size), needle_frames=int(n.needle_frames), seed=int(n.seed),
        progress=lambda i, total: log(f"[needle] generating videos: {i}/{total}") if i % 5 == 0 or i == total else None)


def evaluate(config, workdir: str, model: VideoQA) -> dict:
    """Score `model` on the needle set at every `config.needle.frames`; returns the summary."""
    return sweep(config, workdir, lambda frames: at_frames(model, frames), model.source, model.sampling)


def sweep(config, workdir: str, model_at, source: str, rule: str) -> dict:
    """`evaluate` with `model_at(frames)`: the model reading that many frames (anything the harness can ask)."""
    if config.benchmark != "needle":
        raise ValueError(f"eval.needle scores the needle test; config.benchmark={config.benchmark!r}")
    frame_counts = sorted({int(f) for f in config.needle.frames})
    if not frame_counts:
        raise ValueError("needle.frames is empty: give the frame counts to score, e.g. (16, 32, 64, 128)")
    annotation = make_set(config)
    with paths.open(annotation) as f:
        rows = {r["id"]: r for r in json.load(f)}
    device = jax.local_devices()[0]
    compare = frame_sweep.others(config, device.device_kind)  # refused before anything runs
    runs, timed_rows = {}, []
    for i, frames in enumerate(frame_counts):
        log(f"[needle] frame count {frames} ({i + 1} of {len(frame_counts)})")
        folder = os.path.join(workdir, f"frames_{frames}")
        model = model_at(frames)
        scored = harness.evaluate(config, folder, model)
        runs[frames] = list(harness.read_done(os.path.join(folder, "results.jsonl")).values())
        if int(config.latency_runs) > 0:
            timed_rows.append(_timed(config, model.on_devices([device]), frames, scored, folder, workdir))
    summary = summarise(runs, rows, rule)
    summary.update(model=source, annotation=annotation,
                   manifest=json.loads(paths.read_text(os.path.join(config.data.root, needle.MANIFEST))))
    paths.write_text(os.path.join(workdir, "needle.json"), json.dumps(summary, indent=2))
    charts = plot(summary, workdir, source)
    if timed_rows:  # the frame sweep's record: `frontier_with` draws another needle run's beside this one
        record = {"benchmark": config.benchmark, "protocol": config.protocol, "metric": "overall", "model": source,
                  "device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": timed_rows}
        paths.write_text(os.path.join(workdir, frame_sweep.SWEEP), json.dumps(record, indent=2))
        charts.append(frame_sweep.plot([record, *compare], os.path.join(workdir, "frontier.png")))
        log(frame_sweep.table(record))
    log(table(summary) + "\nresults: " + ", ".join([os.path.join(workdir, "needle.json"), *charts]))
    return summary


def _timed(config, model, frames: int, scored: dict, folder: str, workdir: str) -> dict:
    """One needle request at `frames` timed as the frame sweep times one (eval/latency.py): its row."""
    question, prompt = frame_sweep.timing_question(config, model)
    timed = latency.time_to_first_token(model, question.video, prompt, int(config.latency_runs))
    paths.write_text(os.path.join(folder, "latency.json"), json.dumps({**timed, "question": question.id}, indent=2))
    log(f"[needle] {frames} frames: time to first token {timed['ttft_ms']:.1f} ms (encode {timed['encode_ms']:.1f} "
        f"ms, prefill {timed['prefill_ms']:.1f} ms)")
    return frame_sweep.row(frames, scored, timed, folder, workdir)


def summarise(runs: dict[int, list[dict]], rows: dict[str, dict], rule: str) -> dict:
    """Accuracy and coverage per frame count, overall and per (depth, frame count)."""
    depths = sorted({f"{float(r['depth']):.2f}" for r in rows.values()})
    out = {"frames": sorted(runs), "depths": depths, "chance": CHANCE, "accuracy": {}, "coverage": {},
           "grid": {d: {} for d in depths}, "grid_coverage": {d: {} for d in depths}, "questions": {}}
    for frames, results in sorted(runs.items()):
        results = [r for r in results if r["id"] in rows]
        out["questions"][frames] = len(results)
        cover = {r["id"]: covered(rows[r["id"]], frames, rule) for r in results}
        out["accuracy"][frames] = float(np.mean([r["correct"] for r in results]))
        out["coverage"][frames] = float(np.mean(list(cover.values())))
        for d in depths:
            mine = [r for r in results if f"{float(rows[r['id']]['depth']):.2f}" == d]
            out["grid"][d][frames] = float(np.mean([r["correct"] for r in mine])) if mine else float("nan")
            out["grid_coverage"][d][frames] = float(np.mean([cover[r["id"]] for r in mine])) if mine else float("nan")
    return out


def plot(summary: dict, workdir: str, title: str) -> list[str]:
    """`needle_heatmap.png` (depth x frames, accuracy in each cell) and `needle_frames.png` (accuracy and
    coverage against frames)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    frames, depths = summary["frames"], summary["depths"]
    grid = np.array([[summary["grid"][d][f] for f in frames] for d in depths])
    fig, ax = plt.subplots(figsize=(1.1 * len(frames) + 2.5, 0.55 * len(depths) + 1.8))
    im = ax.imshow(grid * 100, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(frames)):
            ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(frames)), [str(f) for f in frames])
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel("frames per question")
    ax.set_ylabel("needle depth (0 = start)")
    ax.set_title(f"needle accuracy: {os.path.basename(title)}", fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    heat = os.path.join(workdir, "needle_heatmap.png")
    with paths.open(heat, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(frames, [summary["accuracy"][f] * 100 for f in frames], "o-", label="accuracy")
    ax.plot(frames, [summary["coverage"][f] * 100 for f in frames], "s--", alpha=0.6,
            label="needle in a sampled frame (coverage)")
    ax.axhline(CHANCE * 100, color="grey", linestyle=":", label=f"chance {CHANCE:.0%}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(frames, [str(f) for f in frames])
    ax.set_xlabel("frames per question")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("needle accuracy against frames", fontsize=9)
    fig.tight_layout()
    curve = os.path.join(workdir, "needle_frames.png")
    with paths.open(curve, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return [heat, curve]


def table(summary: dict) -> str:
    lines = [f"needle test (chance {summary['chance']:.1%}):"]
    for f in summary["frames"]:
        lines.append(f"  {f:>4} frames: accuracy {summary['accuracy'][f]:.1%} (coverage {summary['coverage'][f]:.1%}) "
                     f"over {summary['questions'][f]} questions; by depth " +
                     ", ".join(f"{d} {summary['grid'][d][f]:.0%}" for d in summary["depths"]))
    return "\n".join(lines)
