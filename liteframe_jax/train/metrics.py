"""Metrics: `workdir/metrics.jsonl` (one JSON object per logged step), TensorBoard events, a console progress
line with steps/s and ETA, and a loss-curve PNG at the end. Only process 0 writes.

The workdir may be a bucket (`gs://`), where an object cannot be appended to: there metrics.jsonl and the
TensorBoard events are uploaded whole every `UPLOAD_EVERY_S`, at each checkpoint (`sync`) and at the end, so a
killed run loses no logged step that its checkpoint does not also redo.

A resumed run starts by dropping the rows logged past its checkpoint's step (from metrics.jsonl and the
TensorBoard files): it logs those steps again, so every step appears once and the loss curve never runs back.
A last line cut by a kill is dropped with them; a reader takes the lines before it."""

from __future__ import annotations

import datetime
import json
import time

import jax

from liteframe_jax.core import paths
from liteframe_jax.core.run_dir import RunDir, parse_metrics
from liteframe_jax.train import tensorboard_out

UPLOAD_EVERY_S = 60.0


class MetricWriter:
    """Rows of a run that starts at `start_step` (0: from scratch, when any earlier rows are dropped)."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.workdir, self.total_steps = workdir, total_steps
        self.enabled = jax.process_index() == 0
        self.run = RunDir(workdir)
        self.path = self.run.metrics
        self._tb = None
        if self.enabled:
            paths.makedirs(workdir)
            # a fresh start keeps none of an earlier attempt's rows: its step-0 evaluation is logged again too
            drop_rows_after(workdir, start_step if start_step > 0 else -1)
            # local files are appended at every write; a bucket's object is rewritten at most every minute
            self._tb = tensorboard_out.EventWriter(self.run.tensorboard,
                                                   flush_every_s=0.0 if not paths.is_remote(workdir) else UPLOAD_EVERY_S)
        self._last_time, self._last_step = None, None
        self._file = None  # metrics.jsonl, opened at the first write

    def start(self, step: int) -> None:
        self._last_time, self._last_step = time.perf_counter(), step

    def steps_per_sec(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        return rate

    def write(self, step: int, metrics: dict, console: bool = True) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._append(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                self._tb.add_scalar(k, v, step)
        if console:
            print(self.progress_line(row), flush=True)

    def _append(self, line: str) -> None:
        if self._file is None:
            self._file = paths.AppendFile(self.path, upload_every_s=UPLOAD_EVERY_S)
        self._file.write(line)
        self._file.flush()

    def sync(self) -> None:
        """Everything written so far on disk or in the bucket (called at each checkpoint)."""
        if self._file is not None:
            self._file.flush(force=True)
        if self._tb is not None:
            self._tb.flush()

    def progress_line(self, row: dict) -> str:
        step = row["step"]
        parts = [f"step {step}/{self.total_steps}"]
        for k in ("loss", "cosine", "answer_token_accuracy", "eval_cosine", "eval_accuracy", "eval_chance", "lr"):
            if k in row:
                parts.append(f"{k} {row[k]:.4g}")
        if row.get("steps_per_sec"):
            eta = (self.total_steps - step) / row["steps_per_sec"]
            parts.append(f"{row['steps_per_sec']:.2f} steps/s")
            parts.append(f"ETA {datetime.timedelta(seconds=int(eta))}")
        if "input_wait_fraction" in row:  # the loop's host time getting batches (train/loop.py)
            share = row["input_wait_fraction"]
            parts.append(f"input {row['input_ms_per_batch']:.0f} ms/batch ({share:.0%} of the loop)")
        return " | ".join(parts)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    return RunDir(workdir).read_metrics()


def drop_rows_after(workdir: str, step: int) -> int:
    """metrics.jsonl and the TensorBoard files without the rows logged past `step` (every row when `step` is
    negative) and without a last line cut by a kill: the number of metrics.jsonl rows dropped."""
    run = RunDir(workdir)
    path = run.metrics
    tensorboard_out.drop_steps_after(run.tensorboard, step)
    if not paths.exists(path):
        return 0
    text = paths.read_text(path)
    rows = parse_metrics(text)
    kept = [r for r in rows if r["step"] <= step]
    if len(kept) < len(rows) or (text and not text.endswith("\n")):
        paths.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(rows) - len(kept)


def plot_loss_curve(workdir: str, title: str) -> str | None:
    """Loss (and held-out cosine, where logged) against step -> workdir/loss_curve.png."""
    rows = read_metrics(workdir)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_cosine"]) for r in rows if "eval_cosine" in r]
    if not train or jax.process_index() != 0:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), "o-", color="tab:orange", label="held-out cosine")
        ax2.set_ylabel("held-out cosine similarity")
        ax2.set_ylim(min(0.0, min(v for _, v in evals)), 1.0)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    path = RunDir(workdir).loss_curve
    with paths.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
