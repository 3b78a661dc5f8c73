"""`bench targets`: writing the teacher-target cache against the bare teacher forward pass, in one run.

Three figures on the same clips' shape (`configs/targets.py:paper`, a random InternViT-300M at 448 px with the
InternVL3 projector, bfloat16): the compiled teacher + compression alone on frames already on the device; the
decoding alone (the job's own reader, `pipeline.eval_batches`, on generated 720p H.264 videos); and the whole
job (`train/target_cache_job.build`), whose frames/s is the smaller of the two when they overlap. Then the same
with frames read from the decoded-clip cache (`ctd.data.clip_cache`): its one-time build, reading it alone,
and the job on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp

from liteframe_jax.bench.common import random_frames, timed
from liteframe_jax.bench.pipeline import synthetic_video
from liteframe_jax.core import sharding
from liteframe_jax.core.configs import load_config_file
from liteframe_jax.data import pipeline


def targets_config(small: bool, videos: str, read_threads: int):
    c = load_config_file("targets", "paper")
    c.ctd.teacher.init = "random"
    c.ctd.data.videos, c.ctd.data.eval_every_nth_video = videos, 0
    c.read_threads = read_threads
    if small:
        from liteframe_jax.bench.training import ctd_config
        small_ctd = ctd_config(True, None, "xla", "xla", 2)
        c.ctd.teacher, c.ctd.student, c.ctd.compression = small_ctd.teacher, small_ctd.student, small_ctd.compression
        c.ctd.dtype = "float32"
        c.batch_size, c.shard_size = 2, 8
    c.ctd.mesh.num_devices = 1
    return c


def bench_targets(small: bool, read_threads: int = 16, videos_n: int = 16, seconds: int = 60):
    from liteframe_jax.train import target_cache_job
    from liteframe_jax.train.ctd import CTDTask
    folder = tempfile.mkdtemp(prefix="liteframe_bench_targets_")
    try:
        one = synthetic_video(folder, 4 if small else seconds, small)
        videos = os.path.join(folder, "videos")
        os.makedirs(videos)
        for i in range(2 if small else videos_n):
            shutil.copy(one, os.path.join(videos, f"v{i}.mp4"))
        config = targets_config(small, videos, read_threads)
        task = CTDTask(config.ctd, sharding.local_mesh(), os.path.join(folder, "probe"))
        clips = task.train_index.clips
        b, t, s = config.batch_size, task.num_frames, task.teacher_image_size

        frozen, frozen_sh = task.frozen()
        fn = jax.jit(lambda f, x: task.targets(f, x).astype(jnp.bfloat16),
                     in_shardings=(frozen_sh, sharding.batch_sharding(task.mesh, 5)))
        x = jax.device_put(random_frames(b, t, s), sharding.batch_sharding(task.mesh, 5))
        sec = timed(fn, frozen, x)
        yield {"bench": "targets", "mode": "teacher + compression alone", "batch": b, "frames_per_s": b * t / sec,
               "clips_per_s": b / sec}

        t0, n = time.perf_counter(), 0
        for batch, mask in pipeline.eval_batches(clips, size=s, batch_size=b, read_threads=read_threads):
            n += int(mask.sum())
        sec = time.perf_counter() - t0
        yield {"bench": "targets", "mode": f"decoding alone ({read_threads} threads, 720p H.264)", "batch": b,
               "frames_per_s": n * t / sec, "clips_per_s": n / sec, "clips": n}

        stats = target_cache_job.build(config, os.path.join(folder, "cache"))
        yield {"bench": "targets", "mode": "the targets job (decode + teacher + write)", "batch": b,
               "frames_per_s": stats["frames"] / stats["seconds"], "clips_per_s": stats["clips"] / stats["seconds"],
               "clips": stats["clips"]}

        # The same job reading frames from the decoded-clip cache (`ctd.data.clip_cache`), built first: once
        # per dataset, shared by every later job and training run.
        from liteframe_jax.data import clip_cache
        t0 = time.perf_counter()
        frames_cache = clip_cache.build(clips, os.path.join(folder, "clips"), s, workers=0)
        sec = time.perf_counter() - t0
        yield {"bench": "targets", "mode": "decoded-clip cache build (once per dataset, one process per core)",
               "frames_per_s": len(clips) * t / sec, "clips_per_s": len(clips) / sec, "clips": len(clips)}
        t0, n = time.perf_counter(), 0
        for batch, mask in pipeline.eval_batches(clips, size=s, batch_size=b, read_threads=read_threads,
                                                 cache=frames_cache):
            n += int(mask.sum())
        sec = time.perf_counter() - t0
        yield {"bench": "targets", "mode": f"reading the clip cache alone ({read_threads} threads)", "batch": b,
               "frames_per_s": n * t / sec, "clips_per_s": n / sec, "clips": n}
        config.ctd.data.clip_cache = os.path.join(folder, "clips")
        stats = target_cache_job.build(config, os.path.join(folder, "cache_from_clips"))
        yield {"bench": "targets", "mode": "the targets job on the clip cache (read + teacher + write)", "batch": b,
               "frames_per_s": stats["frames"] / stats["seconds"], "clips_per_s": stats["clips"] / stats["seconds"],
               "clips": stats["clips"]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
