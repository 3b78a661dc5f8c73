"""`bench index`: the start-up of a run on a million videos, and probing in parallel.

A synthetic index of N videos (JSON Lines parts, as P processes write them) is read back and turned into the
clip table in a process of its own, timed and with its peak resident memory (VmHWM) beside that of a process
that only imports the same modules. Then real files are probed with 1 and with 8 threads, the rate a first
start indexes at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from liteframe_jax.data import demo, video_index

_CHILD = """
import sys, time, json, pickle
from liteframe_jax.data import clips, video, video_index
if len(sys.argv) > 1:
    t0 = time.perf_counter()
    infos = video_index.load(sys.argv[1])
    t1 = time.perf_counter()
    index = clips.build_index(sorted(infos), num_frames=8, stride=4, infos=infos)
    t2 = time.perf_counter()
    size = len(pickle.dumps(index.clips))
    print(json.dumps({"load_s": t1 - t0, "clip_table_s": t2 - t1, "videos": len(index.videos),
                      "unreadable": len(index.skipped), "clips": len(index.clips), "pickled_mb": size / 1e6}))
else:
    print("{}")
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], flush=True)
"""


def write_synthetic_index(folder: str, num_videos: int, parts: int, seed: int = 0) -> float:
    """Parts of an index of `num_videos` made-up videos (0.5% unreadable); returns the seconds it took."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(300, 18_000, num_videos)
    bad = rng.random(num_videos) < 0.005
    start = time.perf_counter()
    for p in range(parts):
        lines = []
        for i in range(p, num_videos, parts):
            path = f"/data/videos/{i % 1000:03d}/video_{i:07d}.mp4"
            row = ({"path": path, "error": f"{path}: InvalidDataError: [Errno 1094995529] Invalid data"} if bad[i]
                   else {"path": path, "frames": int(frames[i]), "fps": 30.0, "width": 1280, "height": 720})
            lines.append(json.dumps(row))
        with open(os.path.join(folder, f"{video_index.PART_PREFIX}synthetic-p{p}.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return time.perf_counter() - start


def _child(*args) -> tuple[dict, int]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[0]), int(lines[1]) * 1024


def bench_video_index(*, small: bool = False, num_videos: int | None = None, parts: int = 16) -> list[dict]:
    num_videos = num_videos or (20_000 if small else 1_000_000)
    folder = tempfile.mkdtemp(prefix="bench_index_")
    rows = []
    try:
        write_s = write_synthetic_index(folder, num_videos, parts)
        base = _child()[1]
        figures, peak = _child(folder)
        rows.append({"bench": "index", "mode": f"{num_videos} videos, {parts} parts", "write_s": write_s,
                     **figures, "peak_rss_gb": peak / 1e9, "rss_over_imports_gb": (peak - base) / 1e9,
                     "bytes_per_video": (peak - base) / num_videos})
        files = _videos_to_probe(os.path.join(folder, "videos"), 16 if small else 64)
        for threads in (1, 8):
            start = time.perf_counter()
            found = video_index.probe_all(files, threads)
            sec = time.perf_counter() - start
            assert all(not isinstance(v, str) for v in found.values()), found
            rows.append({"bench": "index", "mode": f"probe, {threads} threads", "videos": len(files),
                         "seconds": sec, "videos_per_s": len(files) / sec})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def _videos_to_probe(folder: str, count: int) -> list[str]:
    """`count` distinct 10-second 320x240 H.264 files (copies of one: each is opened and read on its own)."""
    os.makedirs(folder)
    first = demo.write_video(os.path.join(folder, "v0000.mp4"),
                             demo.render(demo.random_shapes(np.random.default_rng(0), 2), 300, 320, 240), fps=30)
    out = [first]
    for i in range(1, count):
        out.append(os.path.join(folder, f"v{i:04d}.mp4"))
        shutil.copyfile(first, out[-1])
    return out
