"""The LiteFrame student's parameters -> the tensor names and layouts of `pytorch.encoder.LiteFrameEncoder`
(torch `Linear` weights are (out, in), `Conv1d`/`Conv3d` weights (out, in / groups, *kernel)), and its
`config.json`."""

from __future__ import annotations

import dataclasses

import numpy as np

from liteframe_jax.assembly.specs import StudentSpec
from liteframe_jax.export.safetensors_out import Tensor

MODEL_TYPE = "liteframe_student"  # pytorch/encoder.py reads this
FORMAT_VERSION = 1


def config(spec: StudentSpec, dtype: str) -> dict:
    arch = spec.arch
    return {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, "architecture": dataclasses.asdict(arch),
            "output_grid": list(arch.output_grid), "clip_frames": arch.num_frames,
            "tokens_per_clip": spec.token_grid[0] * spec.token_grid[1], "pixel_mean": list(spec.pixel_mean),
            "pixel_std": list(spec.pixel_std), "dtype": dtype}


class _Source:
    """The flat parameters, remembering which were read, so none is left without a PyTorch name."""

    def __init__(self, flat: dict):
        self.flat, self.read = flat, set()

    def __getitem__(self, path: str):
        self.read.add(path)
        return self.flat[path]

    def check_all_read(self) -> None:
        left = sorted(set(self.flat) - self.read)
        if left:
            raise ValueError(f"student parameters with no PyTorch name: {left[:5]}")


def _linear(prefix: str, ours: str, src: _Source, dtype: str) -> list[Tensor]:
    kernel, bias = src[f"{ours}/kernel"], src[f"{ours}/bias"]
    return [Tensor(f"{prefix}.weight", tuple(kernel.shape[::-1]), dtype, lambda: np.asarray(kernel).T),
            Tensor(f"{prefix}.bias", tuple(bias.shape), dtype, lambda: bias)]


def _norm(prefix: str, ours: str, src: _Source, dtype: str) -> list[Tensor]:
    scale, bias = src[f"{ours}/scale"], src[f"{ours}/bias"]
    return [Tensor(f"{prefix}.weight", tuple(scale.shape), dtype, lambda: scale),
            Tensor(f"{prefix}.bias", tuple(bias.shape), dtype, lambda: bias)]


def _plain(name: str, value, dtype: str) -> Tensor:
    return Tensor(name, tuple(value.shape), dtype, lambda: value)


def tensors(spec: StudentSpec, flat: dict, dtype: str, prefix: str = "") -> list[Tensor]:
    """`flat`: the student's parameters as {'stage_0/block_0/attn/q/kernel': array}; `prefix` is put before
    every torch name."""
    arch, p, src = spec.arch, prefix, _Source(flat)
    kernel = src["patch_kernel"]  # (pt, ph, pw, 3, d) -> Conv3d (d, 3, pt, ph, pw)
    out = [Tensor(f"{p}patch_embed.weight", (kernel.shape[4], kernel.shape[3], *kernel.shape[:3]), dtype,
                  lambda: np.asarray(kernel).transpose(4, 3, 0, 1, 2)),
           _plain(f"{p}patch_embed.bias", src["patch_bias"], dtype),
           _plain(f"{p}pos_spatial", src["pos_spatial"], dtype),
           _plain(f"{p}pos_temporal", src["pos_temporal"], dtype)]
    for i, (num_blocks, stride) in enumerate(arch.stages):
        for j in range(num_blocks):
            ours, theirs = f"stage_{i}/block_{j}", f"{p}stages.{i}.blocks.{j}"
            out += _norm(f"{theirs}.norm1", f"{ours}/norm1", src, dtype)
            for name in ("q", "k", "v", "out"):
                out += _linear(f"{theirs}.attn.{name}", f"{ours}/attn/{name}", src, dtype)
            out += _norm(f"{theirs}.norm_t", f"{ours}/norm_t", src, dtype)
            tk = src[f"{ours}/tconv/kernel"]  # (k, d) -> Conv1d (d, 1, k)
            out += [Tensor(f"{theirs}.tconv.conv.weight", (tk.shape[1], 1, tk.shape[0]), dtype,
                           lambda tk=tk: np.asarray(tk).T[:, None, :]),
                    _plain(f"{theirs}.tconv.conv.bias", src[f"{ours}/tconv/bias"], dtype)]
            out += _norm(f"{theirs}.norm2", f"{ours}/norm2", src, dtype)
            out += _linear(f"{theirs}.mlp.fc1", f"{ours}/mlp/fc1", src, dtype)
            out += _linear(f"{theirs}.mlp.fc2", f"{ours}/mlp/fc2", src, dtype)
        if tuple(stride) != (1, 1, 1):
            dk = src[f"stage_{i}/down/kernel"]  # (st, sh, sw, d) -> Conv3d (d, 1, st, sh, sw)
            out += [Tensor(f"{p}stages.{i}.down.weight", (dk.shape[3], 1, *dk.shape[:3]), dtype,
                           lambda dk=dk: np.asarray(dk).transpose(3, 0, 1, 2)[:, None]),
                    _plain(f"{p}stages.{i}.down.bias", src[f"stage_{i}/down/bias"], dtype)]
    out += _norm(f"{p}final_norm", "final_norm", src, dtype)
    out += _linear(f"{p}head", "head", src, dtype)
    src.check_all_read()
    return out
