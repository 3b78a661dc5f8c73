"""A device profile: what each stage of answering costs on one device, measured by `bench latency_profile`,
and the cost model that predicts a request from it.

Stages of a request with F frames from a video (as `VideoQA` answers: decode, encode, prefill):
  decode   PyAV (or NVDEC) decodes from each sampled frame's keyframe up to it
           (`sampling.frames_to_decode`), then converts and resizes each sampled frame: open_ms +
           ms_per_decoded_frame x frames decoded + ms_per_sampled_frame x frames sampled
  encode   one pass per encoder clip: ms = a + b x clips (fitted over measured clip counts)
  prefill  the LLM over the whole prompt: ms = a + b x tokens + c x tokens^2 (fitted; attention is quadratic)
Memory (an estimate, not a measurement): the weights, the request's frames (uint8 and float32), the visual
tokens, the KV cache of the prompt and one layer's attention scores (XLA's attention materialises them).

Format (JSON): {"device", "date", "command", "versions", "decoders": {name: {open_ms, ms_per_decoded_frame,
video: {width, height, fps, keyframe_every}, points}}, "models": {name: {fingerprint, baseline, clip_frames,
tokens_per_clip, text_tokens, text_tokens_per_group, groups_per_clip, encode: {a, b, points}, prefill:
{a, b, c, points}, memory: {param_bytes, image_size, kv_bytes_per_token, score_bytes_per_token2,
hidden_bytes_per_token}}}}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.data import sampling

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
STAGES = ("decode", "encode", "prefill")


def shipped(name: str = "cpu") -> str:
    """The path of a profile shipped with the package (`profiles/<name>.json`)."""
    path = os.path.join(SHIPPED, f"{name}.json")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(SHIPPED) if f.endswith(".json"))
        raise FileNotFoundError(f"no shipped device profile {name!r}; shipped: {known}")
    return path


def fingerprint(spec) -> str:
    """What decides a model's costs: its encoder, projector, LLM and prompt separators (not its frame count)."""
    d = spec.to_dict()
    keep = {k: d.get(k) for k in ("encoder", "projector", "llm", "separators")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def load(path: str) -> dict:
    with paths.open(path) as f:
        prof = json.load(f)
    for key in ("device", "decoders", "models"):
        if key not in prof:
            raise ValueError(f"{path} is not a device profile: it has no {key!r} (write one with "
                             "python -m liteframe_jax.bench latency_profile)")
    return prof


def fit(xs, ys, degree: int) -> list[float]:
    """Least-squares polynomial coefficients, lowest power first, none negative (a cost never falls as work
    grows: a negative term fitted from timing noise is dropped and the rest refitted)."""
    xs = np.asarray(xs, float)
    return fit_columns([xs ** p for p in range(degree + 1)], ys)


def fit_columns(columns, ys) -> list[float]:
    """Least-squares coefficients of `ys` over `columns` (one array per term), none negative."""
    columns, ys = [np.asarray(c, float) for c in columns], np.asarray(ys, float)
    keep = list(range(len(columns)))
    while True:
        coef = np.linalg.lstsq(np.stack([columns[k] for k in keep], 1), ys, rcond=None)[0]
        if (coef >= 0).all() or len(keep) == 1:
            out = [0.0] * len(columns)
            for k, c in zip(keep, coef):
                out[k] = float(max(c, 0.0))
            return out
        keep.pop(int(np.argmin(coef)))


@dataclasses.dataclass(frozen=True)
class Video:
    frames: int
    fps: float
    keyframe_every: int

    @classmethod
    def of_minutes(cls, minutes: float, fps: float, keyframe_every: int) -> "Video":
        if minutes <= 0 or fps <= 0:
            raise ValueError(f"a video of {minutes} minutes at {fps} fps has no frames")
        return cls(int(round(minutes * 60 * fps)), float(fps), int(keyframe_every))


def decode_ms(decoder: dict, video: Video, frames: int) -> float:
    idx = sampling.uniform_indices(video.frames, frames)
    keys = range(0, video.frames, max(1, video.keyframe_every))
    return (decoder["open_ms"] + decoder["ms_per_decoded_frame"] * sampling.frames_to_decode(idx, keys)
            + decoder.get("ms_per_sampled_frame", 0.0) * frames)


def visual_tokens(model: dict, frames: int) -> int:
    return frames // model["clip_frames"] * model["tokens_per_clip"]


def prompt_tokens(model: dict, frames: int) -> int:
    """The prompt's length as the LLM runs it: left-padded to a multiple of `prompt_width_step`."""
    groups = frames // model["clip_frames"] * model["groups_per_clip"]
    n = visual_tokens(model, frames) + model["text_tokens"] + model["text_tokens_per_group"] * groups
    step = model.get("prompt_width_step", 1)
    return int(-(-round(n) // step) * step)


def predict(model: dict, decoder: dict | None, video: Video | None, frames: int) -> dict:
    """Each stage's predicted ms for `frames` frames (decode only with a decoder and a video), their sum
    (time to first token), the stage that takes longest and the memory estimate in GiB."""
    if frames % model["clip_frames"]:
        raise ValueError(f"{frames} frames is not a multiple of the encoder's clip of {model['clip_frames']} frames")
    clips, n = frames // model["clip_frames"], prompt_tokens(model, frames)
    e, p = model["encode"], model["prefill"]
    stages = {"encode": e["a"] + e["b"] * clips, "prefill": p["a"] + p["b"] * n + p["c"] * n * n}
    if decoder is not None and video is not None:
        stages["decode"] = decode_ms(decoder, video, frames)
    m = model["memory"]
    size = m["image_size"]
    mem = (m["param_bytes"] + frames * size * size * 3 * (1 + 4) + visual_tokens(model, frames) * m["hidden_bytes_per_token"]
           + n * m["kv_bytes_per_token"] + n * n * m["score_bytes_per_token2"])
    return {"frames": frames, "visual_tokens": visual_tokens(model, frames), "prompt_tokens": n,
            "stages_ms": stages, "ttft_ms": sum(stages.values()), "limiting_stage": max(stages, key=stages.get),
            "memory_gib": mem / 2 ** 30}
