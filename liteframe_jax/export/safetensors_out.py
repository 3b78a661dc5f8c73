"""Writing safetensors files tensor by tensor, sharded above a size threshold as Hugging Face does.

A tensor is given as its name, shape, dtype and a function that produces it, and is produced only when its
bytes are written: a model leaves in one pass with at most one converted tensor in memory beside the source,
never a second full copy. Layout (the format's own): an 8-byte little-endian header length, a JSON header
naming every tensor's dtype, shape and byte range, then the tensors' bytes back to back. Several files come
with `model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map": {name: file}}), as
`transformers` writes and reads them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from typing import Callable

import ml_dtypes
import numpy as np

DTYPES = {"float32": (np.dtype(np.float32), "F32"), "bfloat16": (np.dtype(ml_dtypes.bfloat16), "BF16"),
          "float16": (np.dtype(np.float16), "F16")}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # a key of DTYPES
    produce: Callable[[], np.ndarray]  # called once, when the tensor is written

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][0].itemsize


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '64KB' / a number of bytes -> bytes (powers of 1000, as transformers counts)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"max shard size {text!r} is not a size like '5GB', '500MB' or a number of bytes")
    return int(float(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2).upper()])


def plan_shards(tensors: list[Tensor], max_bytes: int) -> list[list[Tensor]]:
    """Tensors in order into files of at most `max_bytes` (a tensor larger than that gets a file alone)."""
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    return shards


def write_file(path: str, tensors: list[Tensor], metadata: dict[str, str] | None = None) -> None:
    header, offset = {}, 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPES[t.dtype][1], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the tensors start 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            arr = np.ascontiguousarray(np.asarray(t.produce()).astype(DTYPES[t.dtype][0], copy=False))
            if arr.shape != tuple(t.shape):
                raise ValueError(f"tensor {t.name!r}: produced shape {arr.shape}, announced {tuple(t.shape)}")
            f.write(arr.reshape(-1).view(np.uint8).data)
            del arr


def write_model(folder: str, tensors: list[Tensor], *, max_shard_bytes: int, base: str = "model",
                metadata: dict[str, str] | None = None) -> list[str]:
    """`base.safetensors`, or `base-0000k-of-0000n.safetensors` + `base.safetensors.index.json` when the tensors
    pass `max_shard_bytes`. Returns the file names written."""
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate tensor names: {sorted({n for n in names if names.count(n) > 1})[:5]}")
    shards = plan_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        write_file(os.path.join(folder, f"{base}.safetensors"), shards[0], metadata)
        return [f"{base}.safetensors"]
    files, weight_map = [], {}
    for k, shard in enumerate(shards):
        name = f"{base}-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_file(os.path.join(folder, name), shard, metadata)
        files.append(name)
        weight_map.update({t.name: name for t in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    with open(os.path.join(folder, f"{base}.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return files + [f"{base}.safetensors.index.json"]
