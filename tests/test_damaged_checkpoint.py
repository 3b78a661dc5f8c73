"""A checkpoint damaged after it was written (a file cut short, bytes changed in an array's values) is refused
at restore, naming the step, the array and `--config.resume_step` of the one before; with it the run resumes
from that step with the exact next batch, the later checkpoints set aside."""

import glob
import os
import re
import shutil

import jax
import numpy as np
import pytest
from helpers import make_videos, tiny_ctd_config

from liteframe_jax.core import checkpoint
from liteframe_jax.jobs import train as run
from liteframe_jax.train import loop
from liteframe_jax.train import metrics as metrics_lib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CTD run of 4 steps with checkpoints of steps 2 and 4, and its loss at each step."""
    folder = tmp_path_factory.mktemp("damaged")
    make_videos(folder / "videos", count=4, num_frames=24)
    workdir = str(folder / "run")
    run(_config(str(folder / "videos")), workdir)
    losses = {r["step"]: r["loss"] for r in metrics_lib.read_metrics(workdir) if "loss" in r}
    return str(folder / "videos"), workdir, losses


def _config(videos, **overrides):
    """Batches of 2 of the 4 clips: each step's batch differs, so a resume at another position shows."""
    return tiny_ctd_config(videos, **{"optimizer.decay_steps": 400, "optimizer.warmup_steps": 2, "batch_size": 2,
                                      **overrides})


def _copy(workdir, tmp_path) -> str:
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return copy


def _data_files(workdir, step):
    return sorted(glob.glob(f"{workdir}/checkpoints/{step}/state/ocdbt.process_0/d/*"), key=os.path.getsize)


def _arrays(state_dir) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(checkpoint.read_tree(state_dir))}


def _change_values_unnoticed(state_dir) -> list[str]:
    """Flip one bit of an array file where TensorStore then reads other values without an error (inside an
    array's compressed values: zstd keeps no checksum of them, OCDBT only of its index); the arrays changed."""
    before = _arrays(state_dir)
    for path in sorted(glob.glob(f"{state_dir}/ocdbt.process_0/d/*"), key=os.path.getsize, reverse=True)[:3]:
        original = open(path, "rb").read()
        for fraction in np.linspace(0.05, 0.95, 19):
            damaged = bytearray(original)
            damaged[int(len(damaged) * fraction)] ^= 0x10
            open(path, "wb").write(bytes(damaged))
            try:
                after = _arrays(state_dir)
            except Exception:  # noqa: BLE001 (a byte that TensorStore notices: not the case wanted here)
                continue
            changed = [k for k, v in before.items() if not np.array_equal(v, after[k])]
            if changed:
                return changed
        open(path, "wb").write(original)
    pytest.fail("no bit of the array files changed an array's values unnoticed")


def _refusal(videos, workdir, **overrides) -> str:
    with pytest.raises(ValueError) as refused:
        run(_config(videos, **overrides), workdir)
    message = str(refused.value)
    assert "\n" not in message  # the entry point says a ValueError in one line
    return message


def test_a_cut_file_is_refused_naming_step_array_and_the_way_on(trained, tmp_path):
    videos, workdir, _ = trained
    workdir = _copy(workdir, tmp_path)
    biggest = _data_files(workdir, 4)[-1]
    os.truncate(biggest, os.path.getsize(biggest) // 2)
    message = _refusal(videos, workdir)
    assert "the checkpoint of step 4" in message and "is damaged (array " in message
    assert "--config.resume_step=2" in message


def test_changed_values_are_refused_by_their_digest_then_resume_step_goes_back(trained, tmp_path):
    """Bytes changed inside an array's values, which TensorStore reads back as other numbers without an error:
    the saved CRC-32 names the array. Then resume_step=2 continues from step 2 with the same batches as the
    run never damaged (the same losses), and checkpoint 4 is moved aside, not deleted."""
    videos, workdir, losses = trained
    workdir = _copy(workdir, tmp_path)
    changed = _change_values_unnoticed(f"{workdir}/checkpoints/4/state")
    message = _refusal(videos, workdir)
    assert "the checkpoint of step 4" in message and "the values read differ from those saved" in message
    names = ["/".join(re.findall(r"\w+", k)) for k in changed]  # "['opt_state'][1]..." as "opt_state/1/..."
    assert any(f"array {name}" in message for name in names), (names, message)
    assert "--config.resume_step=2" in message

    with pytest.raises(ValueError, match=r"--config.resume_step=3: .* has no checkpoint of that step; it has 2, 4$"):
        loop._chosen_step(checkpoint.Checkpointer(workdir, keep=3), _config(videos, resume_step=3))

    result, _ = run(_config(videos, resume_step=2), workdir)
    assert "resumed from this workdir at step 2" in result.origin and result.step == 4
    resumed = {r["step"]: r["loss"] for r in metrics_lib.read_metrics(workdir) if "loss" in r}
    assert resumed == losses  # steps 3 and 4 trained again on the same batches
    assert sorted(int(n) for n in os.listdir(f"{workdir}/checkpoints") if n.isdigit()) == [2, 4]
    # the new checkpoint 4 holds the data position and (by the CRC-32s taken when each was saved) the state of
    # the one set aside, which was saved before the damage
    aside, again = f"{workdir}/checkpoints_set_aside/4", f"{workdir}/checkpoints"
    assert _read(f"{aside}/data/process_0-of-1.json") == _read(f"{again}/4/data/process_0-of-1.json")
    assert _read(f"{aside}/digests-4.process_0.json") == _read(f"{again}/digests-4.process_0.json")


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def test_the_same_resume_step_is_not_taken_twice(tmp_path):
    """A command run again with the resume_step it used once continues from its latest checkpoint instead of
    going back and setting aside what it trained since: it is refused with what to do."""
    import json

    from liteframe_jax.core.run_dir import RunDir
    from liteframe_jax.train.loop import _chosen_step

    class Saved:  # the Checkpointer's part that choosing a step reads
        run = RunDir(str(tmp_path))
        directory = run.checkpoints

        def all_steps(self):
            return [2, 4, 6]

        def latest_step(self):
            return 6

    ckpt = Saved()
    assert _chosen_step(ckpt, {"resume_step": 2}) == 2  # never went back: allowed
    (tmp_path / "checkpoints_set_aside").mkdir()
    (tmp_path / "checkpoints_set_aside" / "resumed_from.json").write_text(json.dumps({"step": 2}))
    with pytest.raises(ValueError, match="resume_step=2 was used already.*Drop --config.resume_step to continue "
                                         "from step 6"):
        _chosen_step(ckpt, {"resume_step": 2})
    assert _chosen_step(ckpt, {"resume_step": 4}) == 4
    assert _chosen_step(ckpt, {}) == 6
