"""A decoded-clip cache: every training clip decoded once, kept as uint8 frames, read back at memory speed.

Random access to clips is what makes CTD's input pipeline slow: each clip seeks to the keyframe before its first
frame and decodes from there, so with long GOPs most decoded frames are thrown away (docs/BENCHMARKS_HISTORY.md,
second pass: ~85 useful frames/s from 14 workers against the 400-1300 frames/s a CTD step consumes on an H100).
Building the cache decodes each video once, front to back, cutting all of its clips in the same pass, with one
process per video in parallel; training then reads (T, S, S, 3) uint8 slices of memory-mapped `.npy` shards, in the
same shuffled order as the decoding pipeline, so switching a run to its cache changes no batch.

Layout of a cache folder: `meta.json` (what was cached: frame size and the exact clip list, per-shard clip
counts, which clips failed to decode) and `shard_NNNNN.npy` arrays of shape (clips, T, S, S, 3) uint8.
A cache is bound to its clip list: opening it for another list (other videos, frame count, stride, size)
is an error that says what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time

import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.data import bad_data, video
from liteframe_jax.data.clips import ClipSpec

META = "meta.json"


def _fingerprint(clips: list[ClipSpec], size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    for c in clips:
        h.update(f"{c.path}|{','.join(map(str, c.frame_indices))}\n".encode())
    return h.hexdigest()


def decode_clips_in_one_pass(path: str, clips: list[tuple[int, ...]], size: int):
    """Yield (k, frames) for each clip k of one video, decoding the file once from its start.

    Frames are kept only while a pending clip still needs them. A file that ends early repeats its last
    frame (as `video.decode_frames` does); one that fails mid-way raises `VideoError` after the clips
    completed before the failure have been yielded.
    """
    order = sorted(range(len(clips)), key=lambda k: (min(clips[k]), max(clips[k])))
    wanted = {i for c in clips for i in c}
    kept: dict[int, np.ndarray] = {}
    last, pending = None, 0

    def ready(up_to):
        nonlocal pending
        while pending < len(order) and max(clips[order[pending]]) <= up_to:
            k = order[pending]
            yield k, video.assemble(clips[k], kept, last)
            pending += 1
            if pending < len(order):  # free what no later clip needs
                low = min(clips[order[pending]])
                for i in [i for i in kept if i < low]:
                    del kept[i]

    try:
        with video.open_container(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # one process per core does the parallelism
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    last = frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
                    kept[i] = last
                    yield from ready(i)
                if pending == len(order):
                    return
    except Exception as e:
        raise video.VideoError(path, f"decoding failed: {type(e).__name__}: {e}") from e
    if last is None:
        raise video.NoFramesError(path, "no frame could be decoded")
    yield from ready(float("inf"))


def _fill_shard(args):
    """Worker: decode the videos of one shard into its preallocated .npy; returns (valid mask, errors)."""
    shard_path, size, t, videos = args  # videos: [(path, [(row, frame_indices), ...]), ...]
    rows = sum(len(v[1]) for v in videos)
    out = np.lib.format.open_memmap(shard_path, mode="w+", dtype=np.uint8, shape=(rows, t, size, size, 3))
    valid = np.zeros(rows, bool)
    errors = {}
    for path, items in videos:
        try:
            for k, frames in decode_clips_in_one_pass(path, [idx for _, idx in items], size):
                out[items[k][0]] = frames
                valid[items[k][0]] = True
        except video.VideoError as e:
            errors[path] = str(e)
    out.flush()
    del out
    return valid, errors


def build(clips: list[ClipSpec], folder: str, size: int, *, workers: int = 0, log=logging.info) -> "ClipCache":
    """Decode `clips` into a new cache at `folder` with `workers` processes (0: one per CPU core)."""
    if not clips:
        raise ValueError("no clips to cache")
    t = len(clips[0].frame_indices)
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, META)):
        raise FileExistsError(f"{folder} already holds a clip cache; open it, or remove it to rebuild")
    workers = workers or os.cpu_count() or 1
    by_video: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_video.setdefault(c.path, []).append(i)
    # Shards balanced by clip count; each is one worker task, so several shards per worker keep all busy.
    num_shards = min(len(by_video), workers * 4)
    shards = [[] for _ in range(num_shards)]
    loads = [0] * num_shards
    for path, rows in sorted(by_video.items(), key=lambda kv: -len(kv[1])):
        s = loads.index(min(loads))
        shards[s].append((path, rows))
        loads[s] += len(rows)
    shards = [s for s in shards if s]
    location = []  # clip row -> (shard, offset)
    tasks = []
    for s, videos in enumerate(shards):
        offset, local = 0, []
        for path, rows in videos:
            items = []
            for r in rows:
                items.append((offset, clips[r].frame_indices))
                location.append((r, s, offset))
                offset += 1
            local.append((path, items))
        tasks.append((os.path.join(folder, f"shard_{s:05d}.npy"), size, t, local))
    start, done_clips = time.time(), 0
    valid_by_shard, errors = [None] * len(tasks), {}
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds an accelerator runtime
    with ctx.Pool(min(workers, len(tasks))) as pool:
        for s, (valid, errs) in enumerate(pool.imap(_fill_shard, tasks)):
            valid_by_shard[s] = valid.tolist()
            errors.update(errs)
            done_clips += len(valid)
            rate = done_clips / max(time.time() - start, 1e-9)
            log(f"[clip cache] shard {s + 1}/{len(tasks)}: {done_clips}/{len(clips)} clips, {rate:.1f} clips/s "
                f"({rate * t:.0f} frames/s), ETA {(len(clips) - done_clips) / max(rate, 1e-9):.0f} s")
    location.sort()
    meta = {"size": size, "num_frames": t, "num_clips": len(clips), "fingerprint": _fingerprint(clips, size),
            "shards": [{"file": os.path.basename(task[0]), "clips": len(v)} for task, v in zip(tasks, valid_by_shard)],
            "valid": valid_by_shard, "location": [[s, o] for _, s, o in location], "errors": errors,
            "build_seconds": time.time() - start}
    with open(os.path.join(folder, META + ".tmp"), "w") as f:
        json.dump(meta, f)
    os.replace(os.path.join(folder, META + ".tmp"), os.path.join(folder, META))  # complete, or absent
    cache = ClipCache(folder)
    log(f"[clip cache] {folder}: {cache.summary()}")
    return cache


class ClipCache:
    """Random-access view of a built cache: `cache[i]` -> {'frames': (T, S, S, 3) uint8}, or
    `pipeline.dropped(...)` for a clip whose video failed to decode. Picklable (Grain workers reopen the memory
    maps lazily)."""

    def __init__(self, folder: str):
        path = os.path.join(folder, META)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{folder} holds no clip cache ({META} missing: never built, or the build "
                                    "was interrupted; remove the folder and build again)")
        with open(path) as f:
            self.meta = json.load(f)
        self.folder = folder
        self._maps = None

    def check(self, clips: list[ClipSpec], size: int) -> "ClipCache":
        """Raise unless this cache holds exactly `clips` at `size`, saying what differs."""
        m = self.meta
        problems = []
        if m["size"] != size:
            problems.append(f"frame size {m['size']} cached, {size} wanted")
        if m["num_clips"] != len(clips):
            problems.append(f"{m['num_clips']} clips cached, {len(clips)} wanted")
        if clips and m["num_frames"] != len(clips[0].frame_indices):
            problems.append(f"{m['num_frames']} frames per clip cached, {len(clips[0].frame_indices)} wanted")
        if not problems and m["fingerprint"] != _fingerprint(clips, size):
            problems.append("the same number of clips, but other videos or frame indices (data.videos, "
                            "frame_stride, clip_hop or the held-out split changed)")
        if problems:
            raise ValueError(f"clip cache {self.folder} does not match this run's data: " + "; ".join(problems) +
                             ". Point data.clip_cache at a new folder to build a matching cache.")
        return self

    def summary(self) -> str:
        bad = sum(1 for v in self.meta["valid"] for ok in v if not ok)
        text = (f"{self.meta['num_clips']} clips of {self.meta['num_frames']}x{self.meta['size']}px in "
                f"{len(self.meta['shards'])} shards, {bad} unreadable")
        return text + "".join(f"\n  {p}: {why}" for p, why in sorted(self.meta["errors"].items()))

    def __len__(self) -> int:
        return self.meta["num_clips"]

    def __getitem__(self, i: int):
        if self._maps is None:
            self._maps = [np.load(os.path.join(self.folder, s["file"]), mmap_mode="r") for s in self.meta["shards"]]
        s, o = self.meta["location"][int(i)]
        if not self.meta["valid"][s][o]:
            return {"_dropped": np.int32(bad_data.code(bad_data.MID_RUN))}  # as pipeline.dropped
        return {"frames": np.array(self._maps[s][o])}

    def __getstate__(self):
        return {"folder": self.folder, "meta": self.meta, "_maps": None}


def open_or_build(clips: list[ClipSpec], folder: str, size: int, *, workers: int = 0, may_build: bool = True,
                  log=logging.info) -> ClipCache:
    if paths.is_remote(folder):
        raise ValueError(f"clip cache {folder}: the cache is memory-mapped and must be a local folder (its clips "
                         "may come from a bucket)")
    folder = os.path.expanduser(folder)
    if os.path.exists(os.path.join(folder, META)):
        cache = ClipCache(folder).check(clips, size)
        log(f"[clip cache] using {folder}: {cache.summary()}")
        return cache
    if not may_build:
        raise FileNotFoundError(f"clip cache {folder} is not built; build it with a single-process run first "
                                "(multi-process runs only read a cache)")
    log(f"[clip cache] building {folder}: {len(clips)} clips, each video decoded once")
    return build(clips, folder, size, workers=workers, log=log)
