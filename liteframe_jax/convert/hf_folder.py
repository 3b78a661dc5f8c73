"""Reading a Hugging Face model folder: `config.json` plus `*.safetensors` (sharded or not), never pickle.

Tensors are read through the `safetensors` library as numpy arrays (bfloat16 as ml_dtypes' bfloat16, so no
torch), one at a time when a reader asks for it: `safe_open` maps the file and copies out that tensor alone,
so host memory stays near one tensor, not the checkpoint. A file in a bucket (`gs://`) is first copied to a
local temporary file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping

import ml_dtypes  # noqa: F401  (registers numpy's 'bfloat16', which safetensors asks numpy for)
import numpy as np
from safetensors import safe_open

from liteframe_jax.core import paths


def read_config(path: str) -> dict:
    if not paths.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist or is not a folder")
    config_path = os.path.join(path, "config.json")
    if not paths.isfile(config_path):
        raise FileNotFoundError(f"{path!r} has no config.json: is it a Hugging Face model folder?")
    with paths.open(config_path) as f:
        return json.load(f)


def square(value, key: str, what: str) -> int:
    """A config size given as an int or an (h, w) pair; a non-square pair is an error naming it."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{what} config: non-square {key}={value} is not supported")
        value = value[0]
    return int(value)


def safetensors_files(path: str) -> list[str]:
    names = paths.listdir(path)
    files = [os.path.join(path, f) for f in names if f.endswith(".safetensors")]
    if not files:
        pickled = sorted(f for f in names if f.endswith(PICKLED_WEIGHTS))
        if pickled:
            example = os.path.join(path, pickled[0])
            raise ValueError(
                f"{path!r} holds its weights as {', '.join(pickled[:3])}{' ...' if len(pickled) > 3 else ''}: "
                "pickled weights are never read, since loading them can run code. Convert each file once to "
                "safetensors beside it (PyTorch's weights_only loading runs no code): "
                + CONVERT_COMMAND.format(src=example, dst=os.path.splitext(example)[0] + ".safetensors"))
        raise FileNotFoundError(f"{path!r} holds no *.safetensors file")
    return files


# PyTorch's pickle-based weight files, and the command that turns one into a safetensors file
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_COMMAND = ("python -c \"import sys, torch, safetensors.torch as st; st.save_file({{k: v.clone() for k, v in "
                   "torch.load(sys.argv[1], weights_only=True).items()}}, sys.argv[2])\" {src} {dst}")


class SafetensorsTensors(Mapping):
    """{name: numpy array} over safetensors files, each tensor read from its file when it is looked up."""

    def __init__(self, files: list[str], keep=lambda name: True):
        self._where: dict[str, str] = {}
        self._open: dict[str, object] = {}
        for file in files:
            self._open[file] = _open_local(file)
            self._where.update({name: file for name in self._open[file].keys() if keep(name)})

    def __getitem__(self, name: str) -> np.ndarray:
        return self._open[self._where[name]].get_tensor(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _open_local(file: str):
    """`safe_open` on the file; one in a bucket is first copied to a temporary local file, which is deleted
    once mapped (the map keeps its bytes until it is closed)."""
    if not paths.is_remote(file):
        return safe_open(file, framework="numpy")
    with paths.open(file, "rb") as src, tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    try:
        return safe_open(dst.name, framework="numpy")
    finally:
        os.remove(dst.name)


def read_safetensors(file: str, keep=lambda name: True) -> Mapping[str, np.ndarray]:
    return SafetensorsTensors([file], keep)


def read_tensors(path: str, keep=lambda name: True) -> Mapping[str, np.ndarray]:
    """All tensors of the folder whose name passes `keep`, each read when it is looked up."""
    return SafetensorsTensors(safetensors_files(path), keep)
