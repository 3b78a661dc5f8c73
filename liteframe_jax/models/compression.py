"""Spatio-temporal compression of teacher tokens: weighted average pooling (WAP) over (t, h, w) windows.

`compress(tokens, window, weighting)` maps a token grid (B, T, H, W, C) to (B, T/wt, H/wh, W/ww, C). Each
output token is a convex combination of the tokens in its window:
- 'uniform': plain average pooling;
- 'gaussian': fixed weights that favour the window's centre (a separable Gaussian of width `sigma`, in
  window-position units), so the pooled token stays closer to its central patch;
- 'norm': content-adaptive weights proportional to each token's L2 norm, so salient (high-norm) tokens
  dominate their window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS = ("uniform", "gaussian", "norm")


def output_grid(grid: tuple[int, int, int], window: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T, H, W) -> the compressed (T', H', W'); an error if a window does not tile the grid."""
    if len(window) != 3 or any(int(w) < 1 for w in window):
        raise ValueError(f"compression window must be three positive ints (t, h, w), got {window}")
    for name, size, w in zip("THW", grid, window):
        if size % w:
            raise ValueError(f"token grid {tuple(grid)} (T, H, W) is not divisible by the compression window "
                             f"{tuple(window)}: {name}={size} % {w} != 0")
    return tuple(size // w for size, w in zip(grid, window))


def gaussian_window(window: tuple[int, int, int], sigma: float) -> jax.Array:
    """Normalised (wt, wh, ww) weights centred on the window's middle."""
    axes = []
    for w in window:
        pos = jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2
        axes.append(jnp.exp(-0.5 * jnp.square(pos / sigma)))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return weights / weights.sum()


def compress(tokens: jax.Array, window: tuple[int, int, int], weighting: str = "uniform",
             sigma: float = 1.0) -> jax.Array:
    """Weighted average pooling of (B, T, H, W, C) tokens over non-overlapping (wt, wh, ww) windows."""
    if tokens.ndim != 5:
        raise ValueError(f"compress expects tokens of shape (B, T, H, W, C), got {tokens.shape}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown WAP weighting {weighting!r}; choose one of {WEIGHTINGS}")
    b, t, h, w, c = tokens.shape
    (t2, h2, w2), (wt, wh, ww) = output_grid((t, h, w), window), tuple(int(x) for x in window)
    x = tokens.astype(jnp.float32).reshape(b, t2, wt, h2, wh, w2, ww, c)
    if weighting == "uniform":
        return x.mean(axis=(2, 4, 6))
    if weighting == "gaussian":
        weights = gaussian_window((wt, wh, ww), sigma)[None, None, :, None, :, None, :, None]
        return (x * weights).sum(axis=(2, 4, 6))
    norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
    weights = norms / jnp.maximum(norms.sum(axis=(2, 4, 6), keepdims=True), 1e-12)
    return (x * weights).sum(axis=(2, 4, 6))
