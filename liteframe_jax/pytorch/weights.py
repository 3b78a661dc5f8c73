"""Reading an exported folder's safetensors files into torch tensors, with torch and the standard library only
(one file, or shards listed by `<base>.safetensors.index.json`)."""

from __future__ import annotations

import json
import os
import struct

import torch

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def read_file(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = bytearray(f.read())
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        flat = torch.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start) \
            if end > start else torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(info["shape"]).clone()
    return out


def read_folder(folder: str, base: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of `folder/base.safetensors` or of the shards its index names."""
    single = os.path.join(folder, f"{base}.safetensors")
    index = os.path.join(folder, f"{base}.safetensors.index.json")
    if os.path.isfile(single):
        return read_file(single)
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{folder!r} has neither {base}.safetensors nor {base}.safetensors.index.json")
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(read_file(os.path.join(folder, name)))
    return tensors


def read_config(folder: str, kind: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} has no config.json (an exported {kind} folder was expected)")
    with open(path) as f:
        config = json.load(f)
    if config.get("model_type") != kind:
        raise ValueError(f"{folder!r}: config.json has model_type {config.get('model_type')!r}, not {kind!r}")
    return config
