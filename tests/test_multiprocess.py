"""Two processes through jax.distributed (gloo on CPU) train exactly like one process with two devices."""

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


def test_two_processes_match_one_process_with_two_devices(tmp_path):
    videos = tmp_path / "videos"
    make_videos(videos, count=4, num_frames=24)
    flags = ["--config=configs/ctd.py", f"--config.data.videos={videos}", "--config.data.eval_every_nth_video=0",
             "--config.eval_at_start=False", "--config.total_steps=3", "--config.log_every=1",
             "--config.data.num_workers=0", "--config.checkpoint_every=3"]
    base = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    multi = dict(base, XLA_FLAGS="", LITEFRAME_PORT=str(_free_port()), PYTHON=sys.executable)
    out = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={tmp_path / 'multi'}", *flags],
                         cwd=REPO, env=multi, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    single = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    subprocess.run([sys.executable, "-m", "liteframe_jax.main", f"--workdir={tmp_path / 'single'}", *flags],
                   cwd=REPO, env=single, check=True, capture_output=True, timeout=600)
    a, b = _losses(str(tmp_path / "multi")), _losses(str(tmp_path / "single"))
    assert sorted(a) == [1, 2, 3]
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5)
    # each process saved its own data-iterator position
    data = tmp_path / "multi" / "checkpoints" / "3" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))
