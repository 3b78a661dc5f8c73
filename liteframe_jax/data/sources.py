"""A run's data sources, resolved to paths: what a config's `data` names (a folder of videos, a TFDS record,
conversation files, or a demo) becomes the files a task indexes. The demo data is written here, into the
workdir, once; a task only ever sees paths.

- `videos` (CTD): the training and held-out videos.
- `qa_files` (LMA): the training and held-out conversation files and the folder their videos are under.
"""

from __future__ import annotations

from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.data import clips, demo, needle, qa_demo, tfds_records


def videos(d, workdir: str) -> tuple[list[str], list[str]]:
    """(training videos, held-out videos) of a CTD config's `data`: `data.videos` is 'demo' (videos written
    into WORKDIR/demo_videos and the packaged sample clips), a TFDS record or a folder / list of videos; the
    held-out ones are `data.eval_videos`, else every `eval_every_nth_video`-th of them."""
    if d.videos == "demo":
        found = demo.make_demo_videos(RunDir(workdir).demo_videos) + demo.sample_clips()
    elif not d.videos:
        raise ValueError("data.videos is not set: give a folder of videos (--config.data.videos=/data/videos)")
    elif tfds_records.is_record(d.videos):
        found = tfds_records.record_paths(d.videos, d.get("tfds_data_dir"))
    else:
        found = clips.list_videos(d.videos)
    if d.eval_videos:
        return found, clips.list_videos(d.eval_videos)
    return clips.split_videos(found, d.eval_every_nth_video)


def qa_files(d, workdir: str) -> tuple[str, str | None, str | None]:
    """(training file, held-out file or None, video root) of an LMA config's `data`: `data.train` is 'demo'
    (data/qa_demo.py, written into WORKDIR/demo_qa), 'needle_demo' (short needle videos of exactly the run's
    frame count, data/needle.py, in WORKDIR/needle_qa) or a LLaVA-Video style JSON/JSONL file."""
    if d.train == "demo":
        root = RunDir(workdir).demo_qa
        return (*qa_demo.make_qa_set(root), root)
    if d.train == "needle_demo":
        root = RunDir(workdir).needle_qa
        return (*needle.make_qa_set(root, num_train=int(d.get("needle_videos", 480)), num_frames=int(d.num_frames),
                                    needle_frames=tuple(d.get("needle_frames", (1, 2)))), root)
    if not d.train:
        raise ValueError("data.train is not set: a LLaVA-Video style JSON/JSONL file, or 'demo'")
    return d.train, d.eval, d.video_root
