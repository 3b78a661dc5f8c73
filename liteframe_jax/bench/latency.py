"""`bench latency`: time to first token of the LiteFrame Video LLM against InternVL3 (and against InternVL3 with
post-hoc compression of its tokens), at the length of an evaluation prompt, optionally counting the decoding
of the video file, alone and streamed behind the encoder.

Every model is built from its spec (`bench/latency_models.py`, `VideoLLMSpec.build`) and timed through
`Answerer`, as `VideoQA` answers: its encode (`encode_stream`, the spec's pixel statistics and encoder), then
its prefill and first token (`token_ids(..., visual=..., max_new_tokens=1)`: the prompt left-padded, the KV
cache written, the LLM's attention as answering runs it), by `eval/latency.py`'s timing."""

from __future__ import annotations

import dataclasses
import os
import statistics

import jax
import jax.numpy as jnp

from liteframe_jax.assembly.answering import Answerer
from liteframe_jax.assembly.specs import StudentSpec
from liteframe_jax.bench import eval_prompt
from liteframe_jax.bench.common import BF16, TUBELET, fused_mlp_kernel, peak_memory_gib, random_frames
from liteframe_jax.bench.latency_models import (
    INTERNVL,
    LITEFRAME,
    MODELS,
    POSTHOC,
    build_models,
    latency_specs,
    whole_frames,
)
from liteframe_jax.bench.pipeline import long_video, synthetic_video, time_decode
from liteframe_jax.eval.answer import stream_piece
from liteframe_jax.eval.latency import time_answering, time_encode, time_streamed


def default_plans(small: bool) -> list[tuple[str, int]]:
    if small:
        return [(INTERNVL, 8), (POSTHOC, 8), (LITEFRAME, 8), (LITEFRAME, 16), (TUBELET, 16)]
    return ([(INTERNVL, f) for f in (16, 32, 64)] + [(m, f) for m in (POSTHOC, LITEFRAME, TUBELET)
                                                      for f in (64, 128, 256, 512)])


def parse_plans(text: str) -> list[tuple[str, int]]:
    """'internvl:64,liteframe:512' -> plans; names as in MODELS, or internvl / posthoc / liteframe / tubelet2."""
    short = {"internvl": INTERNVL, "posthoc": POSTHOC, "liteframe": LITEFRAME, "tubelet2": TUBELET}
    plans = []
    for item in text.split(","):
        name, _, frames = item.rpartition(":")
        model = short.get(name.lower(), name)
        if model not in MODELS or not frames.isdigit():
            raise ValueError(f"--latency-plans: {item!r} is not MODEL:FRAMES with MODEL one of {sorted(short)}")
        plans.append((model, int(frames)))
    return plans


def request_video(decode: str, small: bool) -> str:
    """The video to decode: a path, 'synthetic' (a generated 2-minute 720p H.264 video) or 'synthetic:MINUTES'
    (that video repeated to MINUTES long)."""
    if not decode.startswith("synthetic"):
        return decode
    import tempfile
    path = synthetic_video(tempfile.mkdtemp(prefix="latency_video_"), 12 if small else 120, small)
    minutes = decode.partition(":")[2]
    return long_video(path, float(minutes)) if minutes else path


def bench_latency(ceiling, small, impl, out_dir, decode: str | None = None, decode_workers: int = 0,
                  decoder: str = "pyav", plans: list[tuple[str, int]] | None = None):
    """Per request on one GPU: vision encoding, LLM prefill and time to first token (their sum), for the
    InternVL3-8B-style model at 16/32/64 frames, the same with its tokens pooled 16x (WAP, as CTD's targets) and
    the LiteFrame models at 64..512 frames, one LLM, each prompt a Video-MME question with the model's
    separators (`eval_prompt`). `decode` (a file, or `request_video`'s 'synthetic[:MINUTES]') adds decoding:
    timed alone (`decode_workers` threads, 0: one per core; or `decoder='nvdec'`, the GPU's video engines), for
    keyframes only, and with NVDEC streamed behind the encoder as answering runs (`ttft_streamed_ms`). Rows
    come as they are measured, the video's first."""
    from liteframe_jax.data import nvdec, sampling, video
    decoder, decoder_reason = nvdec.choose(decoder)
    plans = plans or default_plans(small)
    runs = 3 if small else 10  # medians of this many requests after one that compiles
    # the fused kernels where this device runs them (docs/BENCHMARKS_HISTORY.md, passes 3-8), for both models:
    # fc1 + GELU in InternViT and the student, the block tail in the student
    mlp_kernel = fused_mlp_kernel()
    path = request_video(decode, small) if decode else None
    stage = {}
    if path:  # a bad path or an unreadable file stops the bench here, naming the file, before any model
        info = video.probe(path)
        keyframes = video.keyframe_indices(path)
        # a generated video goes with the bench's temporary files: its row names what it was, not where
        where = path if not decode.startswith("synthetic") else f"generated ({decode}), removed with the run"
        stage = {"video": os.path.basename(path), "path": where, "video_frames": info.num_frames,
                 "keyframes": len(keyframes), "decoder": decoder, "decoder_reason": decoder_reason,
                 "decode_workers": (decode_workers or os.cpu_count() or 1) if decoder == "pyav" else nvdec.SESSIONS}
        if decoder == "nvdec":  # the decode engines' own speed on this file, once, before the requests
            stage.update(nvdec.raw_throughput(path, info.num_frames))
        yield {"bench": "latency_video", **stage}
    specs = latency_specs(small)
    models = build_models({m: specs[m] for m in dict.fromkeys(m for m, _ in plans)}, attn_impl=impl,
                          mlp_kernel=mlp_kernel)
    tokenizer = eval_prompt.PieceTokenizer()
    rows = []
    for model, frames_n in plans:
        decoded = {}
        try:  # a spec refuses a frame count that is not whole clips (or WAP windows): an error row
            spec = dataclasses.replace(specs[model], num_frames=frames_n)
            graphdef, params = models[model]
            answerer = Answerer(spec, tokenizer, graphdef, BF16)
            size = spec.encoder.image_size
            if path:
                idx = sampling.uniform_indices(info.num_frames, frames_n)
                decoded = decode_stage(path, idx, keyframes, size, decode_workers or os.cpu_count() or 1, decoder,
                                       stage)
                frames = decoded.pop("frames")
            else:
                frames = random_frames(1, frames_n, size)[0]
            ids = eval_prompt.request_ids(spec.separators, spec.visual_groups, spec.tokens_per_group)
            stages = time_answering(answerer, params, frames, ids, runs)
            visual = stages.pop("visual")
            if path and decoder == "nvdec":  # as VideoQA answers with NVDEC: the encoder beside the decoding
                beside = Answerer(spec, tokenizer, graphdef, BF16, beside_decoding=True)
                chunk = stream_piece(whole_frames(spec))
                pieces = lambda: nvdec.stream_frames(path, idx, size, info.num_frames, chunk)
                decoded["ttft_streamed_ms"] = time_streamed(beside, params, pieces, ids)
                decoded["encode_without_cuda_graphs_ms"] = time_encode(beside, params, frames, runs)[0]
        except Exception as e:
            rows.append({"bench": "latency", "model": model, "frames": frames_n,
                         "error": f"{type(e).__name__}: {str(e)[:300]}"})
            yield rows[-1]
            continue
        student = spec.encoder.arch if isinstance(spec.encoder, StudentSpec) else None
        rows.append({"bench": "latency", "model": model, "attention": impl or "xla", "frames": frames_n,
                     "mlp_kernel": mlp_kernel, "student_act": student.act if student else None,
                     "visual_tokens": int(visual.shape[1]), "prompt_tokens": len(ids),
                     "text_tokens": len(ids) - int(visual.shape[1]), "separators": spec.separators,
                     "visual_groups": spec.visual_groups, **stages, "runs": runs,
                     **({"decoder": decoder} if path else {}), **decoded,
                     **({"ttft_with_decode_ms": decoded["decode_ms"] + stages["ttft_ms"]} if decoded else {}),
                     "peak_gib": peak_memory_gib()})
        # the ratios and the plot after every row, against the rows so far: a run stopped by a time limit
        # keeps them (the rows are the same dicts, written again by the caller)
        add_ratios(rows)
        if out_dir:
            plot(rows, out_dir)
        yield rows[-1]


def decode_stage(path, idx, keyframes, size, workers, decoder, stage) -> dict:
    """The request's frames decoded alone (median of 3 runs; the first, with the sessions' start, apart), the
    frames the decoder had to decode for them against the engines' own speed, and the same request with each
    frame snapped to its nearest keyframe (`sampling.snap_to_keyframes`)."""
    from liteframe_jax.data import sampling
    times, frames = time_decode(path, idx, size, workers, decoder=decoder)
    work, median = sampling.frames_to_decode(idx, keyframes), statistics.median(times)
    out = {"frames": jnp.asarray(frames), "decode_ms": median * 1e3, "decode_first_ms": times[0] * 1e3,
           "frames_decoded": work, "decode_stage_frames_per_s": work / median}
    if "raw_frames_per_s" in stage:
        out["decode_vs_raw"] = median / (work / stage["raw_frames_per_s"])
    snapped = sampling.snap_to_keyframes(idx, keyframes)
    key_times, _ = time_decode(path, snapped, size, workers, decoder=decoder)
    out.update(keyframes_decode_ms=statistics.median(key_times) * 1e3, keyframes_distinct=len(set(snapped)))
    return out


def add_ratios(rows) -> None:
    """Each row against InternVL3 at its most frames: model only, with decoding added, and streamed."""
    ok = [r for r in rows if "error" not in r]
    internvl = [r for r in ok if r["model"] == INTERNVL]
    if not internvl:
        return
    ref = max(internvl, key=lambda r: r["frames"])
    for r in ok:
        r["ttft_vs_internvl_max_frames"] = r["ttft_ms"] / ref["ttft_ms"]
        for key in ("ttft_with_decode_ms", "ttft_streamed_ms"):
            if key in r and key in ref:
                r[key.replace("_ms", "_vs_internvl_max_frames")] = r[key] / ref[key]


def plot(rows, out_dir) -> None:
    """`latency.png` (each model's stages against frames per request) and, where decoding was timed,
    `latency_stages.png` (each request's decode, encode and prefill end to end, and the streamed total)."""
    os.makedirs(out_dir, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    device = jax.devices()[0].device_kind
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = {INTERNVL: "tab:red", POSTHOC: "tab:orange", LITEFRAME: "tab:blue", TUBELET: "tab:green"}
    styles = (("ttft_streamed_ms", "D-", 1.0, "decode streamed + encode + prefill"),
              ("ttft_with_decode_ms", "s:", 0.6, "decode, then encode + prefill"),
              ("ttft_ms", "o-", 0.9, "encode + prefill"), ("encode_ms", "x--", 0.5, "encode"))
    for model, colour in colours.items():
        mine = [r for r in rows if r["model"] == model and "error" not in r]
        for key, style, alpha, what in styles:
            pts = [(r["frames"], r[key]) for r in mine if key in r]
            if pts:
                ax.plot(*zip(*pts), style, color=colour, alpha=alpha, label=f"{model}: {what}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("frames per request")
    ax.set_ylabel("ms (median)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    ax.set_title(f"time to first token on {device}")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency.png"), dpi=120)
    plt.close(fig)
    decoded = [r for r in rows if "decode_ms" in r]  # error rows have none
    if decoded:
        plot_stages(decoded, os.path.join(out_dir, "latency_stages.png"), device)


def plot_stages(rows, path: str, device: str) -> None:
    """One bar per request: decoding, then encoding, then the prefill, as run one after the other; a diamond
    where the request ends with decoding streamed behind the encoder."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 1.8 + 0.5 * len(rows)), layout="constrained")
    stages = (("decode_ms", "tab:gray", "decode"), ("encode_ms", "tab:blue", "encode"),
              ("prefill_ms", "tab:orange", "prefill"))
    labels = [f"{r['model']} @ {r['frames']}" for r in rows]
    left = [0.0] * len(rows)
    for key, colour, what in stages:
        widths = [r[key] for r in rows]
        ax.barh(labels, widths, left=left, color=colour, label=what)
        left = [a + b for a, b in zip(left, widths)]
    streamed = [(r["ttft_streamed_ms"], label) for r, label in zip(rows, labels) if "ttft_streamed_ms" in r]
    if streamed:
        ax.plot(*zip(*streamed), "kD", label="decode streamed behind the encoder, then prefill")
    ax.invert_yaxis()
    ax.set_xlabel("ms from the video file to the first token (medians)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncol=4)
    ax.set_title(f"one request, {rows[0]['decoder']} decoding, {device}", fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
