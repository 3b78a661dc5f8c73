"""Two processes through jax.distributed (gloo on CPU) train exactly like one process with two devices, stop
together on a preemption notice that one of them receives, and their checkpoint continues in one process."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from cpu_flags import xla_flags
from helpers import REPO, make_videos


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _one_process(workdir, flags) -> str:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices=2))
    out = subprocess.run([sys.executable, "-m", "liteframe_jax.main", f"--workdir={workdir}", *flags],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _child_with(parent_pid: int, needle: str) -> int:
    """The pid of `parent_pid`'s child process whose command line contains `needle`."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == parent_pid and needle in cmdline:
                return int(entry)
    raise AssertionError(f"no child of {parent_pid} runs {needle!r}")


def test_two_processes_match_one_process_stop_together_and_continue_in_one(tmp_path):
    """Two processes through jax.distributed train as one process with two devices does. SIGTERM to one of them
    (a preemption notice on one host) stops both after the same step, each with its data position in the
    checkpoint, exit status 75; that checkpoint then continues in one process as the one-process run went on."""
    videos = tmp_path / "videos"
    make_videos(videos, count=6, num_frames=24)
    flags = ["--config=configs/ctd.py", f"--config.data.videos={videos}", "--config.data.eval_every_nth_video=0",
             "--config.eval_at_start=False", "--config.log_every=1", "--config.data.num_workers=0",
             "--config.checkpoint_every=100", "--config.optimizer.warmup_steps=1", "--config.optimizer.decay_steps=50"]
    multi = tmp_path / "multi"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(),
               LITEFRAME_PORT=str(_free_port()), PYTHON=sys.executable)
    launcher = subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={multi}", *flags,
                                 "--config.total_steps=40"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while not (multi / "metrics.jsonl").exists() or max(_losses(str(multi)), default=0) < 2:
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.time() < deadline, "the two processes did not reach step 2 in time"
        time.sleep(0.2)
    os.kill(_child_with(launcher.pid, "--process_id=1"), signal.SIGTERM)  # the notice reaches one process only
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 75, err[-3000:]
    stopped = max(int(d) for d in os.listdir(multi / "checkpoints") if d.isdigit())
    assert 2 <= stopped < 40
    data = multi / "checkpoints" / str(stopped) / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))  # both stopped there
    with open(multi / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == list(range(1, stopped + 1))  # written once, by process 0

    total = stopped + 3
    _one_process(tmp_path / "single", [*flags, f"--config.total_steps={total}"])
    reference = _losses(str(tmp_path / "single"))
    said = _one_process(multi, [*flags, f"--config.total_steps={total}"])
    assert f"step {stopped} was saved by 2 process(es), this run has 1" in said
    got = _losses(str(multi))
    assert sorted(got) == list(range(1, total + 1))
    for step in got:  # two processes up to the stop, then one process: the one-process run's losses
        assert got[step] == pytest.approx(reference[step], abs=1e-5), step

    # An error in one process ends the job at once, said by that process, instead of the others waiting in a
    # collective and at jax.distributed's exit barrier (5 minutes) and then aborting. Here a video cut short
    # after the run indexed it stops whichever process reads it first (data.max_bad_in_a_row=1).
    with open(videos / "v3.mp4", "r+b") as f:
        f.truncate(300)
    t0 = time.time()
    failed = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={multi}", *flags,
                             f"--config.total_steps={total + 20}", "--config.data.max_bad_in_a_row=1"],
                            cwd=REPO, env=dict(env, LITEFRAME_PORT=str(_free_port())), capture_output=True,
                            text=True, timeout=400)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert re.search(r"error in process [01] of 2: 1 clips in a row failed to decode", failed.stderr), \
        failed.stderr[-3000:]
    assert "Shutdown barrier" not in failed.stderr and "Check failure" not in failed.stderr, failed.stderr[-3000:]
    assert time.time() - t0 < 150


def test_lma_in_two_processes_continues_a_one_process_checkpoint_with_its_losses(tmp_path):
    """LMA's batches are padded to length buckets: each process pads its share to its global batch's bucket,
    so two processes train as one does. A checkpoint of a one-process run (two devices) continues in two
    processes with the losses the one-process run goes on to log."""
    from helpers import tiny_lma_config

    from liteframe_jax.data import qa_demo
    from liteframe_jax.jobs import train as run
    train, _ = qa_demo.make_qa_set(str(tmp_path / "qa"), num_train=16, num_eval=2)
    same = {"batch_size": 4, "data.buckets": (160, 256), "llm.arch.num_layers": 1, "checkpoint_every": 100,
            "optimizer.warmup_steps": 1, "optimizer.decay_steps": 10}
    one = tmp_path / "one"
    run(tiny_lma_config(train, total_steps=1, **{"mesh.num_devices": 2}, **same), str(one))
    flags = ["--config=configs/lma.py", "--config.student.init=random", f"--config.data.train={train}",
             "--config.eval_at_start=False", "--config.eval_every=0", "--config.log_every=1",
             "--config.async_checkpointing=False", "--config.batch_size=4", "--config.data.buckets=(160, 256)",
             "--config.llm.arch.num_layers=1", "--config.checkpoint_every=100", "--config.optimizer.warmup_steps=1",
             "--config.optimizer.decay_steps=10"]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(),
               LITEFRAME_PORT=str(_free_port()), PYTHON=sys.executable)
    two = tmp_path / "two"
    out = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={two}", *flags,
                          f"--config.resume_from={one}", "--config.total_steps=3"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 1 was saved by 1 process(es), this run has 2" in out.stdout
    run(tiny_lma_config(train, total_steps=3, **{"mesh.num_devices": 2}, **same), str(one))
    reference, got = _losses(str(one)), _losses(str(two))
    assert sorted(got) == [2, 3]
    for step in got:
        assert got[step] == pytest.approx(reference[step], abs=1e-5), step

