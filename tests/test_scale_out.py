"""Scaling out: the launch scripts (parse, shellcheck, the commands their dry runs print), the topology-aware
mesh over slices, and 'auto' kernels by platform."""

import dataclasses
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

from liteframe_jax.core import defaults, sharding
from liteframe_jax.models import kernel_choice

LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = sorted(os.path.join(LAUNCH, f) for f in os.listdir(LAUNCH) if f.endswith((".sh", ".sbatch")))
PAPER = ["--config=configs/ctd.py:paper", "--workdir=/mnt/runs/ctd1", "--config.data.videos=/mnt/my videos"]


def _run(args, env=None):
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_launch_scripts_parse_and_pass_shellcheck(script):
    assert _run(["bash", "-n", script]).returncode == 0
    shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    out = _run([shellcheck, script])
    assert out.returncode == 0, out.stdout


def test_tpu_dry_run_prints_the_commands_a_user_would_type():
    out = _run(["bash", "launch/tpu_vm.sh", "--name", "ctd1", "--zone", "us-east5-a", "--type", "v5p-64", "--spot",
                "--dry-run", "--", *PAPER])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("gcloud compute tpus queued-resources create ctd1 --node-id=ctd1 "
                               "--accelerator-type=v5p-64 --runtime-version=")
    assert lines[0].rstrip().endswith("--spot")
    assert lines[1].startswith("gcloud compute tpus queued-resources describe ctd1 --zone=us-east5-a")
    assert any(line.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in line for line in lines)
    setup = [line for line in lines if "pip\\ install" in line]
    assert len(setup) == 1 and "requirements.txt" in setup[0] and "--worker=all" in setup[0]
    job = [line for line in lines if "liteframe_jax.main" in line]
    assert len(job) == 1 and "LITEFRAME_DISTRIBUTED=auto" in job[0] and "--worker=all" in job[0]
    assert "--config=configs/ctd.py:paper" in job[0] and "my\\\\\\ videos" in job[0]  # quoted twice, kept whole
    assert lines[-1] == "gcloud compute tpus queued-resources delete ctd1 --zone=us-east5-a --force --quiet"

    multi = _run(["bash", "launch/tpu_vm.sh", "--name", "ctd2", "--zone", "z", "--type", "v5p-64", "--num-slices", "2",
                  "--reserved", "--keep", "--dry-run", "--", *PAPER])
    lines = multi.stdout.strip().splitlines()
    assert "--node-count=2 --node-prefix=ctd2" in lines[0] and "--reserved" in lines[0]
    assert [line.split()[5] for line in lines if "liteframe_jax.main" in line] == ["ctd2-0", "ctd2-1"]
    assert not any("delete" in line for line in lines) and "slice ctd2 kept" in multi.stderr

    missing = _run(["bash", "launch/tpu_vm.sh", "--name", "x", "--type", "v5p-8", "--dry-run", "--", *PAPER])
    assert missing.returncode == 2 and "--zone is required" in missing.stderr


def test_slurm_dry_run_and_a_local_stand_in_for_srun(tmp_path):
    out = _run(["bash", "launch/gpu_slurm.sbatch", "--dry-run", *PAPER], env={"SLURM_JOB_ID": ""})
    assert out.returncode == 0, out.stderr
    env_line, srun = out.stdout.strip().splitlines()
    assert "NCCL_NVLS_ENABLE=0" in env_line
    assert srun.startswith("srun --kill-on-bad-exit=1 bash -c")
    assert "--coordinator_address=gpu-001:" in srun and "--process_id=\\$SLURM_PROCID" in srun
    assert "CUDA_VISIBLE_DEVICES" not in srun  # one process per node sees every GPU of it
    per_gpu = _run(["bash", "launch/gpu_slurm.sbatch", "--dry-run", *PAPER],
                   env={"SLURM_JOB_ID": "", "LITEFRAME_PROCESS_PER": "gpu"})
    assert "CUDA_VISIBLE_DEVICES=\\$SLURM_LOCALID" in per_gpu.stdout
    bad = _run(["bash", "launch/gpu_slurm.sbatch", "--dry-run", *PAPER],
               env={"SLURM_JOB_ID": "", "LITEFRAME_PROCESS_PER": "socket"})
    assert bad.returncode == 2 and "must be 'node' or 'gpu'" in bad.stderr

    # inside a job: stand-ins for srun (one task) and scontrol; the task's command must start the entry point
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")
    (bin_dir / "srun").write_text('#!/bin/sh\nshift\nexport SLURM_PROCID=0 SLURM_NTASKS=1\nexec "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_SUBMIT_DIR": REPO, "PYTHON": sys.executable, "PYTHONPATH": REPO}
    started = _run(["bash", "launch/gpu_slurm.sbatch", "--helpfull"], env=env)
    assert "--coordinator_address" in started.stdout + started.stderr  # absl listed the entry point's flags


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    slice_index: int
    platform: str = "cpu"
    device_kind: str = "fake"
    process_index: int = 0


def test_mesh_over_two_slices_puts_data_parallelism_across_them():
    devices = [FakeDevice(i, i // 4) for i in (4, 5, 6, 7, 0, 1, 2, 3)]
    assert sharding.num_slices(devices) == 2
    grid = sharding.device_grid([4, 2, 1], devices, 2)
    slice_of = np.vectorize(lambda d: d.slice_index)(grid)[:, :, 0]
    np.testing.assert_array_equal(slice_of, [[0, 0], [0, 0], [1, 1], [1, 1]])  # fsdp stays inside a slice
    with pytest.raises(ValueError, match="not a multiple of the 2 slices"):
        sharding.device_grid([3, 2, 1], devices[:6], 2)
    with pytest.raises(ValueError, match="mesh.slices=4, but the devices span 2 slices"):
        sharding.num_slices(devices, 4)


def test_mesh_from_config_on_the_cpu_devices():
    mesh = sharding.make_mesh({**defaults.mesh(), "fsdp": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    with pytest.raises(ValueError, match="mesh.slices=2, but the devices span 1 processes"):
        sharding.make_mesh({**defaults.mesh(), "slices": 2})


class _Hopper:
    device_kind, compute_capability, platform = "NVIDIA H100 80GB HBM3", "9.0", "gpu"


def test_auto_kernels_follow_the_platform(monkeypatch):
    auto = defaults.kernels()
    chosen, said = kernel_choice.resolve(auto, jnp.bfloat16)
    assert (chosen["attention"], chosen["mlp"], chosen["block_tail"]) == (None, "xla", "xla")  # a CPU
    assert len(said) == 3 and "no GPU" in said[0]
    explicit, said = kernel_choice.resolve({"attention": "cudnn", "mlp": "pallas", "block_tail": "pallas"}, jnp.float32)
    assert explicit == {"attention": "cudnn", "mlp": "pallas", "block_tail": "pallas"} and not said  # passed on

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [_Hopper()])
    chosen, _ = kernel_choice.resolve(auto, jnp.bfloat16)
    assert (chosen["attention"], chosen["mlp"], chosen["block_tail"]) == ("cudnn", "pallas", "pallas")
    chosen, said = kernel_choice.resolve(auto, jnp.bfloat16, tower_trains=True)
    assert chosen["mlp"] == "xla" and "trains" in said[1]
    chosen, said = kernel_choice.resolve(auto, jnp.float32)  # float32 compute: no flash attention, no fused MLP
    assert (chosen["attention"], chosen["mlp"], chosen["block_tail"]) == (None, "xla", "pallas")


def test_a_step_that_does_not_fit_the_device_is_refused_before_step_1():
    from helpers import load_config

    from liteframe_jax.train import step as step_lib
    x = jax.ShapeDtypeStruct((512, 512), jnp.float32)
    compiled = jax.jit(lambda a: (a @ a).sum()).lower(x).compile()
    m = compiled.memory_analysis()
    memory = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
              "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes}
    step = step_lib.CompiledStep(None, compiled, {}, {}, 0.0, memory)
    need = step.step_gib * 2 ** 30
    assert need >= 512 * 512 * 4  # at least its argument
    config = load_config("lma", "demo")
    with pytest.raises(MemoryError, match=r"needs 0\.\d\d GiB per device but the device has 0\.00 GiB .*"
                                          r"--config\.batch_size \(now \d+; .*--config\.grad_accum_steps \(now 1; .*"
                                          r"--config\.remat \(now 'none'; .*--config\.mesh\.fsdp \(now 1; .*"
                                          r"check_memory=False"):
        step_lib.check_fits(step, config, limit_bytes=int(need) - 1)
    step_lib.check_fits(step, config, limit_bytes=int(need))  # fits exactly
    step_lib.check_fits(step, config, limit_bytes=None)  # the CPU: no limit known
    config.check_memory = False
    step_lib.check_fits(step, config, limit_bytes=1)
    assert step_lib.device_memory_limit() is None  # CPU devices report no memory limit
