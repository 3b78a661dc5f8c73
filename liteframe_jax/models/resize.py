"""Resizing a learned position table to another token grid, as the reference models do it.

A ViT trained at one resolution runs at another by resampling its (h, w) table of position embeddings. The
resampling is linear in the table, so it is one (out, in) weight matrix per axis, built here in numpy from
the reference's own formula (so it is exact, not a look-alike from `jax.image`):
- 'bicubic': `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)` (SigLIP's and
  InternViT's `interpolate_pos_encoding`): the cubic convolution kernel with a = -0.75, half-pixel centres,
  taps beyond the border reading the border value;
- 'bilinear_antialias': `interpolate(mode='bilinear', align_corners=False, antialias=True)` (SigLIP2): a
  triangle filter widened by the scale when shrinking, weights renormalised to sum to one.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

METHODS = ("bicubic", "bilinear_antialias")
_CUBIC_A = -0.75  # torch's bicubic coefficient (not Keys' -0.5, which jax.image uses)


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _CUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def interpolation_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    """(out_size, in_size) float64 weights: output[i] = sum_j W[i, j] * input[j] along one axis."""
    if method not in METHODS:
        raise ValueError(f"unknown position-table resize {method!r}; choose one of {METHODS}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize a table of {in_size} positions to {out_size}")
    scale = in_size / out_size
    centre = (np.arange(out_size) + 0.5) * scale - 0.5  # source coordinate of each output position
    weights = np.zeros((out_size, in_size))
    if method == "bicubic":
        base = np.floor(centre).astype(np.int64)
        frac = centre - base
        for tap in (-1, 0, 1, 2):
            source = np.clip(base + tap, 0, in_size - 1)  # border taps read the border value
            np.add.at(weights, (np.arange(out_size), source), _cubic(frac - tap))
        return weights
    support = max(scale, 1.0)
    weights = np.clip(1 - np.abs(np.arange(in_size)[None, :] - centre[:, None]) / support, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_table(table: jnp.ndarray, out_hw: tuple[int, int], method: str) -> jnp.ndarray:
    """(h, w, d) position table -> (H, W, d), computed in float32."""
    h, w = table.shape[:2]
    if (h, w) == tuple(out_hw):
        return table
    rows = jnp.asarray(interpolation_matrix(h, out_hw[0], method), jnp.float32)
    cols = jnp.asarray(interpolation_matrix(w, out_hw[1], method), jnp.float32)
    return jnp.einsum("Hh,Ww,hwd->HWd", rows, cols, table.astype(jnp.float32),
                      precision="highest").astype(table.dtype)
