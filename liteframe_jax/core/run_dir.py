"""The run folder: every name a training run keeps in its workdir, spelled here once, and the readers of the
run's own records. All of it goes through `core.paths`, so a run in a bucket (`gs://`) reads as a local one.

    WORKDIR/config.json              the training config (for people and for resuming; readers of the model
                                     use spec.json)
    WORKDIR/spec.json                the model's spec (assembly/specs.py, written by assembly/run_folder.py)
    WORKDIR/tokenizer/               the tokenizer files, copied from the LLM's folder (LMA runs)
    WORKDIR/frozen/                  the parameters that do not train, written once (LMA runs)
    WORKDIR/checkpoints/             the trained parameters, optimizer state and data position per saved step
    WORKDIR/checkpoints_set_aside/   checkpoints after a step a run was resumed from (never deleted), and
                                     resumed_from.json, that step
    WORKDIR/metrics.jsonl            one JSON object per logged step
    WORKDIR/tensorboard/             the same rows as TensorBoard events
    WORKDIR/loss_curve.png           the loss (and held-out cosine) against step, at the end
    WORKDIR/run.lock                 the run that holds the workdir (core/run_lock.py)
    WORKDIR/video_index/             the probed facts of the run's videos (data/video_index.py)
    WORKDIR/compilation_cache/       JAX's persistent compilation cache
    WORKDIR/compile_report.json      what `--compile_only` compiled (train/aot.py)
    WORKDIR/nonfinite_report.json    what a run that stopped on non-finite steps needs to be reproduced
    WORKDIR/error_traceback.txt      the traceback of an error said in one line (core/errors.py)
    WORKDIR/demo_videos/, demo_qa/, needle_qa/   the demo data, written once (data/sources.py)
    WORKDIR/needle_test/             the needle test's videos, made at its first evaluation of the run
    WORKDIR/ctd/                     the LMA demo's CTD run (`student.init='demo_ctd'`)

Names on disk never change: an old run folder is read with the names it was written with.
"""

from __future__ import annotations

import json

from liteframe_jax.core import paths

CONFIG = "config.json"
SPEC = "spec.json"
TOKENIZER = "tokenizer"
FROZEN = "frozen"
CHECKPOINTS = "checkpoints"
CHECKPOINTS_SET_ASIDE = "checkpoints_set_aside"
RESUMED_FROM = CHECKPOINTS_SET_ASIDE + "/resumed_from.json"  # the step a run went back to (resume_step)
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
LOSS_CURVE = "loss_curve.png"
LOCK = "run.lock"
VIDEO_INDEX = "video_index"
COMPILATION_CACHE = "compilation_cache"
COMPILE_REPORT = "compile_report.json"
NONFINITE_REPORT = "nonfinite_report.json"
DEMO_VIDEOS = "demo_videos"
DEMO_QA = "demo_qa"
NEEDLE_QA = "needle_qa"
NEEDLE_TEST = "needle_test"
DEMO_CTD = "ctd"


def traceback_name(process_index: int = 0, process_count: int = 1) -> str:
    """The traceback file's name: one per process in a multi-process run, so that none overwrites another."""
    return "error_traceback.txt" if process_count == 1 else f"error_traceback.process-{process_index}.txt"


def parse_metrics(text: str) -> list[dict]:
    """The rows of metrics.jsonl's text; a last line that a kill cut short (not JSON, or no newline after it) is
    left out, a damaged line before the last is an error naming it."""
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, without its newline: cut by a kill
                break
            raise ValueError(f"{METRICS} line {number} is not JSON: {line[:80]!r}") from None
        rows.append(row)
    return rows


class RunDir:
    """One run's workdir (a local folder or a bucket's URL): the path of each thing in it, and its records read.
    The root is resolved once (`paths.resolve`), so every path below is absolute or a URL."""

    def __init__(self, workdir):
        self.root = paths.resolve(workdir)

    def __repr__(self) -> str:
        return f"RunDir({self.root!r})"

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def config(self) -> str:
        return self.path(CONFIG)

    @property
    def spec(self) -> str:
        return self.path(SPEC)

    @property
    def tokenizer(self) -> str:
        return self.path(TOKENIZER)

    @property
    def frozen(self) -> str:
        return self.path(FROZEN)

    @property
    def checkpoints(self) -> str:
        return self.path(CHECKPOINTS)

    @property
    def checkpoints_set_aside(self) -> str:
        return self.path(CHECKPOINTS_SET_ASIDE)

    @property
    def resumed_from(self) -> str:
        return self.path(RESUMED_FROM)

    @property
    def metrics(self) -> str:
        return self.path(METRICS)

    @property
    def tensorboard(self) -> str:
        return self.path(TENSORBOARD)

    @property
    def loss_curve(self) -> str:
        return self.path(LOSS_CURVE)

    @property
    def lock(self) -> str:
        return self.path(LOCK)

    @property
    def video_index(self) -> str:
        return self.path(VIDEO_INDEX)

    @property
    def compilation_cache(self) -> str:
        return self.path(COMPILATION_CACHE)

    @property
    def compile_report(self) -> str:
        return self.path(COMPILE_REPORT)

    @property
    def nonfinite_report(self) -> str:
        return self.path(NONFINITE_REPORT)

    @property
    def demo_videos(self) -> str:
        return self.path(DEMO_VIDEOS)

    @property
    def demo_qa(self) -> str:
        return self.path(DEMO_QA)

    @property
    def needle_qa(self) -> str:
        return self.path(NEEDLE_QA)

    @property
    def needle_test(self) -> str:
        return self.path(NEEDLE_TEST)

    @property
    def demo_ctd(self) -> str:
        return self.path(DEMO_CTD)

    def traceback(self, process_index: int = 0, process_count: int = 1) -> str:
        return self.path(traceback_name(process_index, process_count))

    def read_config(self) -> dict | None:
        """config.json as a dict; None when the folder has none."""
        return self._read_json(self.config)

    def read_spec(self) -> dict | None:
        """spec.json as a dict (assembly/specs.py builds the spec); None when the folder has none."""
        return self._read_json(self.spec)

    def write_config(self, text: str) -> None:
        paths.makedirs(self.root)
        paths.write_text(self.config, text)

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl's rows ([] when there is none), up to a last line cut by a kill."""
        if not paths.exists(self.metrics):
            return []
        return parse_metrics(paths.read_text(self.metrics))

    @staticmethod
    def _read_json(path: str) -> dict | None:
        if not paths.isfile(path):
            return None
        return json.loads(paths.read_text(path))
