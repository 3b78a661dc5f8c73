"""Evaluation on every device and host: the questions dealt to the processes of a `jax.distributed` run (each
splits its batches over its own devices, `eval.answer.VideoQA.on_devices`), each process's answers written
to a shard of its own, and the shards merged into one `results.jsonl` once every process has answered.

A one-process run writes WORKDIR/results.jsonl itself; a run of N processes writes
WORKDIR/shards/results-I-of-N.jsonl. On a resume every one of these files counts as answered, whatever the
number of processes that wrote it, so an evaluation continues with more or fewer processes (or devices)
than it started with. The processes must share the workdir (one filesystem, or a bucket): the merge reads
every shard and names what is missing when it cannot.
"""

from __future__ import annotations

import json
import os

import jax

from liteframe_jax.core import paths

RESULTS = "results.jsonl"
SHARDS = "shards"


def process() -> tuple[int, int]:
    """(this process's index, the number of processes)."""
    return jax.process_index(), jax.process_count()


def local_devices(count: int = 0) -> list:
    """This process's devices that answer: all of them (`count` 0) or the first `count`."""
    local = jax.local_devices()
    if count < 0 or count > len(local):
        raise ValueError(f"--config.devices={count}: this process has {len(local)} devices; give 0 (all of them) "
                         f"or a number from 1 to {len(local)}")
    return local[:count] if count else local


def deal(questions: list, index: int, count: int) -> list:
    """Process `index`'s share of `count`: every count-th question, so each share has long and short videos
    alike and the shares stay the same whatever has been answered already."""
    return questions[index::count]


def shard_path(workdir: str, index: int, count: int) -> str:
    if count == 1:
        return os.path.join(workdir, RESULTS)
    return os.path.join(workdir, SHARDS, f"results-{index:05d}-of-{count:05d}.jsonl")


def shard_files(workdir: str) -> list[str]:
    folder = os.path.join(workdir, SHARDS)
    if not paths.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(paths.listdir(folder)) if n.endswith(".jsonl")]


def answer_files(workdir: str) -> list[str]:
    """Every file of answers in the workdir: results.jsonl, then the shards of any number of processes."""
    merged = os.path.join(workdir, RESULTS)
    return ([merged] if paths.exists(merged) else []) + shard_files(workdir)


def read_done(path: str) -> dict[str, dict]:
    """Rows already written (a partial last line from a kill is dropped and redone)."""
    done = {}
    if paths.exists(path):
        with paths.open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[row["id"]] = row
    return done


def read_answers(workdir: str) -> dict[str, dict]:
    """Every answer in the workdir, by question id."""
    done = {}
    for path in answer_files(workdir):
        done.update(read_done(path))
    return done


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def merge(workdir: str, questions: list) -> list[dict]:
    """Every question's row in question order, written to results.jsonl whole when shards exist (by process 0;
    the others only read). A question no file answers is an error naming the first of them: the processes do
    not share the workdir, or one of them stopped before its share was done."""
    done = read_answers(workdir)
    lost = [q.id for q in questions if q.id not in done]
    if lost:
        raise ValueError(f"{len(lost)} of {len(questions)} questions have no answer in {workdir} (e.g. {lost[:3]}) "
                         f"after every process finished: the processes must share the workdir (one filesystem "
                         f"or a bucket); run the same command again to answer them")
    rows = [done[q.id] for q in questions]
    if shard_files(workdir) and jax.process_index() == 0:
        paths.write_text(os.path.join(workdir, RESULTS), "".join(json.dumps(r) + "\n" for r in rows))
    return rows
