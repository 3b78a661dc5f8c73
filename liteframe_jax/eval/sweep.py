"""The frame sweep (`--config.frames=64,128,256`): one model scored at each frame count through the benchmark
harness, each count's time to first token measured on this device (eval/latency.py: decode, encode,
prefill), and the frontier drawn: accuracy against time to first token, the paper's latency-accuracy figure.

Outputs in the workdir: `frames_<N>/` (the harness's files for N frames, each count resumable on its own, and
`latency.json`, measured again on every start since the device may have changed), `sweep.json` and
`sweep.md` (one row per count) and `frontier.png`. `frontier_with` names other sweeps' workdirs (e.g. the
InternVL3 baseline's) drawn beside this one; they must be of the same benchmark and protocol, timed on the
same kind of device. In a multi-process run every process evaluates, process 0 alone times (the others wait,
so the host is quiet) and writes the sweep's files.
"""

from __future__ import annotations

import json
import os
import time

import jax

from liteframe_jax.core import paths
from liteframe_jax.core.log import log
from liteframe_jax.data import benchmarks
from liteframe_jax.eval import harness, latency, prompts, shards

SWEEP = "sweep.json"


def frame_counts(config) -> list[int]:
    counts = [int(n) for n in config.frames]
    if any(n <= 0 for n in counts) or len(set(counts)) != len(counts):
        raise ValueError(f"--config.frames={','.join(map(str, config.frames))}: give distinct frame counts above 0, "
                         "e.g. --config.frames=16,32,64")
    if int(config.latency_runs) < 1:  # found before the first count is evaluated, not after
        raise ValueError(f"--config.latency_runs={config.latency_runs}: time each count's request at least once")
    return counts


def models_at(model, counts: list[int]) -> dict:
    """`model` at each count, checked before anything runs: whole encoder clips, visual tokens within the LLM's
    context."""
    out = {}
    for n in counts:
        try:
            out[n] = model.at_frames(n)
        except ValueError as e:
            raise ValueError(f"--config.frames: {e}") from e
        context = out[n].spec.llm.max_position_embeddings
        if out[n].visual_tokens >= context:
            raise ValueError(f"--config.frames: {n} frames make {out[n].visual_tokens} visual tokens, which leave no "
                             f"room for a question in the LLM's context of {context} tokens")
    return out


def read_sweep(folder: str) -> dict:
    path = os.path.join(folder, SWEEP)
    if not paths.isfile(path):
        raise FileNotFoundError(f"--config.frontier_with: {folder} has no {SWEEP} (a finished frame sweep's workdir)")
    return json.loads(paths.read_text(path))


def others(config, device: str) -> list[dict]:
    """The sweeps of `frontier_with`, refused when they cannot share the figure with this one."""
    out = []
    for folder in [f.strip() for f in config.frontier_with.split(",") if f.strip()]:
        other = read_sweep(folder)
        for key, mine in (("benchmark", config.benchmark), ("protocol", config.protocol), ("device", device)):
            if other[key] != mine:
                raise ValueError(f"--config.frontier_with: {folder} was measured with {key} {other[key]!r}, this sweep "
                                 f"with {mine!r}: accuracies or times would not compare")
        out.append(other)
    return out


def timing_question(config, model=None):
    """The request to time: the first question whose video exists, as the protocol asks it (`model`: the one
    timed, whose frames a protocol that interleaves subtitles places them between)."""
    bench = benchmarks.load(config.benchmark, config.data.root, config.data.annotation)
    proto = prompts.protocol(bench.name, config.protocol)
    for q in bench.questions[:config.max_questions] if config.max_questions else bench.questions:
        if paths.isfile(q.video):
            return q, harness.prompt_for(proto, q, model)
    raise ValueError(f"{config.benchmark}: none of the questions' videos exists under {config.data.root}: no "
                     "request to time")


def run(config, workdir: str, model) -> dict:
    """Score `model` at every `config.frames` and time one request at each; returns the sweep's record."""
    counts = frame_counts(config)
    models = models_at(model, counts)
    device = jax.local_devices()[0]
    compare = others(config, device.device_kind)
    question, prompt = timing_question(config, models[counts[0]])
    index, _ = shards.process()
    rows = []
    for i, n in enumerate(counts):
        log(f"[sweep] {n} frames ({i + 1} of {len(counts)})")
        folder = os.path.join(workdir, f"frames_{n}")
        summary = harness.evaluate(config, folder, models[n])
        shards.barrier(f"sweep: timing {n} frames")
        if index == 0:
            if prompts.protocol(config.benchmark, config.protocol).subtitles:  # the prompt follows the frames
                question, prompt = timing_question(config, models[n])
            timed = latency.time_to_first_token(models[n].on_devices([device]), question.video, prompt,
                                                int(config.latency_runs))
            timed["question"] = question.id
            paths.write_text(os.path.join(folder, "latency.json"), json.dumps(timed, indent=2))
            rows.append(row(n, summary, timed, folder, workdir))
            log(f"[sweep] {n} frames: accuracy {rows[-1]['accuracy']:.1%}, time to first token "
                f"{timed['ttft_ms']:.1f} ms (decode {timed['decode_ms']:.1f} ms, encode {timed['encode_ms']:.1f} ms, "
                f"prefill {timed['prefill_ms']:.1f} ms)")
        shards.barrier(f"sweep: timed {n} frames")
    if index != 0:
        return {}
    record = {"benchmark": config.benchmark, "protocol": config.protocol,
              "metric": "m_avg" if any("m_avg" in r for r in rows) else "overall", "model": model.source,
              "fingerprint": dict(model.fingerprint), "device": device.device_kind,
              "platform": device.platform, "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "rows": rows}
    paths.write_text(os.path.join(workdir, SWEEP), json.dumps(record, indent=2))
    paths.write_text(os.path.join(workdir, "sweep.md"), table(record))
    chart = plot([record, *compare], os.path.join(workdir, "frontier.png"))
    log(table(record) + f"\nsweep: {os.path.join(workdir, SWEEP)}, {os.path.join(workdir, 'sweep.md')}, {chart}")
    return record


def row(n: int, summary: dict, timed: dict, folder: str, workdir: str) -> dict:
    out = {"frames": n, "visual_tokens": timed["visual_tokens"], "accuracy": summary.get("m_avg", summary["overall"]),
           "overall": summary["overall"], "questions": summary["questions"], "scored": summary["scored"],
           "errors": summary["errors"], "parse_failures": summary["parse_failures"],
           **{k: timed[k] for k in ("prompt_tokens", "decode_ms", "encode_ms", "prefill_ms", "ttft_ms",
                                    "ttft_with_decode_ms")},
           "results": os.path.relpath(os.path.join(folder, "results.json"), workdir)}
    if "m_avg" in summary:
        out["m_avg"] = summary["m_avg"]
    return out


def table(record: dict) -> str:
    metric = "M-Avg" if record["metric"] == "m_avg" else "accuracy"
    lines = [f"{record['benchmark']} ({record['protocol']} protocol), {record['model']}, timed on {record['device']}",
             "", f"| frames | visual tokens | {metric} | questions | decode ms | encode ms | prefill ms | "
             "time to first token ms | with decode ms |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["rows"]:
        lines.append(f"| {r['frames']} | {r['visual_tokens']} | {r['accuracy']:.1%} | {r['questions']} | "
                     f"{r['decode_ms']:.1f} | {r['encode_ms']:.1f} | {r['prefill_ms']:.1f} | {r['ttft_ms']:.1f} | "
                     f"{r['ttft_with_decode_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: str) -> str:
    """Accuracy against time to first token (encode + prefill), one line a sweep, each point its frame count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for record in records:
        pts = sorted((r["ttft_ms"], r["accuracy"] * 100, r["frames"]) for r in record["rows"])
        name = os.path.basename(record["model"].split(" step ")[0])  # the run folder's or baseline folder's name
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        for x, y, n in pts:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    first = records[0]
    ax.set_xscale("log")  # frame counts double from point to point; milliseconds as numbers, not powers of ten
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_ylim(0, 108)  # room above 100% for a point's label
    ax.set_xlabel(f"time to first token, encode + prefill (ms, {first['device']})")
    ax.set_ylabel(("M-Avg" if first["metric"] == "m_avg" else "accuracy") + " (%)")
    ax.set_title(f"{first['benchmark']} ({first['protocol']}): accuracy against time to first token; points are "
                 "frames per question", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with paths.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
