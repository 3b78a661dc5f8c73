"""`python -m liteframe_jax.main --config=configs/targets.py[:PRESET] --workdir=DIR`: CTD's teacher and
compression run once over the training clips, into a target cache (`data/target_cache.py`) that a CTD run then
reads with `--config.targets=cache:DIR` instead of running the teacher at every step.

`config.ctd` is the CTD config whose targets are cached (the same preset names; any field can be overridden,
`--config.ctd.teacher.init=...`). The shards are shared among processes (process p builds shards p, p + P,
...), each on its own devices; a shard is written under a temporary name and renamed when complete, so a
killed build started again builds only the missing shards. With `ctd.data.clip_cache` set, frames are read
from that decoded-clip cache (built first if missing) instead of decoded, as the training run would read them.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from liteframe_jax.core import paths, sharding
from liteframe_jax.core.log import log
from liteframe_jax.data import clip_cache, pipeline
from liteframe_jax.data import target_cache as tc


def _manifest(task, shard_size: int) -> dict:
    n = len(task.train_index.clips)
    return {"version": tc.VERSION, "settings": task.target_settings(), "num_clips": n, "shard_size": shard_size,
            "num_shards": -(-n // shard_size), "target_shape": [int(np.prod(task.target_grid)), task.target_shape[-1]],
            "dtype": "bfloat16"}


class _ClipRange:
    """Clips [start, start + n) of a decoded-clip cache, indexed from 0 like the shard's clip list."""

    def __init__(self, cache, start: int, n: int):
        self.cache, self.start, self.n = cache, start, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.cache[self.start + i]


class _ShardWriter:
    """One shard's records, written under a temporary name and renamed once its last clip is in."""

    def __init__(self, folder: str, k: int, clips, start: int):
        from array_record.python.array_record_module import ArrayRecordWriter
        self.final = os.path.join(folder, tc.shard_name(k))
        self.writer = ArrayRecordWriter(self.final + ".tmp", "group_size:1")
        self.clips, self.start, self.done = clips, start, 0

    def write(self, out, mask) -> bool:
        """Write one batch's targets (`out` on the device); True once the shard is complete."""
        out = np.asarray(jax.device_get(out))
        for row in range(len(mask)):
            if self.done < len(self.clips):  # the shard's last batch is padded
                i = self.done
                self.writer.write(tc.encode(self.start + i, self.clips[i], out[row] if mask[row] else None))
                self.done += 1
        if self.done < len(self.clips):
            return False
        self.writer.close()
        os.replace(self.final + ".tmp", self.final)
        return True


def _batches(shards, clips, shard_size: int, batch_size: int, size: int, read_threads: int, frames_cache):
    """(shard index, its clips, its first clip, batch, mask) for every batch of every shard, in order."""
    for k in shards:
        start = k * shard_size
        part = [clips[j] for j in range(start, min(start + shard_size, len(clips)))]
        view = None if frames_cache is None else _ClipRange(frames_cache, start, len(part))
        for batch, mask in pipeline.eval_batches(part, size=size, batch_size=batch_size, read_threads=read_threads,
                                                 cache=view):
            yield k, part, start, batch, mask


def build(config, workdir: str) -> dict:
    """Build (or finish) the cache; returns what this process built: clips and seconds in the shard loop."""
    from liteframe_jax.train.ctd import CTDTask
    if paths.is_remote(workdir):
        raise ValueError(f"the target cache is written as local ArrayRecord shards; {workdir} is in object storage")
    task = CTDTask(config.ctd, sharding.local_mesh(), workdir)
    if config.batch_size % len(jax.local_devices()):
        raise ValueError(f"batch_size {config.batch_size} is not divisible by this process's "
                         f"{len(jax.local_devices())} devices")
    want = _manifest(task, int(config.shard_size))
    path = os.path.join(workdir, tc.MANIFEST)
    if paths.isfile(path):
        have = tc.check_manifest(workdir, want["settings"])
        diff = tc.differences({k: v for k, v in want.items() if k != "settings"},
                              {k: v for k, v in have.items() if k != "settings"})
        if diff:
            raise ValueError(f"target cache {workdir} was laid out otherwise: " + "; ".join(diff))
    elif jax.process_index() == 0:
        paths.write_text(path, json.dumps(want, indent=1))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("target cache manifest")

    frozen, frozen_sh = task.frozen()
    batch_sh = sharding.batch_sharding(task.mesh, 5)
    s = task.teacher_image_size
    started = time.perf_counter()
    targets_fn = jax.jit(lambda f, x: task.targets(f, x).astype(jax.numpy.bfloat16),
                         in_shardings=(frozen_sh, batch_sh)).lower(
        frozen, jax.ShapeDtypeStruct((config.batch_size, task.num_frames, s, s, 3), jax.numpy.uint8)).compile()
    log(f"[targets] teacher + compression compiled in {time.perf_counter() - started:.1f}s")
    clips, shard, num_shards = task.train_index.clips, want["shard_size"], want["num_shards"]
    frames_cache = None
    if config.ctd.data.clip_cache:  # frames read back from the decoded-clip cache instead of decoded
        frames_cache = clip_cache.open_or_build(clips, config.ctd.data.clip_cache, s,
                                                workers=config.ctd.data.cache_workers,
                                                may_build=jax.process_count() == 1, log=log)
    mine = [k for k in range(jax.process_index(), num_shards, jax.process_count())
            if not os.path.exists(os.path.join(workdir, tc.shard_name(k)))]
    log(f"[targets] {len(clips)} clips in {num_shards} shards of {shard}; this process builds {len(mine)} of them "
        f"into {workdir} ({sum(os.path.exists(os.path.join(workdir, tc.shard_name(k))) for k in range(num_shards))} "
        "already complete)")
    t0, built, finished = time.perf_counter(), 0, 0
    writer = None  # the shard being written: shards come one after the other

    def write(k, part, start, out, mask):
        nonlocal built, finished, writer
        writer = writer or _ShardWriter(workdir, k, part, start)
        if writer.write(out, mask):
            writer = None
            built += len(part)
            finished += 1
            rate = built / (time.perf_counter() - t0)
            left = sum(min(shard, len(clips) - j * shard) for j in mine[finished:])
            log(f"[targets] shard {k + 1}/{num_shards}: {built} clips, {rate:.1f} clips/s "
                f"({rate * task.num_frames:.0f} frames/s), ETA {left / max(rate, 1e-9):.0f} s")

    # One batch in flight, across shard boundaries: the device computes batch n while the host writes batch
    # n - 1 and the readers prepare batch n + 1 (a shard is often a single batch).
    pending = None
    for k, part, start, batch, mask in _batches(mine, clips, shard, config.batch_size, s, int(config.read_threads),
                                                frames_cache):
        out = targets_fn(frozen, batch["frames"])
        if pending is not None:
            write(*pending)
        pending = (k, part, start, out, mask)
    if pending is not None:
        write(*pending)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("target cache shards")
    seconds = time.perf_counter() - t0
    log(f"[targets] done: {workdir} ({len(clips)} clips; use it with --config.targets=cache:{workdir})")
    return {"clips": built, "seconds": seconds, "frames": built * task.num_frames}
