"""The frame-budget choice: the most frames a model can read within a time to first token, or the frames a
video of some length needs, from a device profile (plan/profile.py).

With a budget, the frame count is the largest multiple of the encoder's clip whose predicted time to first
token fits it; with a video, at most the video's frames, and without a budget the frames that catch an event
of `event_seconds` (one frame every `event_seconds`: a shorter event can fall between two sampled frames,
which is what the needle test measures). The decoder is the profile's fastest for that request.
"""

from __future__ import annotations

import math

from liteframe_jax.plan import profile

MAX_FRAMES = 8192  # the search's ceiling where neither a budget nor a video bounds it


def model_entry(prof: dict, *, spec=None, baseline: bool = False) -> tuple[str, dict]:
    """The profile's entry for a run's spec (or, with `baseline`, the baseline measured beside it; without a
    spec, the profile's only run or its only baseline)."""
    models = prof["models"]
    if spec is not None:
        fp = profile.fingerprint(spec)
        want = f"baseline-of-{fp}" if baseline else fp
        found = [(n, m) for n, m in models.items() if m["fingerprint"] == want]
        if not found:
            raise ValueError(f"the profile has no entry for this run's {'baseline' if baseline else 'model'} "
                             f"(fingerprint {want}; it has {sorted(m['fingerprint'] for m in models.values())}): "
                             "measure it with python -m liteframe_jax.bench latency_profile --run=RUN")
        return found[0]
    found = [(n, m) for n, m in models.items() if bool(m.get("baseline")) == baseline]
    if len(found) != 1:
        raise ValueError(f"the profile has {len(found)} {'baselines' if baseline else 'runs'} "
                         f"({sorted(n for n, _ in found)}): name one with --run")
    return found[0]


def plan(model: dict, prof: dict, *, budget_ms: float | None = None, video: profile.Video | None = None,
         event_seconds: float = 2.0, decoder: str | None = None) -> dict:
    """The answer: frames, decoder, visual tokens, predicted time to first token per stage and memory, the
    stage that takes longest and what bounded the frame count."""
    if budget_ms is None and video is None:
        raise ValueError("give a latency budget (--budget_ms) or a video length (--video_minutes), or both")
    clip = model["clip_frames"]
    decoders = prof["decoders"] if decoder is None else {decoder: prof["decoders"].get(decoder)}
    if None in decoders.values():
        raise ValueError(f"the profile has no decoder {decoder!r}; it has {sorted(prof['decoders'])}")
    ceiling, bound = MAX_FRAMES // clip * clip, "the planner's ceiling"
    if video is not None:
        ceiling, bound = max(clip, video.frames // clip * clip), "the video's length"
        if budget_ms is None:
            wanted = math.ceil(video.frames / video.fps / event_seconds)
            ceiling = min(ceiling, max(clip, -(-wanted // clip) * clip))
            bound = f"one frame every {event_seconds:g} s of the video"
    # a video for the decode stage: the one asked about, else one long enough not to bound the frames
    seen = video or profile.Video(MAX_FRAMES * 4, 4.0, next(iter(prof["decoders"].values()))["video"]["keyframe_every"])

    def best(frames):
        options = [dict(profile.predict(model, d, seen, frames), decoder=name) for name, d in decoders.items()]
        return min(options, key=lambda o: o["ttft_ms"])

    if budget_ms is None:
        answer = best(ceiling)
    else:
        fits = [f for f in range(clip, ceiling + 1, clip)]
        answer = None
        for f in fits:  # the time grows with the frames: the last that fits
            guess = best(f)
            if guess["ttft_ms"] > budget_ms:
                break
            answer = guess
        if answer is None:
            smallest = best(clip)
            raise ValueError(f"no frame count fits {budget_ms:g} ms: {clip} frames (one clip) take "
                             f"{smallest['ttft_ms']:.0f} ms, most of it {smallest['limiting_stage']}")
        bound = "the budget" if answer["frames"] < ceiling else bound
    answer.update(bounded_by=bound, budget_ms=budget_ms, video_frames=video.frames if video else None)
    return answer
