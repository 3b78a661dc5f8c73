"""The video index: each video's frame count, frame rate and size, or why it cannot be read, probed once.

A run keeps its index in `WORKDIR/video_index/` (or a shared folder, `data.video_index`), as JSON Lines parts:
a later start, or another run given the same folder, probes only the videos no part names yet. Probing is
spread over a run's processes (each probes every P-th new video, in threads) and every process then reads
every part, so all of them build the same clip list. Files are named by what was probed, not trusted to stay
the same: a video changed or deleted later fails when it is decoded, and that clip is dropped and counted.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import uuid

from liteframe_jax.core import paths
from liteframe_jax.data import bad_data, video

PART_PREFIX = "part-"


def _row(path: str, result) -> dict:
    if isinstance(result, video.VideoInfo):
        return {"path": path, "frames": result.num_frames, "fps": result.fps, "width": result.width,
                "height": result.height}
    return {"path": path, "error": result.detail, "reason": result.reason}


def _entry(row: dict):
    if "error" in row:
        return video.Unreadable(row.get("reason", bad_data.UNREADABLE), str(row["error"]))
    return video.VideoInfo(row["path"], int(row["frames"]), float(row["fps"]), int(row["width"]), int(row["height"]))


def load(folder: str) -> dict[str, video.VideoInfo | video.Unreadable]:
    """{path: VideoInfo, or why it cannot be used (video.Unreadable)} from every part in `folder` (empty if none)."""
    if not paths.isdir(folder):
        return {}
    out = {}
    for name in paths.listdir(folder):
        if name.startswith(PART_PREFIX) and name.endswith(".jsonl"):
            for line in paths.read_text(os.path.join(folder, name)).splitlines():
                if line.strip():
                    row = json.loads(line)
                    out[row["path"]] = _entry(row)
    return out


def probe_all(videos: list[str], threads: int = 8) -> dict[str, video.VideoInfo | video.Unreadable]:
    """Probe in `threads` threads (PyAV releases the GIL while FFmpeg reads and decodes)."""
    def one(path):
        try:
            return path, video.probe(path)
        except video.VideoError as e:
            return path, video.Unreadable(e.reason, e.detail)
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        return dict(pool.map(one, videos))


def write_part(folder: str, results: dict, process_index: int) -> str | None:
    if not results:
        return None
    paths.makedirs(folder)
    name = f"{PART_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-p{process_index}-{uuid.uuid4().hex[:8]}.jsonl"
    path = os.path.join(folder, name)
    paths.write_text(path, "".join(json.dumps(_row(p, r)) + "\n" for p, r in sorted(results.items())))
    return path


def index_videos(videos: list[str], folder: str | None, *, threads: int = 8, process_index: int = 0,
                 process_count: int = 1, barrier=lambda name: None, log=lambda msg: None
                 ) -> dict[str, video.VideoInfo | video.Unreadable]:
    """Every video of `videos` in the index at `folder` (None: none kept), probing the new ones.

    `barrier(name)` must return once every process has called it with that name (all processes call this
    with the same `videos`): it separates reading the parts, probing and writing, and reading again."""
    known = load(folder) if folder else {}
    shared = folder is not None and process_count > 1
    if shared:
        barrier("video_index_read")  # everyone has the same view of the parts before any is added
    new = [v for v in videos if v not in known]
    mine = new[process_index::process_count] if shared else new
    if new:
        t0 = time.perf_counter()
        results = probe_all(mine, threads)
        log(f"video index: probed {len(mine)} new videos in {time.perf_counter() - t0:.1f}s"
            + (f" (this process's share of {len(new)})" if process_count > 1 else "")
            + (f"; {len(videos) - len(new)} known from {folder}" if known else ""))
        if folder:
            write_part(folder, results, process_index)
        if shared:
            barrier("video_index_written")
            known = load(folder)
        else:
            known.update(results)
    elif videos:
        log(f"video index: all {len(videos)} videos known from {folder}")
    return {v: known[v] for v in videos}
