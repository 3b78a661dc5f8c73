"""The benchmark harness: questions -> frames (over the whole video, by the model's rule) -> greedy answer under a
protocol's prompt -> letter by the protocol's rule -> accuracy overall and per category, written as it goes
so an interrupted evaluation resumes exactly.

Outputs in the workdir: `results.jsonl` (one row per question: raw output, extracted letter, correctness,
frame and visual-token counts), `results_fingerprint.json` (model, protocol, prompts and settings the rows
were made with: a resume by anything else is refused), `results.json` (summary, protocol, the code it
reproduces and the lmms-eval version it follows, prompt hash, the InternVL3 baseline's prompt form,
preprocessing, config, checkpoint and step, package versions, annotation errors, parse-failure and
degenerate-answer counts) and `categories.png` (accuracy per category).
Missing videos are listed before the first question and scored as errors (wrong), never dropped; so are
LongVideoBench questions whose subtitle file a subtitle protocol cannot read (`results.json` counts them by
reason in `subtitle_errors`).
In a multi-process run each process answers its share into a shard of its own and process 0 merges them
(eval/shards.py); each process splits its batches over its devices (`batch_size` questions a device).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.metadata
import json
import os
import time

from liteframe_jax.core import paths
from liteframe_jax.core.log import log
from liteframe_jax.data import benchmarks, sampling, video
from liteframe_jax.data.benchmarks import MCQuestion
from liteframe_jax.data.conversations import GROUP_MARKER
from liteframe_jax.eval import lvb_subtitles, prompts, shards, subtitles
from liteframe_jax.eval.scoring import score, summarise  # the one scorer (eval/scoring.py)
from liteframe_jax.eval.shards import read_done  # noqa: F401 (the harness's reader of results.jsonl)

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "av", "numpy")


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
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
    with paths.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def fingerprint(config, model, proto: prompts.Protocol, bench: benchmarks.Benchmark) -> dict:
    """Everything that makes two sets of answers comparable: the model (checkpoint, step, its config), what
    it sees (frames, preprocessing), what it is asked (protocol and prompt hash) and how it answers."""
    return {"benchmark": bench.name, "annotation": paths.resolve(bench.annotation), "protocol": proto.name,
            "prompt_sha256": proto.fingerprint(), "model": model.fingerprint, "frames": model.num_frames,
            "visual_tokens": model.visual_tokens, "preprocessing": model.preprocessing,
            "max_new_tokens": int(config.max_new_tokens), "seed": int(config.seed)}


def check_resumable(path: str, results_path: str, want: dict) -> None:
    """An existing results.jsonl may only be continued by the same model, protocol and settings."""
    if not paths.exists(results_path) or paths.getsize(results_path) == 0:
        return
    if not paths.exists(path):
        raise ValueError(f"{results_path} exists but has no {os.path.basename(path)}: it was written by another "
                         "version or by hand; use another --workdir")
    with paths.open(path) as f:
        have = json.load(f)
    differ = [k for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)]
    if differ:
        lines = "\n".join(f"  {k}: answers so far {have.get(k)!r}, now {want.get(k)!r}" for k in differ)
        raise ValueError(f"{results_path} holds answers from another evaluation; they would be mixed into this "
                         f"one's score:\n{lines}\nUse another --workdir (or delete the folder to start over).")


def _subtitles(q: MCQuestion) -> str:
    """The subtitle lines of the question's video, at the frames lmms-eval samples for them."""
    info = video.probe(q.video)
    return subtitles.videomme_subtitles(q.subtitles, info.fps, info.num_frames)


def _interleaved(q: MCQuestion, model) -> str:
    """The model's clips (runs of `GROUP_MARKER`) and the lines of the video's subtitle file in the authors'
    order, placed by the times of the frames the model sees (the authors place lines by their own sampled
    frames' times; lmms-eval's `_i` task by an even grid of 16 times over `duration`)."""
    info = video.probe(q.video)
    lines = lvb_subtitles.read(q.subtitles)
    indices, group_times = model.frame_plan(q.video)
    clips = len(indices) // model.clip_frames
    frame_times = [sampling.frame_time(i, info.fps) for i in indices]  # as the frame plan times its groups
    items = lvb_subtitles.interleave(frame_times, model.clip_frames, lines, q.subtitle_offset, q.duration)
    return lvb_subtitles.render(items, GROUP_MARKER * (len(group_times) // clips))


def subtitle_problems(questions: list[MCQuestion], root: str) -> dict[str, lvb_subtitles.SubtitleError]:
    """LongVideoBench: each question whose subtitles cannot be read, with why (its subtitle file read once)."""
    files, out = {}, {}
    for q in questions:
        if not q.subtitles or q.subtitle_offset is None or q.duration is None:
            out[q.id] = lvb_subtitles.SubtitleError(lvb_subtitles.NOT_IN_ANNOTATION, q.subtitles or "-",
                                                    "subtitle_path, starting_timestamp_for_subtitles, duration")
            continue
        if q.subtitles not in files:
            try:
                if not paths.within(root, q.subtitles):
                    raise lvb_subtitles.SubtitleError(lvb_subtitles.OUTSIDE_ROOT, q.subtitles)
                lvb_subtitles.read(q.subtitles)
                files[q.subtitles] = None
            except lvb_subtitles.SubtitleError as e:
                files[q.subtitles] = e
        if files[q.subtitles] is not None:
            out[q.id] = files[q.subtitles]
    return out


def prompt_for(proto: prompts.Protocol, q: MCQuestion, model=None) -> prompts.Prompt:
    """The question as `proto` asks it (with its video's subtitles where the protocol reads them; LongVideoBench
    interleaves them with `model`'s clips)."""
    if not proto.subtitles:
        return proto.render(q)
    if proto.benchmark != "longvideobench":
        return proto.render(q, subtitles=_subtitles(q))
    if model is None:
        raise ValueError(f"the {proto.name!r} protocol puts the subtitles between the model's clips: pass the model")
    return proto.render(q, subtitles=_interleaved(q, model))


def evaluate(config, workdir: str, model) -> dict:
    """Run `config.benchmark` with `model` (an eval.answer.VideoQA) under `config.protocol`; returns the summary."""
    bench = benchmarks.load(config.benchmark, config.data.root, config.data.annotation)
    proto = prompts.protocol(bench.name, config.protocol)
    form = config.model.get("internvl_prompt") if "model" in config else None
    if form and getattr(model, "prompt_form", None) not in (None, form):  # the InternVL3 baseline's
        model.ask_as(form)
    log("[eval] " + bench.report())
    questions = bench.questions[:config.max_questions] if config.max_questions else bench.questions
    missing = sorted({q.video for q in questions if not paths.isfile(q.video)})
    if missing:
        log(f"[eval] {len(missing)} videos are missing; their questions count as errors:\n  " +
            "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else ""))
    unreadable = {}  # LongVideoBench: question -> why its subtitles cannot be read
    if proto.subtitles and bench.name == "longvideobench":
        unreadable = subtitle_problems(questions, config.data.root)
    if unreadable:
        log(f"[eval] {len(unreadable)} questions' subtitles cannot be read; they count as errors: " +
            ", ".join(f"{why} {n}" for why, n in _reasons(unreadable).items()) + "\n  " +
            "\n  ".join(sorted({str(e) for e in unreadable.values()})[:20]))
    paths.makedirs(workdir)
    index, count = shards.process()
    results_path = shards.shard_path(workdir, index, count)
    want = fingerprint(config, model, proto, bench)
    fingerprint_path = os.path.join(workdir, "results_fingerprint.json")
    for path in shards.answer_files(workdir):  # answers of any earlier run, of any number of processes
        check_resumable(fingerprint_path, path, want)
    # every process writes it (the same text) before its first answer: rows are never on disk without it
    paths.write_text(fingerprint_path, json.dumps(want, indent=2))
    if count > 1:
        paths.makedirs(os.path.dirname(results_path))
    done = shards.read_answers(workdir)
    todo = [q for q in shards.deal(questions, index, count) if q.id not in done]
    devices = getattr(model, "device_count", 1)
    log(f"[eval] {bench.name} ({proto.name} protocol, prompts {proto.fingerprint()}): {len(questions)} questions, "
        f"{len(done)} already answered, {len(todo)} to go" + (f" in process 0 of {count}" if count > 1 else "") +
        f" on {devices} device{'s' if devices > 1 else ''}; {model.num_frames} frames -> {model.visual_tokens} "
        f"visual tokens per question; model {model.source}")
    bs = int(config.batch_size) * devices
    t0, answered = time.perf_counter(), 0

    def load(q):
        if q.video in missing:
            return q, None, None, "missing video", None
        if q.id in unreadable:
            return q, None, None, str(unreadable[q.id]), None
        try:
            frames, times = model.load_frames(q.video)
            prompt = prompt_for(proto, q, model)
            model.check_prompt(prompt, times)
            return q, frames, times, None, prompt
        except Exception as e:  # an unreadable video or an over-long prompt is an error row, not a crash
            return q, None, None, f"{type(e).__name__}: {e}", None

    with concurrent.futures.ThreadPoolExecutor(int(config.decode_workers)) as pool, paths.AppendFile(results_path) as out:
        for start in range(0, len(todo), bs):
            loaded = list(pool.map(load, todo[start:start + bs]))
            ok = [x for x in loaded if x[3] is None]
            raws = {}
            if ok:
                answers = model.answer_batch([x[1] for x in ok], [x[2] for x in ok], [x[4] for x in ok],
                                             max_new_tokens=int(config.max_new_tokens))
                raws = {x[0].id: a for x, a in zip(ok, answers)}
            for q, _, _, error, _ in loaded:
                row = score(proto, q, raws.get(q.id), error, config.seed)
                row.update(frames=model.num_frames, visual_tokens=model.visual_tokens)
                out.write(json.dumps(row) + "\n")
                done[q.id] = row
            out.flush()
            answered += len(loaded)
            rate = answered / (time.perf_counter() - t0)
            log(f"[eval] {len(done)}/{len(questions)} | {rate:.2f} questions/s" +
                (" in process 0" if count > 1 else "") + f" | ETA {int((len(todo) - answered) / max(rate, 1e-9))}s")
    shards.barrier(f"eval answered: {bench.name} at {model.num_frames} frames")  # every share is on disk
    rows = shards.merge(workdir, questions)
    summary = summarise(rows, bench.name)
    failures = summary["parse_failures"] / max(summary["questions"], 1)
    if failures > config.parse_failure_threshold:
        log(f"[eval] WARNING: {summary['parse_failures']} of {summary['questions']} answers ({failures:.0%}) had no "
            f"parsable letter (threshold {config.parse_failure_threshold:.0%}): the score is not trustworthy")
        summary["parse_failure_warning"] = True
    record = {"benchmark": bench.name, "protocol": proto.name, "protocol_reference": proto.reference,
              "lmms_eval_version": proto.lmms_eval_version, "prompt_sha256": proto.fingerprint(),
              "prompt_template": dataclasses.asdict(proto), "prompt_form": getattr(model, "prompt_form", None),
              "model_system_prompt": getattr(model, "system_prompt", None), "summary": summary, "model": model.source,
              "step": model.step, "fingerprint": want, "preprocessing": model.preprocessing,
              "frames_per_question": model.num_frames, "visual_tokens_per_question": model.visual_tokens,
              "annotation": bench.annotation, "annotation_errors": bench.annotation_errors,
              "not_scored": bench.not_scored, "subtitle_errors": _reasons(unreadable),
              "config": json.loads(config.to_json_best_effort()),
              "versions": _versions(), "missing_videos": missing, "processes": count, "devices_per_process": devices,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if index != 0:  # process 0 writes the run's files
        return summary
    paths.write_text(os.path.join(workdir, "results.json"), json.dumps(record, indent=2))
    chart = plot(summary, os.path.join(workdir, "categories.png"), f"{bench.name} ({proto.name}): {model.source}")
    log(table(summary, bench.name) + f"\nresults: {os.path.join(workdir, shards.RESULTS)}, "
        f"{os.path.join(workdir, 'results.json')}, {chart}")
    return summary


def _reasons(unreadable: dict) -> dict[str, int]:
    """Questions per reason their subtitles could not be read."""
    counts = {}
    for e in unreadable.values():
        counts[e.reason] = counts.get(e.reason, 0) + 1
    return dict(sorted(counts.items()))


def table(summary: dict, bench: str) -> str:
    lines = [f"{bench}: overall {summary['overall']:.1%} over {summary['scored']} of {summary['questions']} questions "
             f"({summary['errors']} errors, {summary['parse_failures']} unparsed, {summary['degenerate']} degenerate)"]
    if "m_avg" in summary:
        lines.append(f"  M-Avg (multiple-choice tasks): {summary['m_avg']:.1%}")
    for name, groups in summary["by"].items():
        lines.append(f"  by {name}: " + ", ".join(f"{k or '-'} {v:.1%}" for k, v in groups.items()))
    return "\n".join(lines)
