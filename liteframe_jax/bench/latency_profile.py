"""`bench latency_profile`: the device profile that `python -m liteframe_jax.plan` reads (plan/profile.py), the
latency bench's stages measured against their size on this device for one LMA run: decoding per decoded frame
(PyAV, and NVDEC where it runs), the run's encoder per clip, the LLM's prefill per prompt token. Each stage is
timed through the code that answers (`VideoQA`, `Answerer`): a request is its decode, then `Answerer`'s encode,
then its first token.

With the run's CTD teacher (`teacher_run`: the CTD run folder whose config names it, e.g. the LMA demo's
WORKDIR/ctd), it adds the baseline of the same shape: that teacher on every frame, its tokens pooled by the
CTD run's compression (post-hoc, as CTD's targets are made), the same projector and LLM. Its prefill is the
run's at the same prompt length (one LLM), so only its encoder is timed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liteframe_jax.assembly import from_config
from liteframe_jax.assembly.answering import PROMPT_WIDTH_STEP
from liteframe_jax.core import paths
from liteframe_jax.core.log import log
from liteframe_jax.data import demo, needle, nvdec, sampling, video
from liteframe_jax.eval.answer import VideoQA
from liteframe_jax.models.pixels import normalise
from liteframe_jax.models.pooled_tower import PooledTower
from liteframe_jax.plan import profile

QUESTION = needle.lettered()


def fastest_ms(fn, runs: int = 5) -> float:
    """The fastest of `runs` calls of `fn()` in ms, after one untimed call (which compiles): on a machine shared
    with other work, the slower runs measure the other work."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def profile_video(folder: str, size: int, minutes: float = 2.0, fps: int = 4, keyframe_every: int = 60) -> str:
    """A needle-test-like video to time decoding on: `size` px, `keyframe_every` frames a keyframe."""
    path = os.path.join(folder, "profile_video.mp4")
    n = int(minutes * 60 * fps)
    demo.write_video(path, needle.frames(n, size, n // 2, 3, "red", np.random.default_rng(0)), fps=fps,
                     keyframe_every=keyframe_every)
    return path


def measure_decoder(path: str, size: int, decoder: str, frame_counts=(8, 32, 128, 256)) -> dict:
    """open_ms and ms_per_decoded_frame fitted over requests of `frame_counts` uniform frames from `path`."""
    info = video.probe(path)
    keys = video.keyframe_indices(path)
    points = []
    for f in frame_counts:
        idx = sampling.uniform_indices(info.num_frames, f)
        if decoder == "nvdec":
            run = lambda: nvdec.decode_frames(path, idx, size, info.num_frames)
        else:
            run = lambda: video.decode_frames(path, idx, size)
        points.append((sampling.frames_to_decode(idx, keys), f, fastest_ms(run, runs=3)))
        log(f"[profile] decode ({decoder}) {f} frames: {points[-1][0]} decoded in {points[-1][2]:.1f} ms")
    a, b, c = profile.fit_columns([np.ones(len(points)), [p[0] for p in points], [p[1] for p in points]],
                                  [p[2] for p in points])
    gaps = np.diff(keys)
    return {"open_ms": a, "ms_per_decoded_frame": b, "ms_per_sampled_frame": c, "points": points,
            "video": {"width": info.width, "height": info.height, "fps": info.fps,
                      "keyframe_every": int(np.median(gaps)) if len(gaps) else info.num_frames}}


def measure_model(qa: VideoQA, frame_counts, encode=None, params=None) -> dict:
    """The model's entry: encode per clip (its own encoder, or `encode(params, frames)` for the baseline) and
    prefill per token through `Answerer` (a prompt of the needle question, its first token)."""
    spec, clip = qa.spec, qa.spec.encoder.clip_frames
    size = spec.encoder.image_size
    encode = encode or qa.answerer._encode
    params = qa.params if params is None else params
    rng = np.random.default_rng(0)
    enc, pre, lengths = [], [], {}
    for f in frame_counts:
        frames = jnp.asarray(rng.integers(0, 255, (1, f, size, size, 3), np.uint8))
        enc.append((f // clip, fastest_ms(lambda: encode(params, frames))))
        tokens = int(encode(params, frames).shape[1])
        visual = qa.answerer._encode(qa.params, frames)  # the run's own tokens: the prompt's length is its
        if tokens != visual.shape[1]:
            raise ValueError(f"the baseline gives {tokens} visual tokens for {f} frames and the run "
                             f"{visual.shape[1]}: a profile times both at the run's prompt length, so both must match")
        prompt = _prompt(qa, f)
        lengths[f] = (len(prompt), int(visual.shape[1]))
        width = -(-len(prompt) // PROMPT_WIDTH_STEP) * PROMPT_WIDTH_STEP
        pre.append((width, fastest_ms(lambda: qa.answerer.token_ids(qa.params, [prompt], None, max_new_tokens=1,
                                                                   visual=visual), runs=3)))
        log(f"[profile] {f} frames: encode {enc[-1][1]:.1f} ms ({f // clip} clips), prefill {pre[-1][1]:.1f} ms "
            f"({width} tokens)")
    (f0, (n0, v0)), (f1, (n1, v1)) = list(lengths.items())[0], list(lengths.items())[-1]
    groups = lambda f: f // clip * spec.encoder.token_grid[0]
    per_group = ((n1 - v1) - (n0 - v0)) / max(groups(f1) - groups(f0), 1)
    llm = spec.llm
    ea, eb = profile.fit([p[0] for p in enc], [p[1] for p in enc], 1)
    pa, pb, pc = profile.fit([p[0] for p in pre], [p[1] for p in pre], 2)
    bytes_ = 4 if qa.answerer.dtype == jnp.float32 else 2
    return {"fingerprint": profile.fingerprint(spec), "clip_frames": clip,
            "tokens_per_clip": spec.encoder.token_grid[0] * spec.encoder.token_grid[1],
            "groups_per_clip": spec.encoder.token_grid[0], "text_tokens_per_group": per_group,
            "text_tokens": (n0 - v0) - per_group * groups(f0), "prompt_width_step": PROMPT_WIDTH_STEP,
            "encode": {"a": ea, "b": eb, "points": enc}, "prefill": {"a": pa, "b": pb, "c": pc, "points": pre},
            "memory": {"param_bytes": int(sum(x.nbytes for x in jax.tree.leaves(params))), "image_size": size,
                       "hidden_bytes_per_token": llm.hidden_size * bytes_,
                       "kv_bytes_per_token": 2 * llm.num_layers * llm.num_kv_heads * llm.dim_per_head * bytes_,
                       "score_bytes_per_token2": llm.num_heads * 4}}


def _prompt(qa: VideoQA, frames: int):
    from liteframe_jax.eval.needle import at_frames
    sized = at_frames(qa, frames)
    times = [float(i) for i in range(sized.spec.visual_groups)]
    return sized._prompt(QUESTION, times)


def baseline_encoder(qa: VideoQA, teacher_run: str):
    """(encode(params, frames), params, clip frames): the CTD run's teacher on every frame, its tokens pooled by
    the run's compression (the post-hoc baseline's encoder, models/pooled_tower.py), then the LMA run's
    projector."""
    tower, cfg = from_config.ctd_teacher(teacher_run, qa.answerer.dtype)
    spec = from_config.posthoc_spec(tower, cfg)
    graph, tparams = nnx.split(PooledTower(tower, output=spec.output, window=spec.window, method=spec.method,
                                           weighting=spec.weighting, sigma=spec.sigma))
    pgraph, pparams = nnx.split(nnx.merge(qa.graphdef, qa.params).projector)

    @jax.jit
    def encode(p, frames):
        x = normalise(frames, spec.pixel_mean, spec.pixel_std, qa.answerer.dtype)
        clips = x.reshape(-1, spec.clip_frames, *x.shape[2:])
        tokens = nnx.merge(graph, p["tower"])(clips)
        return nnx.merge(pgraph, p["projector"])(tokens.reshape(frames.shape[0], -1, tokens.shape[-1]))

    log(f"[profile] baseline: the teacher of {teacher_run}, {spec.method} {spec.window} after it")
    return encode, {"tower": tparams, "projector": pparams}, spec.clip_frames


def bench_latency_profile(run: str, out: str, teacher_run: str | None = None, frame_counts=(8, 16, 32, 64, 128),
                          decoders=("pyav",)) -> dict:
    """Write the device profile of `run` (and its baseline, with `teacher_run`) to `out`; returns it."""
    qa = VideoQA.from_run(run)
    name = os.path.basename(os.path.normpath(run))
    prof = {"device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}", "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": {"jax": jax.__version__},
            "command": f"python -m liteframe_jax.bench latency_profile --run={run}" +
                       (f" --teacher-run={teacher_run}" if teacher_run else ""),
            "decoders": {}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="latency_profile_") as tmp:
        path = profile_video(tmp, 64)
        for d in decoders:
            prof["decoders"][d] = measure_decoder(path, qa.spec.encoder.image_size, d)
    prof["models"][name] = {"baseline": False, "run": os.path.abspath(run), **measure_model(qa, frame_counts)}
    if teacher_run:
        encode, params, clip = baseline_encoder(qa, teacher_run)
        entry = measure_model(qa, frame_counts, encode=encode, params=params)
        entry["memory"]["param_bytes"] += prof["models"][name]["memory"]["param_bytes"]  # + the LLM's
        entry["prefill"] = prof["models"][name]["prefill"]  # one LLM: the run's fit, not a second noisy one
        entry.update(baseline=True, fingerprint=f"baseline-of-{prof['models'][name]['fingerprint']}",
                     teacher_run=os.path.abspath(teacher_run))
        entry["encode"]["note"] = "the teacher and its pooling per encoder clip of the run (same frames, same tokens)"
        prof["models"][f"{name}:baseline"] = entry
    paths.write_text(out, json.dumps(prof, indent=1))
    log(f"[profile] written: {out}")
    return prof


def check_prediction(qa: VideoQA, prof: dict, model: str, frames: int, decoder: str = "pyav") -> dict:
    """One request at `frames` (decode, encode, first token, as `VideoQA` answers it, stage after stage) timed
    against what the profile `prof` predicts for it on the profile's own video: the planner's error here."""
    from liteframe_jax.eval import needle as needle_eval
    with tempfile.TemporaryDirectory(prefix="latency_check_") as tmp:
        path = profile_video(tmp, qa.spec.encoder.image_size)
        info = video.probe(path)
        dec = prof["decoders"][decoder]
        want = profile.predict(prof["models"][model], dec,
                               profile.Video(info.num_frames, info.fps, dec["video"]["keyframe_every"]), frames)
        sized = needle_eval.at_frames(qa, frames)

        def request():
            loaded, times = sized.load_frames(path)
            visual = sized.answerer.encode_stream(sized.params, [loaded])
            return sized.answerer.token_ids(sized.params, [sized._prompt(needle.lettered(), times)], None,
                                            visual=visual, max_new_tokens=1)

        measured = fastest_ms(request)
    row = {"bench": "latency_profile_check", "model": model, "frames": frames, "predicted_ms": want["ttft_ms"],
           "measured_ms": measured, "predicted_over_measured": want["ttft_ms"] / measured}
    log(f"[profile] check at {frames} frames: predicted {want['ttft_ms']:.1f} ms, measured {measured:.1f} ms "
        f"({row['predicted_over_measured']:.2f}x)")
    return row


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m liteframe_jax.bench latency_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="an LMA run folder")
    parser.add_argument("--teacher-run", default=None, help="the CTD run whose teacher + compression is the baseline")
    parser.add_argument("--out", required=True, help="the profile to write (JSON)")
    parser.add_argument("--frames", default="8,16,32,64,128", help="frame counts to time the encoder and prefill at")
    parser.add_argument("--decoders", default="pyav", help="pyav and/or nvdec, comma-separated")
    parser.add_argument("--check-frames", type=int, default=0,
                        help="then time one request at this many frames against the profile's prediction")
    args = parser.parse_args(argv)
    prof = bench_latency_profile(args.run, args.out, args.teacher_run, tuple(int(f) for f in args.frames.split(",")),
                                 tuple(args.decoders.split(",")))
    if args.check_frames:
        name = os.path.basename(os.path.normpath(args.run))
        print(json.dumps(check_prediction(VideoQA.from_run(args.run), prof, name, args.check_frames,
                                          args.decoders.split(",")[0])))

