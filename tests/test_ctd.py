"""CTD end to end on CPU: loss falls, 1 vs 8 devices agree, kill + resume is bit-identical, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from cpu_flags import xla_flags
from helpers import REPO, make_videos, tiny_ctd_config

from liteframe_jax.core import checkpoint, sharding
from liteframe_jax.jobs import train as run
from liteframe_jax.train.ctd import CTDTask


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctd_videos")
    make_videos(folder, count=5, num_frames=24)
    return str(folder)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_ctd_loss_falls_and_run_leaves_its_outputs(videos, tmp_path):
    cfg = tiny_ctd_config(videos, total_steps=30, checkpoint_every=10, **{
        "optimizer.lr": 2e-3, "data.eval_every_nth_video": 5, "eval_at_start": True})
    result, task = run(cfg, str(tmp_path))
    losses = _losses(str(tmp_path))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (28, 29, 30)])
    assert last < 0.6 * first, (first, last)
    assert result.eval["cosine"] > result.eval_at_start["cosine"] + 0.2
    assert os.path.getsize(result.curve_path) > 10_000
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
    assert checkpoint.Checkpointer(str(tmp_path), keep=3).latest_step() == 30
    # The checkpoint holds the student alone: the teacher is frozen and never saved.
    params, step = checkpoint.restore_params(str(tmp_path))
    assert step == 30 and "patch_kernel" in params and "stage_0" in params
    assert not any("vit" in k or "projector" in k for k in params)
    assert {"frames"} == set(task.batch_spec())
    # the loop's host time getting batches, as a share and per batch, on every logged row
    with open(tmp_path / "metrics.jsonl") as f:
        logged = [r for r in map(json.loads, f) if "loss" in r]
    assert logged and all(0.0 <= r["input_wait_fraction"] <= 1.0 and r["input_ms_per_batch"] > 0 for r in logged)


def test_clip_cache_run_gives_the_same_losses_as_decoding(videos, tmp_path, monkeypatch):
    from liteframe_jax.train import step as step_lib
    checked, check_fits = [], step_lib.check_fits
    monkeypatch.setattr(step_lib, "check_fits", lambda step, config, limit: checked.append(step.step_gib) or
                        check_fits(step, config, limit))
    cache = tmp_path / "cache"
    run(tiny_ctd_config(videos, total_steps=3), str(tmp_path / "decoded"))
    run(tiny_ctd_config(videos, total_steps=3, **{"data.clip_cache": str(cache), "data.cache_workers": 2}),
        str(tmp_path / "cached"))
    assert (cache / "meta.json").exists()
    assert len(checked) == 2 and all(gib > 0 for gib in checked)  # each run held its step against the device
    np.testing.assert_allclose(list(_losses(str(tmp_path / "cached")).values()),
                               list(_losses(str(tmp_path / "decoded")).values()), rtol=1e-6)


def test_one_and_eight_devices_give_the_same_loss(videos, tmp_path):
    assert jax.device_count() == 8
    one = tiny_ctd_config(videos, total_steps=3, **{"mesh.num_devices": 1})
    eight = tiny_ctd_config(videos, total_steps=3, **{"mesh.num_devices": 8, "mesh.data": 4, "mesh.fsdp": 2})
    run(one, str(tmp_path / "one"))
    result, task = run(eight, str(tmp_path / "eight"))
    a, b = _losses(str(tmp_path / "one")), _losses(str(tmp_path / "eight"))
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    # fsdp really shards parameters on the 8-device mesh
    mesh = sharding.make_mesh(eight.mesh)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


def _cli(workdir, videos, *extra):
    return [sys.executable, "-m", "liteframe_jax.main", "--config=configs/ctd.py", f"--workdir={workdir}",
            f"--config.data.videos={videos}", "--config.data.eval_every_nth_video=0", "--config.eval_at_start=False",
            "--config.eval_every=0", "--config.log_every=1", "--config.optimizer.decay_steps=400",
            "--config.optimizer.warmup_steps=2",  # a schedule that does not follow total_steps: one compiled step
            "--config.data.num_workers=1", *extra]


def _start_and_wait_for(workdir, videos, ready, *extra, poll: float = 0.5):
    """A CTD run in its own process, returned once `ready()` holds (it must not have ended before)."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags())
    proc = subprocess.Popen(_cli(workdir, videos, "--config.total_steps=400", *extra), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the run did not get there in time"
        time.sleep(poll)
    return proc


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies, which hold nothing, do not count)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(group) == pgid and state != "Z":
                return True
    return False


def test_preempted_then_killed_run_resumes_bit_identical(videos, tmp_path):
    """SIGTERM to the job (a preemption notice) stops after the step in flight with a checkpoint of it and exit
    status 75, the data workers quietly; the same command continues; kill -9 then loses the steps since the
    last periodic checkpoint (also when it lands while one is being written asynchronously, or at a seeded
    random moment), and no data worker outlives it. Each time the same command continues with the exact next
    batches, to the parameters of a run never interrupted."""
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags())
    latest = lambda: checkpoint.Checkpointer(str(run_dir), keep=3).latest_step()

    def logged() -> int:
        """The last step the run logged (0 before its first, or while a line is being written)."""
        try:
            return max(_losses(str(run_dir)), default=0)
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    proc = _start_and_wait_for(run_dir, videos, lambda: logged() >= 2, "--config.checkpoint_every=3")
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM does: to every process of the job, data workers included
    assert proc.wait(timeout=120) == 75, proc.stderr.read().decode()[-3000:]
    stopped = latest()
    assert stopped == logged() and 2 <= stopped < 400  # a checkpoint of the very step it stopped after
    said = proc.stderr.read().decode()
    assert "Traceback" not in said and "leaked" not in said, said[-3000:]  # the workers ended quietly

    # kill -9 of the main process, its data workers left behind: first while an asynchronous checkpoint is
    # being written (Orbax's temporary folder exists), then at a seeded random moment after a step
    def writing() -> bool:
        folder = run_dir / "checkpoints"
        return folder.exists() and any(".orbax-checkpoint-tmp" in n for n in os.listdir(folder))

    rng = np.random.default_rng(0)
    saved = stopped
    for kill_at in ("during a checkpoint write", "at a random moment"):
        if kill_at == "during a checkpoint write":
            proc = _start_and_wait_for(run_dir, videos, writing, "--config.checkpoint_every=3", poll=0.002)
        else:
            seen = logged()
            proc = _start_and_wait_for(run_dir, videos, lambda: logged() > seen, "--config.checkpoint_every=3")
            time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)  # the main process only: its data workers must not outlive it
        proc.wait()
        if kill_at == "during a checkpoint write":
            assert writing(), "the write had finished before the kill"
        assert (latest() or 0) >= saved, kill_at  # a half-written checkpoint is never taken for one
        saved = latest()
        deadline = time.time() + 30
        while _group_alive(proc.pid):
            assert time.time() < deadline, f"a data worker outlived its main process killed {kill_at}"
            time.sleep(0.2)
    assert stopped <= saved < 400

    total = saved + 3
    # The same command with a larger total_steps resumes; the reference trains the same steps in one go.
    for workdir in (run_dir, reference):
        subprocess.run(_cli(workdir, videos, f"--config.total_steps={total}", "--config.checkpoint_every=3"),
                       cwd=REPO, env=env, check=True, capture_output=True)
    resumed_params, s1 = checkpoint.restore_params(str(run_dir))
    reference_params, s2 = checkpoint.restore_params(str(reference))
    assert s1 == s2 == total
    jax.tree.map(np.testing.assert_array_equal, resumed_params, reference_params)
    resumed, ref = _losses(str(run_dir)), _losses(str(reference))
    for step in range(1, total + 1):  # the exact next batches after each restart: the same losses throughout
        assert resumed[step] == ref[step], (step, resumed[step], ref[step])

    # the same workdir with another model: one line naming the first parameter that differs, status 1
    other = subprocess.run(_cli(run_dir, videos, f"--config.total_steps={total + 2}", "--config.student.width=96"),
                           cwd=REPO, env=env, capture_output=True, text=True)
    assert other.returncode == 1, other.stderr[-3000:]
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1] == f"(traceback in {run_dir}/error_traceback.txt)", other.stderr[-3000:]
    assert lines[0].startswith(f"error: checkpoint {run_dir}/checkpoints/{total} does not fit this run's model: "
                               "final_norm/bias: checkpoint (64,), this run (96,);"), lines[0]


def test_config_typo_is_an_error_naming_the_key(tmp_path):
    out = subprocess.run([sys.executable, "-m", "liteframe_jax.main", "--config=configs/ctd.py",
                          f"--workdir={tmp_path}", "--config.optimizer.lrr=0.1"],
                         cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --config.optimizer.lrr: the config has no field 'lrr'; did you mean 'lr'?"


def test_grid_mismatch_fails_at_start_with_both_shapes(videos):
    cfg = tiny_ctd_config(videos, **{"student.stages": [(1, (2, 2, 2)), (1, (1, 2, 2))]})
    mesh = sharding.make_mesh(cfg.mesh)
    with pytest.raises(ValueError, match=r"student output grid .* \(4, 2, 2, 128\) does not match the compressed "
                                         r"teacher grid \(4, 4, 4, 128\)"):
        CTDTask(cfg, mesh, "/unused")


def test_paper_preset_without_teacher_is_a_clear_error(videos):
    from helpers import load_config
    cfg = load_config("ctd", "paper")
    with pytest.raises(ValueError, match="teacher.init is not set"):
        CTDTask(cfg, sharding.make_mesh(cfg.mesh), "/unused")


def test_teacher_mlp_kernel_on_a_device_without_it_names_the_problem(videos):
    from liteframe_jax.models.kernels import fused_mlp
    if fused_mlp.device_problem(jax.numpy.bfloat16) is None:
        pytest.skip("this device runs the kernel")
    cfg = tiny_ctd_config(videos, **{"kernels.mlp": "pallas"})
    with pytest.raises(ValueError, match="MLP kernel 'pallas' needs"):
        CTDTask(cfg, sharding.make_mesh(cfg.mesh), "/unused")


def test_teacher_targets_from_a_hugging_face_internvl_folder(videos, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from liteframe_jax.models.compression import compress
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=4, attention_bias=True)
    text = dict(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, vocab_size=64)
    ref = transformers.InternVLModel(transformers.InternVLConfig(vision_config=vision, text_config=text)).eval()
    ref.save_pretrained(tmp_path / "teacher")
    cfg = tiny_ctd_config(videos, **{
        "teacher.init": str(tmp_path / "teacher"), "compression.window": (2, 2, 2),
        "student.image_size": 32, "student.patch_size": (1, 4, 4), "student.out_dim": 48,
        "student.stages": [(1, (2, 2, 2)), (1, (1, 2, 2))]})
    task = CTDTask(cfg, sharding.make_mesh(cfg.mesh), str(tmp_path))
    assert task.target_shape == (4, 2, 2, 48)
    frames = next(iter(task.train_dataset()))["frames"][:2]
    got = np.asarray(task.targets(task.frozen()[0], frames))
    pixels = (frames.astype(np.float32) / 255 - np.array(cfg.data.pixel_mean)) / np.array(cfg.data.pixel_std)
    with torch.no_grad():
        px = torch.from_numpy(pixels.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2).astype(np.float32))
        tokens = ref.get_image_features(pixel_values=px).pooler_output.numpy()
    want = np.asarray(compress(tokens.reshape(2, 8, 4, 4, 48), (2, 2, 2))).reshape(2, 16, 48)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_siglip_teacher_from_a_hugging_face_folder_gives_the_targets_and_trains(videos, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from liteframe_jax.models.compression import compress

    # 36 px at patch 8: 4x4 patches and 4 px that SigLIP's strided convolution does not read (as 384 px at 14)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=36,
                  patch_size=8)
    ref = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision)).eval()
    ref.save_pretrained(tmp_path / "teacher")
    cfg = tiny_ctd_config(videos, total_steps=2, **{
        "teacher.init": str(tmp_path / "teacher"), "teacher.output": "vit", "compression.window": (2, 1, 1),
        "data.pixel_mean": (0.5, 0.5, 0.5), "data.pixel_std": (0.5, 0.5, 0.5),
        "student.image_size": 32, "student.patch_size": (1, 4, 4), "student.out_dim": 32,
        "student.stages": [(1, (2, 2, 2))]})
    task = CTDTask(cfg, sharding.make_mesh(cfg.mesh), str(tmp_path))
    assert task.target_shape == (4, 4, 4, 32) and task.teacher_image_size == 36
    frames = next(iter(task.train_dataset()))["frames"][:2]
    got = np.asarray(task.targets(task.frozen()[0], frames))
    pixels = (frames.astype(np.float32) / 255 - 0.5) / 0.5
    with torch.no_grad():
        px = torch.from_numpy(pixels.reshape(-1, 36, 36, 3).transpose(0, 3, 1, 2).astype(np.float32))
        tokens = ref(pixel_values=px).last_hidden_state.numpy()
    want = np.asarray(compress(tokens.reshape(2, 8, 4, 4, 32), (2, 1, 1))).reshape(2, 64, 32)
    np.testing.assert_allclose(got, want, atol=1e-4)
    from flax import nnx

    from liteframe_jax.models import compression

    # the ablations' targets: the same budget from the same teacher tokens (ours, which match transformers'
    # above: ToMe's and top-k's discrete choices would flip on the demo's near-equal background tokens)
    ours = nnx.merge(task.teacher_graphdef, task.frozen()[0]).features(pixels.reshape(-1, 36, 36, 3), "vit")
    for method in ("tome", "topk"):
        cfg.compression.method = method
        want = np.asarray(compression.reduce(ours.reshape(2, 8, 4, 4, 32), (2, 1, 1), method)).reshape(2, 64, 32)
        np.testing.assert_allclose(np.asarray(task.targets(task.frozen()[0], frames)), want, atol=1e-5)
    cfg.compression.method = "wap"
    result, _ = run(cfg, str(tmp_path / "run"))
    assert sorted(_losses(str(tmp_path / "run"))) == [1, 2] and result.step == 2
    # the `siglip` preset's student meets its SigLIP-So400m-384 teacher's compressed grid
    from helpers import load_config

    from liteframe_jax.models.siglip import SiglipVitConfig
    from liteframe_jax.models.student import StudentConfig
    paper = load_config("ctd", "siglip")
    teacher = SiglipVitConfig(**paper.teacher.vit.to_dict())
    student = StudentConfig.from_dict({**paper.student.to_dict(), "num_frames": paper.data.num_frames})
    target = compression.output_grid((8, teacher.grid, teacher.grid), paper.compression.window)
    assert (teacher.grid, target) == (27, (2, 9, 9))
    assert (*student.output_grid, student.out_dim) == (*target, teacher.hidden_size)


def test_every_config_field_can_be_overridden_from_the_command_line():
    from absl import flags
    from helpers import load_config
    from ml_collections import config_flags
    argv = ["prog", f"--config={os.path.join(REPO, 'configs', 'ctd.py')}", "--config.student.patch_size=(2, 8, 8)",
            "--config.student.stages=((2, (1, 2, 2)), (2, (1, 1, 1)))"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)  # argv names the overrides
    fv(argv)
    assert tuple(fv.config.student.patch_size) == (2, 8, 8)
    assert fv.config.student.stages == ((2, (1, 2, 2)), (2, (1, 1, 1)))

    def lists(c, path=""):  # ml_collections refuses to override list fields
        for k, v in c.items():
            yield from lists(v, f"{path}{k}.") if hasattr(v, "items") else ([path + k] if isinstance(v, list) else [])
    for name, presets in (("ctd", ("demo", "paper", "paper_tubelet2", "siglip")), ("lma", ("demo", "paper")),
                          ("eval", ("demo", "videomme"))):
        for preset in presets:
            assert list(lists(load_config(name, preset))) == [], (name, preset)

