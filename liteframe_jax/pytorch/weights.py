"""Reading an exported folder's safetensors files into torch tensors through the `safetensors` library, one
tensor at a time (`safe_open` maps the file; each tensor is copied out alone), from one file or from the shards
that `<base>.safetensors.index.json` lists. `safetensors` is a dependency of transformers, so the PyTorch side
needs nothing more."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open


def read_file(path: str, keep=lambda name: True) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file whose names pass `keep`."""
    out = {}
    with safe_open(path, framework="pt") as f:
        for name in f.keys():
            if keep(name):
                out[name] = f.get_tensor(name)
    return out


def folder_files(folder: str, base: str = "model") -> list[str]:
    """The safetensors files of `folder/base.safetensors` or of the shards its index names."""
    single = os.path.join(folder, f"{base}.safetensors")
    index = os.path.join(folder, f"{base}.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{folder!r} has neither {base}.safetensors nor {base}.safetensors.index.json")
    with open(index) as f:
        return [os.path.join(folder, name) for name in sorted(set(json.load(f)["weight_map"].values()))]


def read_folder(folder: str, base: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of `folder/base.safetensors` or of the shards its index names."""
    tensors: dict[str, torch.Tensor] = {}
    for path in folder_files(folder, base):
        tensors.update(read_file(path))
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
