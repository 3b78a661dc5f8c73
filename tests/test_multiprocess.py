"""Two processes through jax.distributed (gloo on CPU) train exactly like one process with two devices, and their
checkpoint continues in one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import REPO, make_videos


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _two_processes(workdir, flags) -> str:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="", LITEFRAME_PORT=str(_free_port()),
               PYTHON=sys.executable)
    out = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={workdir}", *flags],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _one_process(workdir, flags) -> str:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-m", "liteframe_jax.main", f"--workdir={workdir}", *flags],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_two_processes_match_one_process_with_two_devices(tmp_path):
    videos = tmp_path / "videos"
    make_videos(videos, count=6, num_frames=24)
    flags = ["--config=configs/ctd.py", f"--config.data.videos={videos}", "--config.data.eval_every_nth_video=0",
             "--config.eval_at_start=False", "--config.log_every=1", "--config.data.num_workers=0",
             "--config.checkpoint_every=3", "--config.optimizer.warmup_steps=1", "--config.optimizer.decay_steps=50"]
    _two_processes(tmp_path / "multi", [*flags, "--config.total_steps=3"])
    _one_process(tmp_path / "single", [*flags, "--config.total_steps=6"])  # checkpoints at steps 3 and 6
    a, reference = _losses(str(tmp_path / "multi")), _losses(str(tmp_path / "single"))
    assert sorted(a) == [1, 2, 3]
    for step in a:
        assert a[step] == pytest.approx(reference[step], abs=1e-5)
    # each process saved its own data-iterator position
    data = tmp_path / "multi" / "checkpoints" / "3" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))

    # The checkpoint that 2 processes wrote at step 3 continues in 1 process as the one-process run went on
    # (the other way round takes the same path: no position saved for this process count, the data started at
    # the step).
    said = _one_process(tmp_path / "multi", [*flags, "--config.total_steps=6"])
    assert "step 3 was saved by 2 process(es), this run has 1" in said
    got = _losses(str(tmp_path / "multi"))
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(reference[step], abs=1e-5), step
