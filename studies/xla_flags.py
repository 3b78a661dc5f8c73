"""A study: which XLA GPU flags move the encoders' forward throughput.

`python studies/xla_flags.py [--profile]` runs the teacher (InternViT-300M, 64 frames) and the
`paper` student (256 frames; with exact and with tanh GELU) forward once per flag set, each in a fresh
process (XLA reads `XLA_FLAGS` once, at start-up), and prints frames/s per set. Flags that the installed
XLA does not know make the child fail; its row then carries the error. `--profile` adds each child's kernel
breakdown of the student (`bench/profile.py`). None of the sets helped on an H100 (docs/BENCHMARKS_HISTORY.md,
third pass), so the launch scripts set none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's package

FLAG_SETS = {
    "default": "",
    "cublaslt": "--xla_gpu_enable_cublaslt=true",
    "triton_gemm_any": "--xla_gpu_triton_gemm_any=true",
    "triton_gemm_any+warp_spec": "--xla_gpu_triton_gemm_any=true "
                                 "--xla_gpu_experimental_enable_triton_warp_specialization=true",
    "cudnn_gemm_fusion_2": "--xla_gpu_cudnn_gemm_fusion_level=2",
    "cudnn_gemm_fusion_3": "--xla_gpu_cudnn_gemm_fusion_level=3",
    "block_level_rewriter": "--xla_gpu_experimental_enable_fusion_block_level_rewriter=true",
}


def child(profile: bool) -> None:
    import dataclasses

    import jax
    from flax import nnx

    from liteframe_jax.bench.common import BF16, normalise_frames, paper_models, random_frames, timed
    from liteframe_jax.models.internvit import InternVisionTower
    from liteframe_jax.models.student import LiteFrameStudent

    small = jax.default_backend() == "cpu"  # tiny models: a smoke run of the script itself
    vit, _, student, _, _ = paper_models(small)
    impl = None if small else "cudnn"
    clips = lambda n: normalise_frames(random_frames(n // student.num_frames, student.num_frames, student.image_size))
    models = {  # name: (build, frames per call, input)
        "teacher": (lambda: InternVisionTower(vit, None, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl), 64,
                    lambda n: normalise_frames(random_frames(1, n, vit.image_size)[0])),
        "student": (lambda: LiteFrameStudent(student, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl), 256, clips),
        # the same student with tanh GELU, the activation cuBLASLt can apply inside the fc1 GEMM
        "student_tanh": (lambda: LiteFrameStudent(dataclasses.replace(student, act="gelu_pytorch_tanh"),
                                                  rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl), 256, clips),
    }
    row = {}
    for name, (build, n, make_input) in models.items():
        n = 16 if small else n
        graphdef, params = nnx.split(build())
        params = jax.tree.map(lambda a: a.astype(BF16), params)
        fn = jax.jit(lambda p, x, g=graphdef: nnx.merge(g, p)(x))
        x = make_input(n)
        sec = timed(fn, params, x)
        row[f"{name}_ms"] = sec * 1e3
        row[f"{name}_frames_per_s"] = n / sec
        if profile and name.startswith("student"):
            from liteframe_jax.bench.profile import format_breakdown, kernel_breakdown
            print(format_breakdown(f"{name} forward, {n} frames", kernel_breakdown(fn, params, x, top=30)),
                  file=sys.stderr, flush=True)
    print(json.dumps(row), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python studies/xla_flags.py", description=__doc__)
    parser.add_argument("--sets", default=",".join(FLAG_SETS), help="comma-separated names from FLAG_SETS")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per flag set")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.profile)
    rows = []
    for name in args.sets.split(","):
        env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + FLAG_SETS[name]).strip()}
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        cmd += ["--profile"] if args.profile else []
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            if args.profile:
                sys.stderr.write(f"--- {name}\n" + "\n".join(l for l in done.stderr.splitlines()
                                                           if l.startswith(("student", "  "))) + "\n")
            result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                "error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else f"rc {done.returncode}"}
        except subprocess.TimeoutExpired:
            result = {"error": f"over {args.timeout} s"}
        rows.append({"flags": name, "xla_flags": FLAG_SETS[name], **result})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
