"""Where a jitted function's device time goes: a kernel-level breakdown from a JAX profiler trace.

`kernel_breakdown(fn, *args)` runs `fn` a few times under `jax.profiler.trace(..., create_perfetto_trace=True)`
and sums the device-side events of the trace by kernel name and by kind (matmul, attention, elementwise /
reduction fusions, copies). It reads the Chrome-trace JSON that the profiler writes, so it needs no
TensorBoard plugin. On a CPU the trace has no device streams and the breakdown is empty.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile

import jax


def _kind(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("cudnn", "flash", "fmha", "sdpa", "attention")):
        return "attention"
    if any(k in n for k in ("gemm", "cublas", "cutlass", "sm90_xmma", "xmma", "matmul", "dot", "triton_gemm",
                                "nvjet")):
        return "matmul"
    if any(k in n for k in ("memcpy", "memset", "copy")):
        return "copy"
    if any(k in n for k in ("reduce", "fusion", "loop", "input_", "elementwise", "convert", "transpose")):
        return "fusion (elementwise/reduction)"
    return "other"


def _device_events(trace: dict) -> list[dict]:
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e["args"]["name"]
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e["args"]["name"]
    device_pids = {pid for pid, name in processes.items() if "/device:" in name and "CPU" not in name}
    # Device processes carry one thread per CUDA stream plus summary threads ("XLA Ops", "XLA Modules", ...)
    # that repeat the same time; only the stream threads are summed.
    out = []
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in device_pids:
            continue
        thread = threads.get((e["pid"], e.get("tid")), "")
        if "stream" in thread.lower():
            out.append(e)
    return out


def kernel_breakdown(fn, *args, runs: int = 3, top: int = 15) -> dict:
    jax.block_until_ready(fn(*args))  # compiled and warm before the trace starts
    with tempfile.TemporaryDirectory(prefix="profile_") as folder:  # traces are large; keep only the sums
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(runs):
                jax.block_until_ready(fn(*args))
        paths = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
        if not paths:
            raise FileNotFoundError(f"the profiler wrote no perfetto_trace.json.gz under {folder}")
        with gzip.open(paths[0]) as f:
            events = _device_events(json.load(f))
    by_name, by_kind = collections.Counter(), collections.Counter()
    counts = collections.Counter()
    for e in events:
        name = e.get("name", "?")
        by_name[name] += e.get("dur", 0.0)
        counts[name] += 1
        by_kind[_kind(name)] += e.get("dur", 0.0)
    total = sum(by_kind.values())
    per_run = lambda us: us / runs / 1e3  # microseconds over all runs -> ms per run
    return {
        "device_ms_per_run": per_run(total),
        "by_kind_ms": {k: per_run(v) for k, v in by_kind.most_common()},
        "top_kernels": [{"name": n[:120], "ms": per_run(v), "calls_per_run": counts[n] // runs,
                         "share": v / total if total else 0.0} for n, v in by_name.most_common(top)],
    }


def format_breakdown(title: str, b: dict) -> str:
    lines = [f"{title}: {b['device_ms_per_run']:.2f} ms of device time per run"]
    lines += [f"  {k:32s} {v:8.2f} ms" for k, v in b["by_kind_ms"].items()]
    lines += [f"    {k['ms']:7.2f} ms {k['share']:6.1%} x{k['calls_per_run']:<4d} {k['name']}" for k in b["top_kernels"]]
    return "\n".join(lines)
