"""The visual needle in a haystack: long generated videos in which a coloured shape shows for a moment (the
needle, a few frames) at a chosen depth, and the lettered question "what colour was it?".

The haystack is a grey disc drifting over a dark background for the whole video (grey is never an answer);
the needle is a square of one of the demo's six colours (data/demo.py) held for `needle_frames` frames,
starting at `depth` of the way through. A model sees the needle only if one of its sampled frames lands on it,
so accuracy over frame counts x depths shows what more frames find. Options are the six colours in a fixed
order, as the demo's lettered questions (data/qa_demo.py): chance is 1/6.

Sets are generated on first use into a folder with a manifest of what made them; every video's content comes
from its own seed (set seed, minutes, depth, index), so the same arguments give the same set, and a folder
made with other arguments is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.data.demo import COLOURS, write_video
from liteframe_jax.data.qa_demo import LETTERS, MC_SUFFIX

QUESTION = "What colour is the shape that appears for a moment?"
OPTIONS = tuple(COLOURS)
BACKGROUND = (25, 25, 35)
HAY = (128, 128, 128)  # the drifting disc: grey, never one of the options
MANIFEST = "needle_manifest.json"
ANNOTATION = "needle.json"


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(json.dumps(key).encode()))


def needle_start(num_frames: int, depth: float, needle_frames: int) -> int:
    """The needle's first frame: `depth` (0 = the start, 1 = the end) of the way through the video."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"needle depth {depth} is not within [0, 1]")
    return int(round(depth * (num_frames - needle_frames)))


def frames(num_frames: int, size: int, start: int, needle_frames: int, colour: str, rng: np.random.Generator):
    """(size, size, 3) uint8 frames one at a time (a 30-minute video never sits in memory whole)."""
    yy, xx = np.mgrid[0:size, 0:size]
    hay_r, needle_r = 0.18 * size, 0.2 * size
    pos, vel = rng.uniform(0.25, 0.75, 2) * size, rng.uniform(-0.6, 0.6, 2)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size  # where the needle shows
    for t in range(num_frames):
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = BACKGROUND
        pos = pos + vel
        for k in range(2):  # bounce off the edges: the haystack stays in view for the whole video
            if not hay_r <= pos[k] <= size - hay_r:
                vel[k] = -vel[k]
                pos[k] = np.clip(pos[k], hay_r, size - hay_r)
        frame[(xx - pos[0]) ** 2 + (yy - pos[1]) ** 2 <= hay_r ** 2] = HAY
        if start <= t < start + needle_frames:
            frame[(np.abs(xx - cx) <= needle_r) & (np.abs(yy - cy) <= needle_r)] = COLOURS[colour]
        yield frame


def lettered(question: str = QUESTION) -> str:
    """The question with its six lettered options, as the demo's multiple-choice rows are written."""
    block = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(OPTIONS))
    return f"{question}\n{block}\n{MC_SUFFIX}"


def _check_manifest(folder: str, manifest: dict, last_written: str = ANNOTATION) -> bool:
    """True if `folder` already holds this set (its last-written file is there); an error if it holds another."""
    path = os.path.join(folder, MANIFEST)
    if not paths.exists(path):
        return False
    with paths.open(path) as f:
        have = json.load(f)
    differ = [k for k in sorted(set(have) | set(manifest)) if have.get(k) != manifest.get(k)]
    if differ:
        raise ValueError(f"{folder} holds a needle set made with other arguments (" +
                         ", ".join(f"{k}: {have.get(k)!r} there, {manifest.get(k)!r} asked" for k in differ) +
                         "); use another folder")
    return paths.exists(os.path.join(folder, last_written))


def make_needle_set(folder: str, *, minutes=(1.0,), depths=(0.1, 0.3, 0.5, 0.7, 0.9), per_cell: int = 4,
                    fps: int = 4, size: int = 64, needle_frames: int = 3, seed: int = 0,
                    progress=None) -> str:
    """Write the needle videos and `needle.json` (rows: id, video, question, options, answer letter, depth,
    minutes, needle_start, needle_frames, video_frames) into `folder`, once; returns the annotation's path.
    `per_cell` videos for each (minutes, depth), each with its own needle colour."""
    minutes, depths = [float(m) for m in minutes], [float(d) for d in depths]
    for m in minutes:
        if m <= 0:
            raise ValueError(f"needle video length {m} minutes is not > 0")
    manifest = {"minutes": minutes, "depths": depths, "per_cell": int(per_cell), "fps": int(fps),
                "size": int(size), "needle_frames": int(needle_frames), "seed": int(seed)}
    annotation = os.path.join(folder, ANNOTATION)
    if _check_manifest(folder, manifest):
        return annotation
    paths.makedirs(os.path.join(folder, "videos"))
    paths.write_text(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1))
    rows, total, made = [], len(minutes) * len(depths) * per_cell, 0
    for m in minutes:
        num_frames = int(round(m * 60 * fps))
        if num_frames < 2 * needle_frames:
            raise ValueError(f"a {m}-minute video at {fps} fps has {num_frames} frames: too short for a needle of "
                             f"{needle_frames} frames")
        for d in depths:
            for i in range(per_cell):
                rng = _rng(seed, m, d, i)
                colour = OPTIONS[int(rng.integers(len(OPTIONS)))]
                start = needle_start(num_frames, d, needle_frames)
                name = f"videos/needle_{m:g}min_d{d:.2f}_{i:02d}.mp4"
                path = os.path.join(folder, name)
                if not paths.exists(path):  # a set interrupted while writing resumes at its first missing video
                    write_video(path, frames(num_frames, size, start, needle_frames, colour, rng), fps=int(fps))
                rows.append({"id": f"needle_{m:g}min_d{d:.2f}_{i:02d}", "video": name, "question": QUESTION,
                             "options": list(OPTIONS), "answer": LETTERS[OPTIONS.index(colour)], "depth": d,
                             "minutes": m, "needle_start": start, "needle_frames": needle_frames,
                             "video_frames": num_frames, "task_type": "needle"})
                made += 1
                if progress:
                    progress(made, total)
    paths.write_text(annotation, json.dumps(rows, indent=1))  # written last: its presence means the set is whole
    return annotation


def make_training_set(folder: str, *, count: int, num_frames: int, size: int = 64, needle_frames=(1, 2),
                      seed: int = 0, prefix: str = "train") -> list[dict]:
    """Short needle videos of exactly `num_frames` frames (a model sampling that many sees every one, so the
    needle is always in view) and their rows in the LLaVA-Video format, open-ended and lettered, as the demo's
    QA set writes them (data/qa_demo.py)."""
    rows = []
    for i in range(count):
        rng = _rng(seed, prefix, i)
        colour = OPTIONS[int(rng.integers(len(OPTIONS)))]
        length = int(rng.integers(needle_frames[0], needle_frames[1] + 1))
        start = int(rng.integers(0, num_frames - length + 1))
        name = f"videos/{prefix}_{i:04d}.mp4"
        if not paths.exists(os.path.join(folder, name)):
            write_video(os.path.join(folder, name), frames(num_frames, size, start, length, colour, rng), fps=8)
        base = {"video": name, "task_type": "needle"}
        rows.append({"id": f"{prefix}_{i:04d}", **base, "num_options": len(OPTIONS), "format": "open",
                     "conversations": [{"from": "human", "value": f"<video>\n{QUESTION}"},
                                       {"from": "gpt", "value": colour}]})
        rows.append({"id": f"{prefix}_{i:04d}_mc", **base, "num_options": len(OPTIONS), "format": "mc",
                     "conversations": [{"from": "human", "value": f"<video>\n{lettered()}"},
                                       {"from": "gpt", "value": LETTERS[OPTIONS.index(colour)]}]})
    return rows


def make_qa_set(folder: str, *, num_train: int = 480, num_eval: int = 48, num_frames: int = 16, size: int = 64,
                needle_frames=(1, 2), seed: int = 0) -> tuple[str, str]:
    """The LMA needle demo's data (`data.train=needle_demo`): train.jsonl / eval.jsonl of short needle videos
    (`make_training_set`) in `folder`, once (a folder made with other arguments is refused); the held-out rows
    use their own seeds."""
    files = (os.path.join(folder, "train.jsonl"), os.path.join(folder, "eval.jsonl"))
    manifest = {"num_train": int(num_train), "num_eval": int(num_eval), "num_frames": int(num_frames),
                "size": int(size), "needle_frames": [int(n) for n in needle_frames], "seed": int(seed)}
    if _check_manifest(folder, manifest, files[1]):
        return files
    paths.makedirs(os.path.join(folder, "videos"))
    paths.write_text(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1))
    for path, count, prefix in ((files[0], num_train, "train"), (files[1], num_eval, "eval")):
        rows = make_training_set(folder, count=count, num_frames=num_frames, size=size,
                                 needle_frames=tuple(needle_frames), seed=seed, prefix=prefix)
        paths.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))  # eval.jsonl last: the set is whole
    return files
