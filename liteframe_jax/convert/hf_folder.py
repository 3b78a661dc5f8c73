"""Reading a Hugging Face model folder: `config.json` plus `*.safetensors` (sharded or not), never pickle.

Tensors are read straight from the safetensors layout (an 8-byte header length, a JSON header, raw bytes)
through a memory map, so bfloat16 checkpoints load without torch and without copying the whole file. A folder
in a bucket (`gs://`) is read into memory instead.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from liteframe_jax.core import paths

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


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


def read_safetensors(file: str, keep=lambda name: True) -> dict[str, np.ndarray]:
    with paths.open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = (np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len) if not paths.is_remote(file) else
                np.frombuffer(f.read(), dtype=np.uint8))
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or not keep(name):
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[name] = data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def read_tensors(path: str, keep=lambda name: True) -> dict[str, np.ndarray]:
    """All tensors of the folder whose name passes `keep` (memory-mapped numpy arrays)."""
    tensors: dict[str, np.ndarray] = {}
    for file in safetensors_files(path):
        tensors.update(read_safetensors(file, keep))
    return tensors
