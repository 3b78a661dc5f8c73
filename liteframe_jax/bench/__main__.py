"""`python -m liteframe_jax.bench [matmul|encoders|ctd|lma|pipeline|latency|probe|profile|scaling|export|index|all]
[--small] [--out results.json]`, or `python -m liteframe_jax.bench TOOL [its flags]` for the benches with
flags of their own (`TOOLS`: eval_devices, latency_profile, tpu_attention; `--help` after the name).

Real sizes, random weights, bfloat16 compute with float32 parameters. Every figure is the median of repeated
timed runs after warm-up (`jax.block_until_ready` around each), beside the bfloat16 matmul ceiling measured
in the same process, so MFU = model FLOP/s / measured ceiling. `--small` runs the model configs' `tiny`
presets on a CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import jax

from liteframe_jax.bench import preflight
from liteframe_jax.bench.common import default_tail_kernel, fused_mlp_kernel, matmul_ceiling
from liteframe_jax.bench.encoders import bench_encoders, profile_encoders
from liteframe_jax.bench.export import bench_export
from liteframe_jax.bench.latency import bench_latency
from liteframe_jax.bench.latency import parse_plans as latency_plans
from liteframe_jax.bench.pipeline import bench_pipeline
from liteframe_jax.bench.probe import bench_probe
from liteframe_jax.bench.scaling import bench_scaling
from liteframe_jax.bench.targets import bench_targets
from liteframe_jax.bench.training import bench_ctd, bench_lma, parse_plans
from liteframe_jax.bench.video_index import bench_video_index


# Benches with command lines of their own, run as `python -m liteframe_jax.bench NAME [flags]`.
TOOLS = {"eval_devices": "liteframe_jax.bench.eval_devices",  # evaluation questions/s over 1, 2, 4, 8 devices
         "latency_profile": "liteframe_jax.bench.latency_profile",  # the planner's device profile of a run
         "tpu_attention": "liteframe_jax.bench.tpu_attention"}  # splash vs XLA attention, compiled for a TPU


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m liteframe_jax.bench", description=__doc__)
    parser.add_argument("what", nargs="*", default=["all"],
                        help=f"benches to run (default: all); or one of {sorted(TOOLS)} alone, with its own flags",
                        choices=["all", "matmul", "encoders", "ctd", "lma", "pipeline", "latency", "probe",
                                 "profile", "scaling", "export", "index", "targets"])
    parser.add_argument("--small", action="store_true", help="the model configs' tiny presets (a CPU smoke run)")
    parser.add_argument("--attention", default="cudnn",
                        help="'cudnn' or 'xla'; encoders take a list (cudnn,xla), the other benches its first")
    parser.add_argument("--workers", default="0,4,8,14", help="Grain worker counts for the pipeline bench")
    parser.add_argument("--tail-kernel", default=None, choices=["xla", "pallas"],
                        help="the student's block-tail kernel in the CTD and scaling benches (default: 'pallas' "
                             "on a GPU, as the paper preset trains, else 'xla')")
    parser.add_argument("--teacher-mlp-kernel", default=None, choices=["xla", "pallas"],
                        help="the teacher's MLP in the CTD benches' online step (default: 'pallas', the fused "
                             "fc1 + GELU, on a Hopper GPU, else 'xla')")
    parser.add_argument("--decode", nargs="?", const="synthetic", default=None, metavar="VIDEO",
                        help="latency: decode each request's frames from VIDEO first (without VIDEO: a generated "
                             "2-minute 720p H.264 video; 'synthetic:MINUTES': that video repeated to MINUTES long), "
                             "timed as a stage of its own and, with NVDEC, streamed behind the encoder")
    parser.add_argument("--decoder", default="pyav", choices=["pyav", "nvdec", "auto"],
                        help="latency --decode: PyAV on CPU threads, or the GPU's video engines (data/nvdec.py)")
    parser.add_argument("--latency-plans", default=None,
                        help="latency: MODEL:FRAMES rows, e.g. 'internvl:64,liteframe:512' (models: internvl, posthoc, "
                             "liteframe, tubelet2; default: a fixed set)")
    parser.add_argument("--decode-workers", type=int, default=0,
                        help="latency: threads decoding one request's frames (default: one per CPU core)")
    parser.add_argument("--profile-probe", action="store_true",
                        help="probe: a kernel breakdown of the plain-JAX probe and of ours, stage by stage")
    parser.add_argument("--lma-plans", default=None,
                        help="lma: rows as batch:remat[:trainable][:scan][:encN], e.g. '1:full,2:full:full,"
                             "1:full:scan:enc8' (scan: scan_layers; encN: encoder_clips_per_pass=N; default: a "
                             "fixed set)")
    parser.add_argument("--ctd-modes", default="online teacher,cached targets",
                        help="ctd: the steps to time, 'online teacher' and/or 'cached targets' (comma-separated)")
    parser.add_argument("--ctd-batches", default=None, help="ctd: clips per step to time (default 16,32,64)")
    parser.add_argument("--read-threads", type=int, default=16, help="targets: decoding threads")
    parser.add_argument("--out", default=None, help="write all rows as JSON here")
    args = parser.parse_args(argv)
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags; argparse owns this command line
    what = {"matmul", "encoders", "ctd", "lma", "pipeline", "latency"} if "all" in args.what else set(args.what)
    attn_impls = [None if a == "xla" else a for a in args.attention.split(",")]
    impl = attn_impls[0]
    from liteframe_jax.data import nvdec
    cannot = preflight.problems(what, small=args.small, attention=attn_impls, decoder=args.decoder,
                                decode=args.decode, backend=jax.default_backend(),
                                nvdec_problem=nvdec.problem() if args.decoder == "nvdec" else None)
    if cannot:  # before the matmul ceiling and any model: one line, as a mistake in the command line
        print("error: " + "; ".join(cannot), file=sys.stderr)
        sys.exit(2)
    tail_kernel = args.tail_kernel or default_tail_kernel(args.small)
    teacher_mlp_kernel = args.teacher_mlp_kernel or fused_mlp_kernel()
    import flax

    header = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "flax": flax.__version__,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv)}
    # the export and index benches measure host time and memory, not FLOP/s: no matmul ceiling for them alone
    ceiling = matmul_ceiling(args.small) if what - {"export", "index", "targets"} else 0.0
    header["bf16_matmul_tflops"] = ceiling / 1e12
    print(json.dumps(header), flush=True)
    rows = []
    sections = [("encoders", lambda: bench_encoders(ceiling, args.small, attn_impls)),
                ("ctd", lambda: bench_ctd(ceiling, args.small, impl, tail_kernel, teacher_mlp_kernel,
                                          tuple(args.ctd_modes.split(",")),
                                          [int(b) for b in args.ctd_batches.split(",")] if args.ctd_batches else None)),
                ("lma", lambda: bench_lma(ceiling, args.small, impl,
                                          parse_plans(args.lma_plans) if args.lma_plans else None)),
                ("pipeline", lambda: bench_pipeline(args.small, [int(w) for w in args.workers.split(",")])),
                ("profile", lambda: profile_encoders(args.small, impl)),
                ("scaling", lambda: bench_scaling(ceiling, args.small, impl, tail_kernel=tail_kernel,
                                                  teacher_mlp_kernel=teacher_mlp_kernel)),
                ("probe", lambda: bench_probe(args.small, impl, sorted({"xla", fused_mlp_kernel()}, reverse=True),
                                              profile=args.profile_probe)),
                ("latency", lambda: bench_latency(ceiling, args.small, impl,
                                                  os.path.dirname(os.path.abspath(args.out)) if args.out else None,
                                                  args.decode, args.decode_workers, args.decoder,
                                                  latency_plans(args.latency_plans) if args.latency_plans else None)),
                ("export", lambda: bench_export(small=args.small)),
                ("index", lambda: bench_video_index(small=args.small)),
                ("targets", lambda: bench_targets(args.small, args.read_threads))]
    # every bench's temporary files (generated videos, caches, exports) land in one folder that goes when the
    # command ends, also when a bench fails
    scratch = tempfile.mkdtemp(prefix="liteframe_bench_")
    tempfile.tempdir = scratch
    began = time.perf_counter()
    try:
        for name, fn in sections:
            if name in what:
                print(f"[bench] {name}: started ({time.perf_counter() - began:.0f} s into the run)", flush=True)
                for row in fn():
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:  # after every row: a run stopped by a time limit keeps what it measured
                        write_rows(args.out, header, rows)
    finally:
        tempfile.tempdir = None
        shutil.rmtree(scratch, ignore_errors=True)
    if args.out:
        write_rows(args.out, header, rows)
    print("\n" + table(rows, ceiling))


def write_rows(path: str, header: dict, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)


def table(rows, ceiling) -> str:
    lines = [f"bf16 matmul ceiling: {ceiling / 1e12:.0f} TFLOP/s"] if ceiling else []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['bench']:9s} {r.get('model', r.get('mode', ''))} batch {r.get('batch', r.get('batch_frames'))}"
                         f": ERROR {r['error'][:120]}")
            continue
        what = r.get("model") or r.get("mode") or r.get("source") or (
            f"{r['dtype']} lora={r['lora']}" if r["bench"] == "export" else f"workers={r.get('workers')}")
        figs = [f"{k}={r[k]:.3g}" for k in (
            "devices", "batch", "batch_frames", "frames", "visual_tokens", "tokens", "ms", "decode_ms", "encode_ms",
            "prefill_ms", "ttft_ms", "ttft_with_decode_ms", "ttft_streamed_ms", "ttft_vs_internvl_max_frames",
            "ttft_streamed_vs_internvl_max_frames", "prompt_tokens", "keyframes_decode_ms", "decode_vs_raw",
            "raw_frames_per_s", "vs_probe", "frames_per_s",
            "samples_per_s", "tokens_per_s", "clips_per_s", "tflops", "mfu", "efficiency", "peak_gib", "step_gib",
            "step_gib_per_device", "compile_s", "seconds", "peak_rss_gb", "weights_float32_gb",
            "peak_over_float32_weights", "peak_over_written", "videos", "clips", "load_s", "clip_table_s",
            "rss_over_imports_gb", "bytes_per_video", "videos_per_s")
                if isinstance(r.get(k), (int, float))]
        lines.append(f"{r['bench']:9s} {what} [{r.get('attention', '')}] " + " ".join(figs))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
