"""Every input mistake through the entry point is one line: `python -m liteframe_jax.main` with each mistake of a
table, as a user makes it."""

import os
import socket
import subprocess
import sys
import tempfile

import pytest
from helpers import REPO, make_videos, tiny_ctd_config

from liteframe_jax.core import run_lock


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mistake_videos")
    make_videos(folder, count=1, num_frames=24)
    return str(folder)


def test_input_mistakes_are_one_line_each(videos, tmp_path):
    """Each mistake through the entry point, all at once: one line on stderr (and the traceback's file, in the
    workdir or the system's temporary folder, never the current folder), status 2 for the command line and 1
    for files, no traceback on stderr."""
    a_file, locked, bad = tmp_path / "a_file", tmp_path / "locked", tmp_path / "not_a_video.mp4"
    a_file.write_text("x")
    bad.write_bytes(b"not a video at all")
    good = os.path.join(videos, "v0.mp4")
    ctd, generate = f"--config={REPO}/configs/ctd.py", f"--config={REPO}/configs/generate.py"
    ask = "--config.question=which way?"
    cases = {  # name: (arguments, status, the start of the line)
        "unknown preset": ([f"{ctd}:papr"], 2, f"error: flag {ctd}:papr: unknown ctd preset 'papr'; choose "),
        "workdir is a file": ([ctd, f"--workdir={a_file}"], 2, f"error: --workdir={a_file} is a file"),
        "values no run can use": ([ctd, f"--workdir={tmp_path / 'values'}", "--config.total_steps=-5",
                                   "--config.batch_size=12"], 2,
                                  "error: --config.total_steps=-5: must be a whole number above 0"),
        "missing video": ([generate, f"--config.run={tmp_path}", "--config.video=/no/such.mp4", ask], 1,
                          "error: --config.video: /no/such.mp4: no such file"),
        "unreadable video": ([generate, f"--config.run={tmp_path}", f"--config.video={bad}", ask], 1,
                             f"error: --config.video: {bad}: "),
        "missing run folder": ([generate, "--config.run=/no/such/run", f"--config.video={good}", ask], 1,
                               "error: '/no/such/run' does not exist (a run folder was expected)"),
        "workdir in use": ([ctd, f"--workdir={locked}", f"--config.data.videos={videos}"], 1,
                           f"error: {locked} is in use by the run of process {os.getpid()} on {socket.gethostname()}"),
    }
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    here = tmp_path / "cwd"
    here.mkdir()
    with run_lock.hold(str(locked), say=lambda _: None):
        procs = {name: subprocess.Popen([sys.executable, "-m", "liteframe_jax.main", *args], cwd=here, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for name, (args, _, _) in cases.items()}
        said = {name: (p.communicate(timeout=300)[1], p.returncode) for name, p in procs.items()}
    for name, (_, status, start) in cases.items():
        stderr, code = said[name]
        lines = stderr.strip().splitlines()
        assert code == status and "Traceback" not in stderr, (name, code, stderr[-2000:])
        assert lines[0].startswith(start), (name, stderr)
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("(traceback in ")), (name, stderr)
        if len(lines) == 2:
            where = lines[1][len("(traceback in "):-1]
            assert os.path.isfile(where) and "Traceback" in open(where).read(), name
            assert os.path.dirname(where) in (tempfile.gettempdir(), str(locked)), (name, where)
    assert os.listdir(here) == [] and not (tmp_path / "values").exists()  # nothing built, nothing in the cwd


def test_a_checkpoint_that_does_not_fit_ends_the_run_and_keeps_the_last_good_one(videos, tmp_path):
    """A file-size limit in the run's process, below the checkpoint's size: the resumed run trains to step 4,
    refuses to write a checkpoint that cannot fit, and ends with one line naming the step, the reason and the
    checkpoint that remains, which is the one a restart takes."""
    from liteframe_jax.core import checkpoint
    from liteframe_jax.jobs import train as run
    tiny = {"optimizer.decay_steps": 400, "optimizer.warmup_steps": 2, "checkpoint_every": 2}
    run(tiny_ctd_config(videos, total_steps=2, **tiny), str(tmp_path))  # checkpoint 2, in this process
    flags = [f"--config={REPO}/configs/ctd.py", f"--workdir={tmp_path}", f"--config.data.videos={videos}",
             "--config.mesh.num_devices=1", "--config.data.num_workers=0", "--config.data.eval_every_nth_video=0",
             "--config.eval_at_start=False", "--config.eval_every=0", "--config.log_every=1",
             "--config.async_checkpointing=False", "--compilation_cache=off",
             *[f"--config.{k}={v}" for k, v in tiny.items()], "--config.total_steps=4"]
    # no compilation cache: its entry (this step is compiled afresh) would not fit the limit either
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

    # the limit is set in the child itself (no preexec_fn: forking a threaded JAX process runs no Python safely)
    limited = ("import resource, runpy, signal, sys; "
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # a write past the limit fails, not the process
               "resource.setrlimit(resource.RLIMIT_FSIZE, (128 << 10, 128 << 10)); "
               "sys.argv[0] = 'liteframe_jax.main'; runpy.run_module('liteframe_jax.main', run_name='__main__')")
    full = subprocess.run([sys.executable, "-c", limited, *flags], cwd=REPO, env=env, capture_output=True, text=True)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "resumed from this workdir at step 2" in full.stdout and "step 4/4" in full.stdout, full.stdout[-3000:]
    assert len(lines) == 2 and " its " in lines[0], full.stderr[-3000:]
    assert lines[0] == (f"error: the checkpoint of step 4 could not be written to {tmp_path}/checkpoints: its "
                        f"{lines[0].split(' its ')[1].split(' MB')[0]} MB may not fit in files of at most 0.1 MB (this "
                        "process's file-size limit, ulimit -f); checkpoint 2 is the last complete one, which the same "
                        "command resumes from once there is room (free some space, or lower "
                        "--config.keep_checkpoints)"), full.stderr[-3000:]
    assert lines[1] == f"(traceback in {tmp_path}/error_traceback.txt)"
    assert checkpoint.Checkpointer(str(tmp_path), keep=3).latest_step() == 2
    assert checkpoint.restore_params(str(tmp_path))[1] == 2
