"""The faults a user really makes: Ctrl-C, a run resumed after a kill (its metrics), two runs in one workdir,
config values that no run can use."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import make_videos, tiny_ctd_config
from test_object_store import gcs  # noqa: F401  (the GCS emulator, a fixture)

from liteframe_jax.core import checkpoint, paths, run_lock
from liteframe_jax.jobs import train as run
from liteframe_jax.train import metrics as metrics_lib
from liteframe_jax.train import preemption
from liteframe_jax.train import step as step_lib
from liteframe_jax.train import tensorboard_out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault_videos")
    make_videos(folder, count=4, num_frames=24)
    return str(folder)


def _config(videos, **overrides):
    """The tiny CTD run with a schedule that does not follow total_steps: every run here compiles one step."""
    return tiny_ctd_config(videos, **{"optimizer.decay_steps": 400, "optimizer.warmup_steps": 2, **overrides})


def _signalling_steps(monkeypatch, at: dict):
    """The compiled step, wrapped to send this process the signals `at[call]` before its `call`-th step."""
    compile_step = step_lib.compile_train_step

    def compiled_with_signals(*args, **kwargs):
        compiled, calls = compile_step(*args, **kwargs), []

        def step_fn(*step_args):
            calls.append(1)
            for signum in at.get(len(calls), ()):
                os.kill(os.getpid(), signum)
            return compiled(*step_args)
        for name in ("compile_seconds", "memory_report", "memory", "step_gib"):
            setattr(step_fn, name, getattr(compiled, name))
        return step_fn
    monkeypatch.setattr(step_lib, "compile_train_step", compiled_with_signals)


def _event_steps(workdir) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in the run's TensorBoard files."""
    from tensorboardX.proto import event_pb2
    out = []
    folder = os.path.join(workdir, "tensorboard")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            for payload in tensorboard_out.read_records(f.read()):
                e = event_pb2.Event.FromString(payload)
                out += [(v.tag, e.step) for v in e.summary.value]
    return out


def test_ctrl_c_saves_the_step_and_a_second_stops_at_once(videos, tmp_path, monkeypatch, capfd):
    """One Ctrl-C during step 2: the run finishes it, checkpoints it and ends with status 130; two Ctrl-C during
    step 2: it stops at once, without a checkpoint, still with status 130, and leaves the workdir unlocked."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    before = signal.getsignal(signal.SIGINT)  # Python's own handler; SIG_IGN in a job started in the background
    with monkeypatch.context() as patch:
        _signalling_steps(patch, {2: [signal.SIGINT]})
        with pytest.raises(preemption.Interrupted) as stopped:
            run(_config(videos, checkpoint_every=100), str(once))
    assert stopped.value.code == 130
    assert checkpoint.Checkpointer(str(once), keep=3).latest_step() == 2
    assert [r["step"] for r in metrics_lib.read_metrics(str(once))] == [1, 2]

    capfd.readouterr()
    with monkeypatch.context() as patch:
        _signalling_steps(patch, {2: [signal.SIGINT, signal.SIGINT]})
        with pytest.raises(preemption.Interrupted) as stopped:
            run(_config(videos, checkpoint_every=100), str(twice))
    assert stopped.value.code == 130
    assert capfd.readouterr().err.splitlines()[-1].startswith("Ctrl-C again: stopping now, without a checkpoint")
    assert checkpoint.Checkpointer(str(twice), keep=3).latest_step() is None
    assert not (twice / run_lock.LOCK_NAME).exists() and not (once / run_lock.LOCK_NAME).exists()
    assert signal.getsignal(signal.SIGINT) is before  # the watch gave Ctrl-C back


def test_ctrl_c_from_a_terminal_ends_the_run_cleanly(videos, tmp_path):
    """SIGINT to the process group, as a terminal sends it, with a Grain worker process: exit status 130 after a
    checkpoint of the last logged step, a line saying how to continue, no traceback, no leaked shared memory, no
    process of the group left, the workdir unlocked."""
    from test_ctd import _group_alive, _start_and_wait_for

    def logged() -> int:
        try:
            return max((r["step"] for r in metrics_lib.read_metrics(str(tmp_path))), default=0)
        except FileNotFoundError:
            return 0
    proc = _start_and_wait_for(tmp_path, videos, lambda: logged() >= 2, "--config.checkpoint_every=100")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stderr.read().decode()[-3000:]
    said = proc.stderr.read().decode()
    assert "Traceback" not in said and "leaked" not in said and "KeyboardInterrupt" not in said, said[-3000:]
    assert said.startswith("Ctrl-C: finishing the step in flight and saving a checkpoint of it"), said[-3000:]
    assert checkpoint.Checkpointer(str(tmp_path), keep=3).latest_step() == logged() >= 2
    assert not (tmp_path / run_lock.LOCK_NAME).exists()
    deadline = time.time() + 30
    while _group_alive(proc.pid):
        assert time.time() < deadline, "a data worker outlived the interrupted run"
        time.sleep(0.2)


def test_a_resumed_run_logs_every_step_once(videos, tmp_path):
    """A run killed after logging step 3 but before its checkpoint of step 3, in the middle of writing a row:
    metrics.jsonl reads up to the cut line, and the resumed run drops the rows past checkpoint 2, so metrics.jsonl
    and TensorBoard hold each step once, in order."""
    workdir = str(tmp_path / "run")
    run(_config(videos, total_steps=3, checkpoint_every=2), workdir)
    import shutil
    shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))  # killed before its checkpoint of step 3 ...
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "loss": 0.1')  # ... while it was writing a row
    assert [r["step"] for r in metrics_lib.read_metrics(workdir)] == [1, 2, 3]
    result, _ = run(_config(videos, total_steps=5, checkpoint_every=2), workdir)
    assert "resumed from this workdir at step 2" in result.origin
    rows = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]
    steps = [s for tag, s in _event_steps(workdir) if tag == "loss"]
    assert steps == [1, 2, 3, 4, 5]


def _holder(host, pid, age_s):
    now = time.time()
    return run_lock.Holder(host=host, pid=pid, started=now - age_s, heartbeat=now - age_s, token="t")


def test_one_run_per_workdir(tmp_path):
    """A live holder refuses a second run, naming it; a lock of a process that is gone (this host) or that has
    not beaten for longer than STALE_AFTER_S (another host) is taken over, saying so; one of another host that
    beats is not."""
    workdir, said = str(tmp_path), []
    with run_lock.hold(workdir, say=said.append) as lock:
        assert lock.holder.pid == os.getpid()
        with run_lock.hold(workdir) as inner:  # the entry point holds it, then the train loop asks again
            assert inner is lock
        assert os.path.exists(run_lock.lock_path(workdir))
        with pytest.raises(run_lock.WorkdirInUse) as refused:
            run_lock.RunLock(workdir, say=said.append).acquire()
    message = str(refused.value)
    assert f"process {os.getpid()} on {socket.gethostname()}, started " in message and "\n" not in message
    assert not os.path.exists(run_lock.lock_path(workdir)) and said == []
    with run_lock.hold(workdir, process_index=1) as lock:  # only process 0 of a run holds it
        assert lock is None and not os.path.exists(run_lock.lock_path(workdir))

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = {"this host, process gone": _holder(socket.gethostname(), gone.pid, 10),
             "another host, no heartbeat": _holder("elsewhere", 1, run_lock.STALE_AFTER_S + 5)}
    for case, holder in stale.items():
        with open(run_lock.lock_path(workdir), "w") as f:
            f.write(holder.to_json())
        with run_lock.hold(workdir, say=said.append) as lock:
            assert run_lock.read_holder(run_lock.lock_path(workdir)).token == lock.holder.token, case
        assert said[-1].startswith(f"{workdir}: taking over the lock of {holder.describe()}: "), case
    assert "no longer exists" in said[0] and "no heartbeat for 30" in said[1]

    with open(run_lock.lock_path(workdir), "w") as f:
        f.write(_holder("elsewhere", 1, run_lock.STALE_AFTER_S - 60).to_json())
    with pytest.raises(run_lock.WorkdirInUse, match="process 1 on elsewhere"):
        run_lock.RunLock(workdir).acquire()


def test_the_lock_holds_in_a_bucket(gcs, monkeypatch):
    """In a bucket (the GCS emulator): a live holder refuses a second run; of two runs that write their lock at
    the same time, the one whose write the read-back does not find is refused; a stale lock is taken over."""
    monkeypatch.setitem(run_lock.SETTLE_S, "remote", 0.05)
    workdir, said = f"{gcs}/locked", []
    path = run_lock.lock_path(workdir)
    with run_lock.hold(workdir, say=said.append):
        assert paths.exists(path)
        with pytest.raises(run_lock.WorkdirInUse, match=f"process {os.getpid()} on "):
            run_lock.RunLock(workdir).acquire()
    assert not paths.exists(path)

    racer = _holder("elsewhere", 7, 0)
    real_sleep = time.sleep
    monkeypatch.setattr(run_lock.time, "sleep", lambda s: (paths.write_text(path, racer.to_json()), real_sleep(s)))
    with pytest.raises(run_lock.WorkdirInUse, match="process 7 on elsewhere"):
        run_lock.RunLock(workdir).acquire()
    monkeypatch.setattr(run_lock.time, "sleep", real_sleep)

    paths.write_text(path, _holder("elsewhere", 7, run_lock.STALE_AFTER_S + 5).to_json())
    with run_lock.hold(workdir, say=said.append) as lock:
        assert run_lock.read_holder(path).token == lock.holder.token
    assert len(said) == 1 and said[0].startswith(f"{workdir}: taking over the lock of process 7 on elsewhere, "
                                                  f"started ") and ": no heartbeat for 305 s" in said[0], said


@pytest.mark.parametrize("field, value, said", [
    ("total_steps", 0, "--config.total_steps=0: must be a whole number above 0"),
    ("optimizer.lr", -1e-3, "--config.optimizer.lr=-0.001: must be a number above 0"),
    ("optimizer.b2", 1.0, "--config.optimizer.b2=1.0: must be a number from 0 up to (not including) 1"),
    ("data.max_bad_fraction", 1.5, "--config.data.max_bad_fraction=1.5: must be a number from 0 to 1"),
    ("data.num_workers", -1, "--config.data.num_workers=-1: must be a whole number, 0 or more"),
    ("batch_size", 12, "--config.batch_size=12: must be a multiple of 8 (grad_accum_steps x the data-parallel "
                       "devices, mesh.data x mesh.fsdp = 8), e.g. 8 or 16"),
    ("mesh.num_devices", 16, "--config.mesh.num_devices=16: must be at most the 8 devices there are, or -1"),
    ("mesh.tensor", 3, "--config.mesh: 8 devices cannot be split into {'data': -1, 'fsdp': 1, 'tensor': 3}"),
    ("mesh.data", 4, "--config.mesh: {'data': 4, 'fsdp': 1, 'tensor': 1} needs 4 devices, 8 are in use"),
])
def test_config_rules_name_the_field_its_value_and_what_is_valid(field, value, said):
    from helpers import _override, load_config

    from liteframe_jax.train import validate
    config = load_config("ctd", "demo")
    assert validate.problems(config, 8) == []
    problems = validate.problems(_override(config, {field: value}), 8)
    assert len(problems) == 1 and problems[0].startswith(said), problems


def test_lma_rules_frames_in_whole_clips_and_accumulation():
    from helpers import _override, load_config

    from liteframe_jax.train import validate
    lma = load_config("lma", "demo")
    assert validate.problems(lma, 1) == []
    assert validate.problems(_override(lma, {"data.num_frames": 12}), 1) == [
        "--config.data.num_frames=12: must be a whole number of the student's 8-frame clips, e.g. 8 or 16"]
    assert validate.problems(_override(load_config("lma", "demo"), {"grad_accum_steps": 3}), 2) == [
        "--config.batch_size=16: must be a multiple of 6 (grad_accum_steps x the data-parallel devices, "
        "mesh.data x mesh.fsdp = 2), e.g. 12 or 18"]
    assert validate.problems(load_config("lma", "demo"), 8, process_count=3) == [
        "--config.batch_size=16: must be a multiple of the 3 processes that read different rows (each reads an "
        "equal share)"]
    # 6 processes over 2 row groups (each row's chips in 3 of them): those share their rows, 16 splits in 2
    assert validate.problems(_override(load_config("lma", "demo"), {"mesh.data": 2, "mesh.tensor": 3}), 6,
                             process_count=6) == []


def test_a_write_that_fails_for_lack_of_space_is_recognised_and_its_library_noise_dropped():
    """TensorStore's error for a full disk carries the OS error in its text; the records Orbax and asyncio log
    about it are dropped (the run says it once), other records are kept."""
    import logging
    error = ValueError('OUT_OF_RANGE: Error writing "a/0.0" in OCDBT database at local file "/r/2.orbax-checkpoint-tmp/"'
                       ': Failed to write 3316506 bytes to file 11: No space left on device [os_error_code=\'28\']')
    assert checkpoint.out_of_space(error) == "No space left on device"
    assert checkpoint.out_of_space(RuntimeError("wrapped")) is None
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(27, "File too large")
    assert checkpoint.out_of_space(wrapped) == "File too large"
    record = lambda msg, exc=None: logging.LogRecord("absl", logging.ERROR, __file__, 1, msg, (), exc)
    quiet = checkpoint._QuietAboutSpace()
    assert not quiet.filter(record("_SignalingThread.run() raised an exception: %s" % error))
    assert not quiet.filter(record("Task exception was never retrieved", (ValueError, error, None)))
    assert quiet.filter(record("step 4: something else failed"))
