"""`python -m liteframe_jax.plan`: how many frames to read within a time to first token, on a device profile.

    python -m liteframe_jax.plan --run=runs/lma_needle --video_minutes=20
    python -m liteframe_jax.plan --baseline --budget_ms=500
    python -m liteframe_jax.plan --run=RUN --profile=h100.json --budget_ms=1000 --video_minutes=60 --fps=30

`--run` (an LMA run folder) or `--baseline` (the baseline measured beside it) or neither (the profile's only
run); `--profile` defaults to the shipped CPU profile (plan/profiles/cpu.json). `--budget_ms` and/or
`--video_minutes` (`--fps`, `--keyframe_every`: the video's, default those of the profiled video).
"""

from __future__ import annotations

import argparse
import json

from liteframe_jax.plan import planner, profile


def describe(name: str, prof: dict, answer: dict) -> str:
    s = answer["stages_ms"]
    stages = ", ".join(f"{k} {s[k]:.0f} ms" for k in profile.STAGES if k in s)
    return (f"{name} on {prof['device']} (profile of {prof['date']}):\n"
            f"  frames: {answer['frames']} (bounded by {answer['bounded_by']})\n"
            f"  decoder: {answer['decoder']}\n"
            f"  visual tokens: {answer['visual_tokens']} (prompt {answer['prompt_tokens']} tokens)\n"
            f"  time to first token: {answer['ttft_ms']:.0f} ms ({stages}); limiting stage: {answer['limiting_stage']}\n"
            f"  memory: {answer['memory_gib']:.2f} GiB (estimate: weights, frames, KV cache, one layer's attention)")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m liteframe_jax.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="an LMA run folder (its spec.json picks the profile's entry)")
    p.add_argument("--baseline", action="store_true", help="the baseline of the same shape (teacher + pooling)")
    p.add_argument("--profile", default=None, help="a device profile (default: the shipped CPU profile)")
    p.add_argument("--budget_ms", type=float, default=None, help="time to first token to stay within")
    p.add_argument("--video_minutes", type=float, default=None, help="the video's length")
    p.add_argument("--fps", type=float, default=None, help="the video's frame rate (default: the profiled video's)")
    p.add_argument("--keyframe_every", type=int, default=None, help="frames between keyframes (default: profiled)")
    p.add_argument("--event_seconds", type=float, default=2.0,
                   help="with a video and no budget: the shortest event to catch (one frame per this many seconds)")
    p.add_argument("--decoder", default=None, help="pyav | nvdec (default: the profile's fastest)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = p.parse_args(argv)
    prof = profile.load(args.profile or profile.shipped("cpu"))
    spec = None
    if args.run:
        from liteframe_jax.assembly import run_folder
        from liteframe_jax.assembly.specs import VideoLLMSpec
        spec = run_folder.read_spec(args.run, VideoLLMSpec)
    name, model = planner.model_entry(prof, spec=spec, baseline=args.baseline)
    video = None
    if args.video_minutes is not None:
        seen = next(iter(prof["decoders"].values()))["video"]
        video = profile.Video.of_minutes(args.video_minutes, args.fps or seen["fps"],
                                         args.keyframe_every or seen["keyframe_every"])
    answer = planner.plan(model, prof, budget_ms=args.budget_ms, video=video, event_seconds=args.event_seconds,
                          decoder=args.decoder)
    print(json.dumps(answer, indent=1) if args.json else describe(name, prof, answer))
    return answer


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:  # a budget nothing fits, a run the profile lacks: one line
        raise SystemExit(f"error: {e}") from None
