"""`bench pipeline`: 720p H.264 decoding and resizing per core, and the Grain input pipeline with worker
processes; the synthetic 720p video the latency bench decodes too."""

from __future__ import annotations

import os
import time

import numpy as np


def bench_pipeline(small, workers_list):
    """720p H.264 decode + resize to 448 (per core), and the Grain pipeline with worker processes."""
    import tempfile

    import av

    from liteframe_jax.data import clips as clips_lib
    from liteframe_jax.data import demo, pipeline
    folder = tempfile.mkdtemp()
    w, h, n = (320, 180, 48) if small else (1280, 720, 120)
    rng = np.random.default_rng(0)
    frames = demo.render(demo.random_shapes(rng, 3), n, w, h, speed=0.01)
    noise = rng.integers(0, 40, frames.shape, np.uint8)  # texture, so the codec has real work
    path = demo.write_video(os.path.join(folder, "clip.mp4"), frames + noise, fps=30)
    size = 112 if small else 448
    t0 = time.perf_counter()
    count = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        for f in c.decode(s):
            f.reformat(width=size, height=size, format="rgb24").to_ndarray()
            count += 1
    sec = time.perf_counter() - t0
    yield {"bench": "decode", "source": f"{w}x{h} H.264", "to": size, "threads": 1, "frames_per_s": count / sec}
    copies = [os.path.join(folder, f"c{i}.mp4") for i in range(16)]
    for c in copies:
        os.link(path, c)
    index = clips_lib.build_index(copies, num_frames=8, stride=4)
    def delivered(workers, batches, cache=None):
        """(clips/s, frames/s) of 8-clip batches after the first, which waits for the workers to start."""
        ds = iter(pipeline.train_dataset(index.clips, size=size, batch_size=8, seed=0, num_workers=workers,
                                         read_threads=2, cache=cache))
        next(ds)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(ds)
        sec = time.perf_counter() - t0
        if hasattr(ds, "close"):
            ds.close()
        return {"workers": workers, "clips_per_s": batches * 8 / sec, "frames_per_s": batches * 64 / sec}

    for workers in workers_list:
        yield {"bench": "pipeline", **delivered(workers, 6 if small else 10)}
    # The decoded-clip cache: built once (each video decoded front to back), then read instead of decoding.
    from liteframe_jax.data import clip_cache
    cache_workers = max(workers_list) or 1
    t0 = time.perf_counter()
    cache = clip_cache.build(index.clips, os.path.join(folder, "cache"), size, workers=cache_workers,
                             log=lambda msg: None)
    sec = time.perf_counter() - t0
    yield {"bench": "clip_cache_build", "workers": cache_workers, "source": f"{w}x{h} H.264",
           "clips_per_s": len(index.clips) / sec, "frames_per_s": len(index.clips) * 8 / sec,
           "decoded_frames_per_s": len(copies) * n / sec}
    for workers in sorted({0, min(4, cache_workers)}):
        yield {"bench": "pipeline_cached", **delivered(workers, 6 if small else 40, cache)}
    import shutil
    shutil.rmtree(folder, ignore_errors=True)  # the videos and the cache: gigabytes at 720p


def synthetic_video(folder: str, seconds: int, small: bool) -> str:
    """A 1280x720, 30 fps H.264 video with a keyframe every 2 s (web video's usual spacing), textured so the
    codec has real work; rendered a second at a time."""
    from liteframe_jax.data import demo
    w, h, fps = (320, 180, 30) if small else (1280, 720, 30)
    rng = np.random.default_rng(0)
    # one second of moving shapes over a fixed grain texture, shifted sideways every second: rendering every
    # second anew would take longer than the benchmark itself
    shapes = demo.random_shapes(rng, 4)
    second = demo.render(shapes, fps, w, h, speed=0.01) + rng.integers(0, 24, (h, w, 3), np.uint8)

    def frames():
        for s in range(seconds):
            yield from np.roll(second, 37 * s, axis=2)

    return demo.write_video(os.path.join(folder, f"request_{w}x{h}_{seconds}s.mp4"), frames(), fps=fps,
                            keyframe_every=2 * fps)


def long_video(path: str, minutes: float) -> str:
    """`path` played over and over to `minutes` long, its packets copied with shifted timestamps (nothing is
    re-encoded): a long request video in seconds."""
    import av
    out_path = path.replace(".mp4", f"_{minutes:g}min.mp4")
    with av.open(path) as src, av.open(out_path, "w") as out:
        s = src.streams.video[0]
        o = out.add_stream_from_template(s)
        packets = [p for p in src.demux(s) if p.dts is not None]
        length = max(p.pts for p in packets) + (packets[-1].duration or 1) - min(p.pts for p in packets)
        repeats = int(np.ceil(minutes * 60 / float(length * s.time_base)))
        for r in range(repeats):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.pts, copy.dts, copy.duration = p.pts + r * length, p.dts + r * length, p.duration
                copy.is_keyframe, copy.time_base, copy.stream = p.is_keyframe, p.time_base, o
                out.mux(copy)
    return out_path


def time_decode(path: str, indices, size: int, workers: int, runs: int = 3, decoder: str = "pyav"):
    """(seconds of each run, frames): the frames at `indices` decoded and resized by `workers` threads, each
    over its own stretch of the file (`video.decode_frames_split`), or with `decoder='nvdec'` by the GPU's
    decode sessions (`nvdec.decode_frames`, timed until the frames are on the GPU)."""
    from liteframe_jax.data import nvdec, video
    num_frames = video.probe(path).num_frames
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        if decoder == "nvdec":
            frames = nvdec.decode_frames(path, indices, size, num_frames).block_until_ready()
        else:
            frames = video.decode_frames_split(path, indices, size, workers)
        times.append(time.perf_counter() - t)
    return times, frames
