"""Applying a name-mapping table: external tensors -> our parameter tree, with shape checks.

A table is a list of `(external_regex, our_path_template, transform)`. The regex's groups fill the
template (`"block_{0}/attn/q/kernel"`), and `transform` turns the external layout into ours (a torch
Linear's (out, in) weight becomes our (in, out) kernel). Every parameter of the model must be found and
every external tensor that the table claims must land; anything else is an error naming the tensor.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from liteframe_jax.core.tree import flatten, unflatten

Transform = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def linear(x: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> kernel (in, out)."""
    return x.T


def conv2d_hwio(x: np.ndarray) -> np.ndarray:
    """torch Conv2d weight (out, in, kh, kw) -> (kh, kw, in, out)."""
    return x.transpose(2, 3, 1, 0)


def apply_table(table, tensors: dict[str, np.ndarray], target_shapes: dict, *, source: str,
                ignore: Callable[[str], bool] = lambda name: False) -> dict:
    """Map `tensors` through `table` onto a tree with the structure and shapes of `target_shapes`."""
    want = flatten(target_shapes)
    compiled = [(re.compile(pattern + r"$"), template, fn) for pattern, template, fn in table]
    got: dict[str, np.ndarray] = {}
    unexpected = []
    for name, value in tensors.items():
        for regex, template, fn in compiled:
            m = regex.match(name)
            if m:
                path = template.format(*m.groups())
                if path not in want:
                    raise ValueError(f"{source}: tensor {name!r} maps to {path!r}, which this model does not have "
                                     "(does config.json match the weights?)")
                arr = np.asarray(fn(np.asarray(value)), dtype=np.float32)
                if arr.shape != tuple(want[path].shape):
                    raise ValueError(f"{source}: tensor {name!r} has shape {np.shape(value)} -> {arr.shape}, "
                                     f"but the model's {path!r} has shape {tuple(want[path].shape)}")
                got[path] = arr
                break
        else:
            if not ignore(name):
                unexpected.append(name)
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} tensors are not part of this model, e.g. {unexpected[:5]}")
    missing = sorted(set(want) - set(got))
    if missing:
        raise ValueError(f"{source}: {len(missing)} parameters are missing from the checkpoint, e.g. {missing[:5]}")
    return unflatten(got)
