"""The teacher-target cache: built once (sharded, resumable, with a manifest), read back in the published
ArrayRecord layout, equal to the online targets to bfloat16 rounding, refused when made with other settings,
and a CTD run on it logs the online run's losses."""

import json
import os

import jax
import numpy as np
import pytest
from cpu_flags import xla_flags
from helpers import load_config, make_videos, tiny_ctd_config

from liteframe_jax.core import sharding
from liteframe_jax.data import target_cache as tc
from liteframe_jax.jobs import train as run
from liteframe_jax.train import target_cache_job
from liteframe_jax.train.ctd import CTDTask


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("target_cache_videos")
    make_videos(folder, count=5, num_frames=24)
    return str(folder)


def _targets_config(videos, **ctd_overrides):
    c = load_config("targets", "demo")
    c.ctd = tiny_ctd_config(videos, **ctd_overrides)
    c.batch_size, c.shard_size = 8, 3  # clips per teacher call over the 8 test devices
    return c


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory):
    """A cache of the tiny CTD config's targets, built once for the module."""
    cache = tmp_path_factory.mktemp("target_cache") / "cache"
    target_cache_job.build(_targets_config(videos), str(cache))
    return cache


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_cache_is_built_resumably_and_equals_online_targets(videos, built, tmp_path):
    import shutil
    cache = tmp_path / "cache"
    shutil.copytree(built, cache)
    config = _targets_config(videos)
    manifest = tc.read_manifest(str(cache))
    task = CTDTask(config.ctd, sharding.make_mesh(config.ctd.mesh), str(tmp_path / "probe"))
    clips = task.train_index.clips
    assert manifest["num_clips"] == len(clips) >= 4 and manifest["num_shards"] == -(-len(clips) // 3)
    assert manifest["settings"]["teacher"]["weights_sha256"] == task.teacher_weights_hash()
    assert manifest["settings"]["data"]["clips_sha256"] == tc.clip_list_hash(clips)
    shards = sorted(f for f in os.listdir(cache) if f.endswith(".array_record"))
    assert shards == [tc.shard_name(k) for k in range(manifest["num_shards"])]

    # every record names its clip and holds that clip's target, the online one rounded to bfloat16
    cached = tc.TargetCache(str(cache), clips)
    from liteframe_jax.data import pipeline
    frames = next(pipeline.eval_batches(clips, size=task.teacher_image_size, batch_size=len(clips)))[0]["frames"]
    online = np.asarray(task.targets(task.frozen()[0], frames))
    for i in range(len(clips)):
        np.testing.assert_allclose(cached[i], online[i], rtol=2 ** -7, atol=1e-6)
    assert np.abs(np.stack([cached[i] for i in range(len(clips))]) - online).max() > 0  # stored in bfloat16

    # a killed build (one shard missing, one half-written) builds only what is missing, to the same bytes
    with open(cache / shards[1], "rb") as f:
        shard_1 = f.read()
    os.remove(cache / shards[1])
    with open(cache / (shards[1] + ".tmp"), "wb") as f:
        f.write(b"half")
    kept = os.stat(cache / shards[0]).st_mtime_ns
    with pytest.raises(ValueError, match="is incomplete: 1 of"):
        tc.TargetCache(str(cache), clips)
    target_cache_job.build(config, str(cache))
    assert os.stat(cache / shards[0]).st_mtime_ns == kept
    with open(cache / shards[1], "rb") as f:
        assert f.read() == shard_1

    # frames read back from the decoded-clip cache (built here first) give the same shards, byte for byte
    from_clip_cache = tmp_path / "from_clip_cache"
    target_cache_job.build(_targets_config(videos, **{"data.clip_cache": str(tmp_path / "clips")}),
                           str(from_clip_cache))
    assert (tmp_path / "clips" / "meta.json").exists()
    for name in shards:
        with open(cache / name, "rb") as a, open(from_clip_cache / name, "rb") as b:
            assert a.read() == b.read(), name

    # a run with other settings is refused with what differs
    other = tiny_ctd_config(videos, **{"compression.weighting": "norm", "targets": f"cache:{cache}"})
    with pytest.raises(ValueError, match=r"compression\.weighting: run 'norm', cache 'uniform'"):
        CTDTask(other, sharding.make_mesh(other.mesh), str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"compression\.weighting: run 'norm', cache 'uniform'"):
        target_cache_job.build(_targets_config(videos, **{"compression.weighting": "norm"}), str(cache))


def test_ctd_on_cached_targets_logs_the_online_losses(videos, built, tmp_path):
    cache = built
    online_dir, cached_dir = tmp_path / "online", tmp_path / "cached"
    run(tiny_ctd_config(videos), str(online_dir))
    result, task = run(tiny_ctd_config(videos, targets=f"cache:{cache}"), str(cached_dir))
    assert "targets" in task.batch_spec()
    online, cached = _losses(str(online_dir)), _losses(str(cached_dir))
    assert sorted(online) == sorted(cached) == [1, 2, 3, 4]
    for step in online:
        assert cached[step] == pytest.approx(online[step], rel=1e-2), step
    with pytest.raises(FileNotFoundError, match="is not a target cache"):
        CTDTask(tiny_ctd_config(videos, targets=f"cache:{tmp_path}"), sharding.make_mesh(task.config.mesh),
                str(tmp_path / "x"))
    with pytest.raises(ValueError, match="choose 'online'"):
        CTDTask(tiny_ctd_config(videos, targets="disk"), sharding.make_mesh(task.config.mesh), str(tmp_path / "y"))


def test_two_processes_share_the_shards_and_build_the_one_process_cache(videos, built, tmp_path):
    """`launch/local_multiprocess.sh 2` runs the job as two processes: they share the shards (process p the
    p-th, p + 2-th, ...), every clip's record is there once and in its place, and the targets are the
    one-process build's (to bfloat16 rounding: each process computes on its own devices)."""
    import socket
    import subprocess
    import sys

    from helpers import REPO
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    flags = ["--config=configs/targets.py", f"--config.ctd.data.videos={videos}",
             "--config.ctd.data.eval_every_nth_video=0", "--config.ctd.data.num_workers=0", "--config.batch_size=8",
             "--config.shard_size=3"]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(), LITEFRAME_PORT=str(port),
               PYTHON=sys.executable)
    out = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={cache}", *flags], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "this process builds 1 of them" in out.stdout or "this process builds 2 of them" in out.stdout
    assert tc.read_manifest(str(cache)) == tc.read_manifest(str(built))
    config = _targets_config(videos)
    clips = CTDTask(config.ctd, sharding.make_mesh(config.ctd.mesh), str(tmp_path / "probe")).train_index.clips
    shared, alone = tc.TargetCache(str(cache), clips), tc.TargetCache(str(built), clips)
    for i in range(len(clips)):  # reading record i checks that it is clip i's
        np.testing.assert_allclose(shared[i], alone[i], rtol=2 ** -7, atol=1e-6)


def _poisoned_copy(built, folder, poison) -> str:
    """The built cache with the targets of the clips `poison(i)` picks set to NaN: a batch that holds one makes
    the step non-finite."""
    import shutil

    import grain
    from array_record.python.array_record_module import ArrayRecordWriter
    shutil.copytree(built, folder)
    manifest = tc.read_manifest(str(folder))
    for k in range(manifest["num_shards"]):
        name = str(folder / tc.shard_name(k))
        records = list(grain.sources.ArrayRecordDataSource([name]))
        writer = ArrayRecordWriter(name, "group_size:1")
        for record in records:
            header, target = tc.decode(record, tuple(manifest["target_shape"]))
            if target is not None and poison(header["clip"]):
                target = np.full(target.shape, np.nan, np.float32)
            writer.write(tc.encode(header["clip"], tc_clip(header), target))
        writer.close()
    return str(folder)


def tc_clip(header):
    from liteframe_jax.data.clips import ClipSpec
    return ClipSpec(header["path"], tuple(header["frames"]))


def test_a_poisoned_batch_is_skipped_and_non_finite_steps_stop_with_a_report(videos, built, tmp_path):
    """NaN targets reach the loss: the step is skipped (parameters and optimizer state kept), and a run whose
    steps stay non-finite stops with a report that names the last checkpoint and the clips of those steps;
    no checkpoint holds a NaN."""
    from liteframe_jax.core import checkpoint
    from liteframe_jax.data import pipeline
    everything = _poisoned_copy(built, tmp_path / "all_nan", lambda i: True)
    config = tiny_ctd_config(videos, targets=f"cache:{everything}", nan_patience=3, total_steps=6,
                             checkpoint_every=1)
    workdir = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"step 3: the loss or gradients were non-finite for 3 steps in a "
                                                 r"row \(3 skipped in all; non-finite: cosine, grad_norm, loss, mse, "
                                                 r"update_norm\)"):
        run(config, workdir)
    report = json.load(open(os.path.join(workdir, "nonfinite_report.json")))
    assert report["step"] == 3 and report["last_checkpoint"] == 2 and "loss" in report["non_finite_metrics"]
    task = CTDTask(config, sharding.make_mesh(config.mesh), str(tmp_path / "probe"))
    clips = task.train_index.clips
    batches = iter(pipeline.train_dataset(clips, size=task.teacher_image_size, batch_size=config.batch_size,
                                          seed=config.seed))
    for step, logged in zip((1, 2, 3), report["batches"]):
        expected = [{"index": int(i), "video": clips[i].path, "frames": list(clips[i].frame_indices)}
                    for i in next(batches)["_index"]]
        assert logged == {"step": step, "examples": expected}
    # every step was skipped: both checkpoints hold the initial parameters, finite
    first, second = (checkpoint.restore_params(workdir, step=step)[0] for step in (1, 2))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)

    # a checkpoints folder of a later checkpoint format is refused with both versions, before anything is read
    with open(os.path.join(workdir, "checkpoints", checkpoint.FORMAT_FILE), "w") as f:
        json.dump({"format_version": checkpoint.FORMAT_VERSION + 1}, f)
    later = f"written in checkpoint format {checkpoint.FORMAT_VERSION + 1}; this liteframe_jax reads format " \
            f"{checkpoint.FORMAT_VERSION} and older"
    with pytest.raises(ValueError, match=later):
        checkpoint.restore_params(workdir)
    with pytest.raises(ValueError, match=later):
        run(config, workdir)
