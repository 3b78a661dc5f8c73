"""Where a run keeps its video index (`config.data.video_index`), and the processes' barrier around it."""

from __future__ import annotations

import jax

from liteframe_jax.core.log import log
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.data import video_index


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def index_videos_of_run(videos: list[str], d, workdir: str, task: str) -> dict:
    """{path: VideoInfo or why unreadable} for `videos`: read from the run's index, the new ones probed (each
    process its share) and added. `data.video_index`: '' WORKDIR/video_index, a folder, or 'off'."""
    setting = d.get("video_index", "")
    folder = None if setting == "off" else (setting or RunDir(workdir).video_index)
    return video_index.index_videos(sorted(set(videos)), folder, threads=int(d.get("probe_threads", 8)),
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    barrier=_barrier, log=lambda msg: log(f"[{task}] {msg}"))
