"""`bench latency`: time to first token of the LiteFrame Video LLM against InternVL3 (and against InternVL3 with
post-hoc compression of its tokens), at the length of an evaluation prompt, optionally counting the decoding
of the video file, alone and streamed behind the encoder."""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.bench import eval_prompt
from liteframe_jax.bench.common import (
    BF16,
    TUBELET,
    fused_mlp_kernel,
    normalise_frames,
    paper_models,
    peak_memory_gib,
    qwen25_7b_config,
    random_frames,
    timed,
    tubelet_student,
)
from liteframe_jax.bench.pipeline import long_video, synthetic_video, time_decode
from liteframe_jax.eval.answer import stream_piece
from liteframe_jax.models import compression
from liteframe_jax.models.internvit import InternVisionTower, InternVLHeadConfig
from liteframe_jax.models.qwen2 import Qwen2
from liteframe_jax.models.student import LiteFrameStudent
from liteframe_jax.models.video_llm import Projector, ProjectorConfig, splice

INTERNVL = "InternVL3-8B-style"
POSTHOC = "InternVL3-8B-style + WAP 16x"  # InternVL3's encoder, its tokens then pooled as CTD's targets are
MODELS = (INTERNVL, POSTHOC, "LiteFrame", TUBELET)


def default_plans(small: bool) -> list[tuple[str, int]]:
    if small:
        return [(INTERNVL, 8), (POSTHOC, 8), ("LiteFrame", 8), ("LiteFrame", 16), (TUBELET, 16)]
    return ([(INTERNVL, f) for f in (16, 32, 64)] + [(m, f) for m in (POSTHOC, "LiteFrame", TUBELET)
                                                      for f in (64, 128, 256, 512)])


def parse_plans(text: str) -> list[tuple[str, int]]:
    """'internvl:64,liteframe:512' -> plans; names as in MODELS, or internvl / posthoc / liteframe / tubelet2."""
    short = {"internvl": INTERNVL, "posthoc": POSTHOC, "liteframe": "LiteFrame", "tubelet2": TUBELET}
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
    vit, head, student_cfg, _, window = paper_models(small)
    llm_cfg = qwen25_7b_config(small)
    if small:
        head = InternVLHeadConfig(out_features=64)
        window = (4, 2, 2)
    plans = plans or default_plans(small)
    cast = lambda tree: jax.tree.map(lambda x: x.astype(BF16), tree)
    llm = Qwen2(llm_cfg, rngs=nnx.Rngs(3), dtype=BF16, attn_impl=impl)
    llm_graph, llm_params = nnx.split(llm)
    llm_params = cast(llm_params)
    del llm
    # the fused kernels where this device runs them (docs/BENCHMARKS_HISTORY.md, passes 3-8), for both models:
    # fc1 + GELU in InternViT and the student, the block tail in the student
    mlp_kernel = fused_mlp_kernel()
    tower = InternVisionTower(vit, head, rngs=nnx.Rngs(1), dtype=BF16, attn_impl=impl, mlp_kernel=mlp_kernel)
    tower_graph, tower_params = nnx.split(tower)
    tower_params = cast(tower_params)
    size = vit.image_size
    students = {"LiteFrame": student_cfg, TUBELET: tubelet_student(small)}

    def internvl(pooled: bool):
        def encode(p, frames):
            grid = nnx.merge(tower_graph, p).features(normalise_frames(frames), "projector")
            if pooled:  # the paper preset's WAP: weights proportional to each token's norm
                grid = compression.compress(grid[None], window, "norm").astype(BF16)
            return grid.reshape(1, -1, grid.shape[-1])
        return encode

    def liteframe(graph, cfg):
        def encode(p, frames):
            s, pr = nnx.merge(graph, p)
            clips = normalise_frames(frames).reshape(-1, cfg.num_frames, size, size, 3)
            return pr(s(clips)).reshape(1, -1, llm_cfg.hidden_size)
        return encode

    encoders = {INTERNVL: (internvl(False), tower_params), POSTHOC: (internvl(True), tower_params)}
    for name, cfg in students.items():
        student = LiteFrameStudent(cfg, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl, mlp_kernel=mlp_kernel)
        proj = Projector(cfg.out_dim, llm_cfg.hidden_size, ProjectorConfig(), rngs=nnx.Rngs(2), dtype=BF16)
        graph, params = nnx.split((student, proj))
        encoders[name] = (liteframe(graph, cfg), cast(params))

    def clip_frames(model: str) -> int:
        """The frames one encoder call needs whole: a student's clip, WAP's temporal window, or one frame."""
        return {INTERNVL: 1, POSTHOC: window[0]}.get(model) or students[model].num_frames

    def prompt_shape(model: str, frames_n: int) -> tuple[str, int]:
        """(separators, visual groups): InternVL's own "Frame{k}: <img>...</img>" lines per frame (per pooled
        group); LiteFrame's `paper` LMA preset puts a timestamp before each temporal slice."""
        if model in (INTERNVL, POSTHOC):
            return "internvl", frames_n // clip_frames(model)
        cfg = students[model]  # its tokens come flat, (clip, slice, row, column) in order
        return "timestamp", frames_n // cfg.num_frames * cfg.output_grid[0]

    @jax.jit
    def prefill(p, visual, tokens):
        m = nnx.merge(llm_graph, p)
        embeds = splice(m.embed_tokens(tokens), tokens, visual, eval_prompt.VIDEO_TOKEN_ID)
        h, _ = m.hidden(embeds, jnp.arange(embeds.shape[1])[None], None)  # one request, no padding: no mask
        return jnp.argmax(m.logits(h[:, -1]), -1)  # the first token

    jitted = {name: jax.jit(fn) for name, (fn, _) in encoders.items()}
    beside = {name: nvdec.jit_beside_decoding(fn) for name, (fn, _) in encoders.items()}  # while NVDEC decodes

    path = request_video(decode, small) if decode else None
    stage = {}
    if path:
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
    rows = []
    for model, frames_n in plans:
        encode, params = encoders[model]
        frames = random_frames(1, frames_n, size)[0]
        decoded = {}
        try:
            if path:  # a bad path or an unreadable file stops the bench here, naming the file
                idx = sampling.uniform_indices(info.num_frames, frames_n)
                decoded = decode_stage(path, idx, keyframes, size, decode_workers or os.cpu_count() or 1, decoder,
                                       stage)
                frames = decoded.pop("frames")
            enc_s = timed(jitted[model], params, frames)
            visual = jitted[model](params, frames)
            separators, groups = prompt_shape(model, frames_n)
            ids = eval_prompt.request_ids(separators, groups, visual.shape[1] // groups)
            tokens = jnp.asarray(ids)[None]
            pre_s = timed(prefill, llm_params, visual, tokens, iters=5)
            if path and decoder == "nvdec":
                chunk = stream_piece(clip_frames(model))
                decoded.update(streamed(path, idx, info.num_frames, size, chunk, beside[model], params, prefill,
                                        llm_params, tokens))
                decoded["encode_without_cuda_graphs_ms"] = timed(beside[model], params, frames) * 1e3
        except Exception as e:
            rows.append({"bench": "latency", "model": model, "frames": frames_n,
                         "error": f"{type(e).__name__}: {str(e)[:300]}"})
            yield rows[-1]
            continue
        ttft = (enc_s + pre_s) * 1e3
        rows.append({"bench": "latency", "model": model, "attention": impl or "xla", "frames": frames_n,
                     "mlp_kernel": mlp_kernel, "student_act": students[model].act if model in students else None,
                     "visual_tokens": int(visual.shape[1]), "prompt_tokens": int(tokens.shape[1]),
                     "text_tokens": int(tokens.shape[1] - visual.shape[1]), "separators": separators,
                     "visual_groups": groups,
                     "encode_ms": enc_s * 1e3, "prefill_ms": pre_s * 1e3, "ttft_ms": ttft,
                     **({"decoder": decoder} if path else {}), **decoded,
                     **({"ttft_with_decode_ms": decoded["decode_ms"] + ttft} if decoded else {}),
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


def streamed(path, idx, num_frames, size, chunk, encode, params, prefill, llm_params, tokens,
             runs: int = 3) -> dict:
    """Time to first token from the file with NVDEC: each piece of `chunk` frames encoded as soon as it is
    decoded (`nvdec.stream_frames`, as `VideoQA.encode_streaming` runs it), then the prefill; the median of
    `runs` after one untimed run that compiles."""
    from liteframe_jax.data import nvdec

    def request():
        pieces = nvdec.stream_frames(path, idx, size, num_frames, chunk)
        visual = jnp.concatenate([encode(params, p) for p in pieces], axis=1)
        return prefill(llm_params, visual, tokens).block_until_ready()

    request()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        request()
        times.append(time.perf_counter() - t)
    return {"ttft_streamed_ms": statistics.median(times) * 1e3}


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
    colours = {INTERNVL: "tab:red", POSTHOC: "tab:orange", "LiteFrame": "tab:blue", TUBELET: "tab:green"}
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
