"""convert/hf_folder.py reads safetensors through the library: float32 and bfloat16 tensors (as ml_dtypes'
bfloat16, no torch) from shards, filtered by name, each read when it is looked up; a file in a bucket through a
local copy."""

import builtins
import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from liteframe_jax.convert import hf_folder


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    first = {"a.weight": rng.standard_normal((3, 4)).astype(np.float32),
             "b.weight": rng.standard_normal((5,)).astype(ml_dtypes.bfloat16)}
    second = {"c.bias": np.arange(6, dtype=np.int64).reshape(2, 3)}
    save_file(first, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(second, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    return tmp_path, {**first, **second}


def _check(tensors, want, names):
    assert sorted(tensors) == sorted(names) and len(tensors) == len(names)
    for name in names:
        got = tensors[name]
        assert got.dtype == want[name].dtype and got.shape == want[name].shape
        np.testing.assert_array_equal(got.astype(np.float64), want[name].astype(np.float64))


def test_tensors_of_every_shard_as_numpy_bfloat16_included(folder):
    path, want = folder
    _check(hf_folder.read_tensors(str(path)), want, list(want))
    _check(hf_folder.read_tensors(str(path), keep=lambda n: n.endswith("weight")), want, ["a.weight", "b.weight"])
    with pytest.raises(KeyError):
        hf_folder.read_tensors(str(path), keep=lambda n: n != "c.bias")["c.bias"]


def test_a_file_in_a_bucket_is_read_through_a_local_copy(folder, monkeypatch):
    path, want = folder
    monkeypatch.setattr(hf_folder.paths, "is_remote", lambda p: True)  # as if in a bucket, read by paths.open
    monkeypatch.setattr(hf_folder.paths, "open", builtins.open)
    made = []
    real = hf_folder.tempfile.NamedTemporaryFile
    monkeypatch.setattr(hf_folder.tempfile, "NamedTemporaryFile", lambda **kw: made.append(real(**kw)) or made[-1])
    tensors = hf_folder.read_safetensors(str(path / "model-00001-of-00002.safetensors"))
    _check(tensors, want, ["a.weight", "b.weight"])
    assert len(made) == 1 and not os.path.exists(made[0].name)  # copied, then removed once mapped
