"""The demo's video question-answering set: rendered clips whose answers can only be known from the frames.

Four question types, each with its chance rate (1 / number of plausible answers):
  colour     one shape; "What colour is the shape?"            6 colours
  direction  one shape; "Which way does the shape move?"       left / right / up / down
  count      1-3 shapes; "How many shapes are there?"          one / two / three
  order      two shapes, the second appears mid-clip; "Which colour appears first?"   2 visible colours
Rows are written in the LLaVA-Video format (see data/conversations.py) with `task_type`, `num_options` and
`format` (`open` or `mc`). Every clip is asked twice: open-ended, and as a lettered multiple-choice question
over the task's whole answer space (`multiple_choice`). The held-out lettered questions are also written to
`eval_mc.json`, which the benchmark harness's `:demo` preset scores, so LMA's held-out multiple-choice figure
and the harness's are taken on the same questions and read by the same rule.
"""

from __future__ import annotations

import json
import os

import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.data.demo import COLOURS, DIRECTIONS, Shape, render, write_video

NUMBERS = ("one", "two", "three")
TASKS = {"colour": 6, "direction": 4, "count": 3, "order": 2}
LETTERS = "ABCDEF"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def multiple_choice(task: str, question: str, answer: str) -> tuple[str, list[str], str]:
    """(prompt text, options, correct letter). The options are the task's whole answer space in a fixed
    order (for `order`, every colour), so the letter follows from what the video shows. Shuffled subsets
    would ask a 2-layer byte-level LLM to find its answer's line among the options and read the letter
    before it, which it does not learn in a demo's few hundred steps: such questions stay at chance
    however well the open-ended ones are answered."""
    options = list(NUMBERS if task == "count" else DIRECTIONS if task == "direction" else COLOURS)
    block = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{question}\n{block}\n{MC_SUFFIX}", options, LETTERS[options.index(answer)]


def _start_for(direction: str, rng) -> tuple[float, float]:
    """A start point from which the shape stays inside the frame for the whole clip."""
    lo, hi = rng.uniform(0.2, 0.35), rng.uniform(0.65, 0.8)
    across = rng.uniform(0.25, 0.75)
    return {"right": (lo, across), "left": (hi, across), "down": (across, lo), "up": (across, hi)}[direction]


def make_example(task: str, rng, num_frames: int) -> tuple[list[Shape], str, str]:
    colours = list(COLOURS)
    if task == "colour":
        d = str(rng.choice(list(DIRECTIONS)))
        c = str(rng.choice(colours))
        return [Shape(c, str(rng.choice(["disc", "square"])), d, _start_for(d, rng), 0.22)], \
            "What colour is the shape?", c
    if task == "direction":
        d = str(rng.choice(list(DIRECTIONS)))
        return [Shape(str(rng.choice(colours)), "disc", d, _start_for(d, rng), 0.2)], \
            "Which way does the shape move?", d
    if task == "count":
        n = int(rng.integers(1, 4))
        cells = rng.permutation([(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)])[:n]
        shapes = [Shape(str(rng.choice(colours)), "disc", "right", tuple(cell), 0.14) for cell in cells]
        return shapes, "How many shapes are there?", NUMBERS[n - 1]
    if task == "order":
        first, second = rng.choice(colours, 2, replace=False)
        return [Shape(str(first), "square", "right", (0.3, 0.3), 0.2),
                Shape(str(second), "disc", "left", (0.7, 0.7), 0.2, appear=num_frames // 2)], \
            "Which colour appears first?", str(first)
    raise ValueError(f"unknown demo task {task!r}")


def make_qa_set(folder: str, num_train: int = 320, num_eval: int = 64, num_frames: int = 16, size: int = 64,
                seed: int = 0) -> tuple[str, str]:
    """Write videos, train.jsonl / eval.jsonl and eval_mc.json into `folder` (kept across runs)."""
    paths.makedirs(os.path.join(folder, "videos"))
    files = (os.path.join(folder, "train.jsonl"), os.path.join(folder, "eval.jsonl"))
    mc_path = os.path.join(folder, "eval_mc.json")
    if all(paths.exists(p) for p in (*files, mc_path)):
        return files
    rng = np.random.default_rng(seed)
    tasks = list(TASKS)
    mc_rows = []
    for path, count, prefix in ((files[0], num_train, "train"), (files[1], num_eval, "eval")):
        rows = []
        for i in range(count):
            task = tasks[i % len(tasks)]
            shapes, question, answer = make_example(task, rng, num_frames)
            name = f"videos/{prefix}_{i:04d}.mp4"
            speed = 0.025 if task == "direction" or task == "colour" else 0.0
            write_video(os.path.join(folder, name), render(shapes, num_frames, size, size, speed=speed), fps=8)
            base = {"video": name, "task_type": task}
            rows.append({"id": f"{prefix}_{i:04d}", **base, "num_options": TASKS[task], "format": "open",
                         "conversations": [{"from": "human", "value": f"<video>\n{question}"},
                                           {"from": "gpt", "value": answer}]})
            mc_text, options, letter = multiple_choice(task, question, answer)
            rows.append({"id": f"{prefix}_{i:04d}_mc", **base, "num_options": len(options), "format": "mc",
                         "conversations": [{"from": "human", "value": f"<video>\n{mc_text}"},
                                           {"from": "gpt", "value": letter}]})
            if prefix == "eval":
                mc_rows.append({"id": f"{prefix}_{i:04d}", **base, "question": question, "options": options,
                                "answer": letter})
        paths.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))  # never half-written
    paths.write_text(mc_path, json.dumps(mc_rows, indent=1))
    return files
