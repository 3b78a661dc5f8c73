"""Evaluation on every device and process: a batch split over the devices answers as one device does; the
questions dealt to processes, each writing its own shard, resumable per shard and with another number of
processes, and merged into the one-process results; two real jax.distributed processes do the same."""

import json
import os
import subprocess
import sys
import zlib

import pytest
from cpu_flags import xla_flags
from helpers import REPO, load_config
from test_eval_sweep import demo, demo_config  # noqa: F401 (the demo's questions and a tiny run folder)

from liteframe_jax import jobs
from liteframe_jax.eval import harness, shards


def _answers(workdir) -> dict:
    rows = harness.read_done(os.path.join(workdir, shards.RESULTS))
    return {k: (r["raw"], r["letter"], r["correct"]) for k, r in rows.items()}


def test_a_batch_split_over_eight_devices_answers_as_one_device(demo, tmp_path):
    qa_root, run = demo
    jobs.JOBS["eval"].run(demo_config(qa_root, run, devices=1), str(tmp_path / "one"))
    # one question a device: the 6 questions are one batch of 8 rows, two of them padding
    jobs.JOBS["eval"].run(demo_config(qa_root, run, devices=0, batch_size=1), str(tmp_path / "eight"))
    one, eight = _answers(tmp_path / "one"), _answers(tmp_path / "eight")
    assert len(one) == 6 and one == eight
    assert len({raw for raw, _, _ in one.values()}) > 3  # the questions get answers of their own
    record = json.load(open(tmp_path / "eight" / "results.json"))
    assert record["devices_per_process"] == 8 and record["processes"] == 1
    with pytest.raises(ValueError, match="--config.devices=9: this process has 8 devices"):
        shards.local_devices(9)


class KeyedAnswerer:
    """Answers that depend on the question alone (so any dealing gives the same rows); fails after
    `crash_after` batches (a killed process)."""

    source, step, num_frames, visual_tokens, device_count = "keyed", 0, 4, 16, 1
    preprocessing = {"sampling": "uniform", "resize": "bilinear"}
    fingerprint = {"source": "keyed"}

    def __init__(self, crash_after=None):
        self.crash_after, self.calls, self.asked = crash_after, 0, []

    def load_frames(self, path):
        return None, [0.0]

    def check_prompt(self, prompt, times):
        pass

    def answer_batch(self, frames, times, questions, max_new_tokens):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.asked += [q.user for q in questions]
        return [f"The answer is {'ABCDEF'[zlib.crc32(q.user.encode()) % 6]}." for q in questions]


def _as_process(monkeypatch, index, count):
    monkeypatch.setattr(shards, "process", lambda: (index, count))


def test_shards_are_dealt_resumed_and_merged_into_the_one_process_results(demo, tmp_path, monkeypatch):
    qa_root, run = demo
    cfg = demo_config(qa_root, run, batch_size=1)
    reference = harness.evaluate(cfg, str(tmp_path / "one"), KeyedAnswerer())
    out = str(tmp_path / "two")
    # process 1 of 2 is killed after one question, then answers the rest of its share: questions 1, 3, 5
    _as_process(monkeypatch, 1, 2)
    with pytest.raises(KeyboardInterrupt):
        harness.evaluate(cfg, out, KeyedAnswerer(crash_after=1))
    assert list(harness.read_done(shards.shard_path(out, 1, 2))) == ["eval_0001"]
    second = KeyedAnswerer()
    with pytest.raises(ValueError, match="3 of 6 questions have no answer .* the processes must share the workdir"):
        harness.evaluate(cfg, out, second)  # process 0's share is not there: the merge says so
    assert len(second.asked) == 2
    # process 0 answers its share and merges: the one-process rows, in the benchmark's order
    _as_process(monkeypatch, 0, 2)
    merged = harness.evaluate(cfg, out, KeyedAnswerer())
    assert merged == reference
    assert open(os.path.join(out, shards.RESULTS)).read() == open(tmp_path / "one" / shards.RESULTS).read()
    assert sorted(os.listdir(os.path.join(out, shards.SHARDS))) == ["results-00000-of-00002.jsonl",
                                                                    "results-00001-of-00002.jsonl"]
    # with another number of processes every shard counts as answered
    _as_process(monkeypatch, 0, 3)
    third = KeyedAnswerer()
    assert harness.evaluate(cfg, out, third) == reference and third.asked == []


def test_shards_of_a_part_done_run_count_whatever_the_processes(demo, tmp_path, monkeypatch):
    qa_root, run = demo
    cfg = demo_config(qa_root, run, batch_size=1)
    reference = harness.evaluate(cfg, str(tmp_path / "one"), KeyedAnswerer())
    out = str(tmp_path / "out")
    _as_process(monkeypatch, 1, 3)  # a 3-process run stopped after one of its processes' questions
    with pytest.raises(ValueError, match="have no answer"):
        harness.evaluate(cfg, out, KeyedAnswerer())
    _as_process(monkeypatch, 0, 1)  # continued in one process: only the other four questions are asked
    alone = KeyedAnswerer()
    assert harness.evaluate(cfg, out, alone) == reference and len(alone.asked) == 4
    assert _answers(out) == _answers(tmp_path / "one")


def _launch(n: int, flags: list[str], devices_each: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(devices=devices_each), PYTHON=sys.executable)
    env.pop("LITEFRAME_PORT", None)
    return subprocess.run(["bash", "launch/local_multiprocess.sh", str(n), *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.integration  # two processes start JAX and compile
def test_two_processes_of_two_devices_answer_as_one_process(demo, tmp_path):
    qa_root, run = demo
    jobs.JOBS["eval"].run(demo_config(qa_root, run, devices=1), str(tmp_path / "one"))
    flags = ["--config=configs/eval.py:demo", f"--workdir={tmp_path / 'two'}", f"--config.model.run={run}",
             f"--config.data.root={qa_root}", "--config.max_questions=6", "--config.max_new_tokens=4",
             "--config.batch_size=1"]
    out = _launch(2, flags, devices_each=2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _answers(tmp_path / "two") == _answers(tmp_path / "one")
    assert sorted(os.listdir(tmp_path / "two" / shards.SHARDS)) == ["results-00000-of-00002.jsonl",
                                                                     "results-00001-of-00002.jsonl"]
    record = json.load(open(tmp_path / "two" / "results.json"))
    assert record["processes"] == 2 and record["devices_per_process"] == 2
    one = json.load(open(tmp_path / "one" / "results.json"))
    assert record["summary"] == one["summary"]
