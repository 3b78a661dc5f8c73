"""Spatio-temporal compression of teacher tokens to a fixed budget, chosen by `method` (`reduce`).

Every method maps a token grid (B, T, H, W, C) to (B, T/wt, H/wh, W/ww, C), the grid the student predicts.

'wap' (the paper's), `compress(tokens, window, weighting)`: weighted average pooling over non-overlapping
(wt, wh, ww) windows. Each output token is a convex combination of the tokens in its window:
- 'uniform': plain average pooling;
- 'gaussian': fixed weights that favour the window's centre (a separable Gaussian of width `sigma`, in
  window-position units), so the pooled token stays closer to its central patch;
- 'norm': content-adaptive weights proportional to each token's L2 norm, so salient (high-norm) tokens
  dominate their window.

The ablations reduce each group of `wt` frames (wt * H * W tokens) to the same H' * W' tokens, so the time
order survives; within a group the kept tokens are listed in their original (t, h, w) order and laid out on
the (H', W') grid in that order (a position in the output no longer means one place in the frame):
- 'tome': token merging (ToMe's bipartite soft matching): tokens alternate between two sets, each token of
  the first set finds its most similar (cosine) token of the second, and the most similar pairs are merged
  (size-weighted means), round after round, until the budget is met;
- 'topk': the budget's most salient tokens by L2 norm, unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS = ("uniform", "gaussian", "norm")
METHODS = ("wap", "tome", "topk")


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


def _groups(tokens: jax.Array, window: tuple[int, int, int]) -> tuple[jax.Array, tuple[int, int, int], int]:
    """(B, T, H, W, C) -> (B * T', wt * H * W, C) token groups, the output grid, and tokens kept per group."""
    if tokens.ndim != 5:
        raise ValueError(f"token reduction expects tokens of shape (B, T, H, W, C), got {tokens.shape}")
    b, t, h, w, c = tokens.shape
    grid = output_grid((t, h, w), window)
    groups = tokens.astype(jnp.float32).reshape(b * grid[0], (t // grid[0]) * h * w, c)
    return groups, grid, grid[1] * grid[2]


def _as_grid(kept: jax.Array, batch: int, grid: tuple[int, int, int]) -> jax.Array:
    return kept.reshape(batch, *grid, kept.shape[-1])


def top_k(tokens: jax.Array, window: tuple[int, int, int]) -> jax.Array:
    """Per group of wt frames, the H'*W' tokens of largest L2 norm, in their original order."""
    groups, grid, keep = _groups(tokens, window)
    norms = jnp.linalg.norm(groups, axis=-1)
    index = jnp.sort(jax.lax.top_k(norms, keep)[1], axis=-1)  # the original order among the kept
    return _as_grid(jnp.take_along_axis(groups, index[..., None], axis=1), tokens.shape[0], grid)


def _merge_round(x, size, order, r: int):
    """One round of bipartite soft matching on (G, N, C): the r most similar (first-set, second-set) pairs
    merge into the second-set token. Returns the N - r tokens left, their sizes and original positions."""
    a, b = x[:, ::2], x[:, 1::2]
    unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    scores = jnp.einsum("gac,gbc->gab", unit(a), unit(b), precision="highest")
    best, match = scores.max(axis=-1), scores.argmax(axis=-1)  # each first-set token's closest partner
    ranked = jnp.argsort(-best, axis=-1)
    merged, kept = ranked[:, :r], ranked[:, r:]
    take = lambda v, i: jnp.take_along_axis(v, i[..., None] if v.ndim == 3 else i, axis=1)
    size_a, size_b = size[:, ::2], size[:, 1::2]
    dst = take(match, merged)
    g = jnp.arange(x.shape[0])[:, None]
    # size-weighted sums: a merged token adds its (feature * size) and its size to its partner
    b_sum = (b * size_b[..., None]).at[g, dst].add(take(a, merged) * take(size_a, merged)[..., None])
    b_size = size_b.at[g, dst].add(take(size_a, merged))
    b_new = b_sum / b_size[..., None]
    x = jnp.concatenate([take(a, kept), b_new], axis=1)
    size = jnp.concatenate([take(size_a, kept), b_size], axis=1)
    order = jnp.concatenate([take(order[:, ::2], kept), order[:, 1::2]], axis=1)
    return x, size, order


def tome(tokens: jax.Array, window: tuple[int, int, int]) -> jax.Array:
    """Per group of wt frames, ToMe merging down to H'*W' tokens, listed in the order of their positions."""
    groups, grid, keep = _groups(tokens, window)
    n = groups.shape[1]
    x, size = groups, jnp.ones(groups.shape[:2], jnp.float32)
    order = jnp.broadcast_to(jnp.arange(n), groups.shape[:2])
    while n > keep:  # shapes are static: the rounds unroll at trace time
        r = min(n - keep, (n + 1) // 2)  # at most the first set's size (every other token)
        x, size, order = _merge_round(x, size, order, r)
        n -= r
    return _as_grid(jnp.take_along_axis(x, jnp.argsort(order, axis=-1)[..., None], axis=1), tokens.shape[0], grid)


def reduce(tokens: jax.Array, window: tuple[int, int, int], method: str = "wap", weighting: str = "uniform",
           sigma: float = 1.0) -> jax.Array:
    """The configured compression (`compression.method`; `weighting` and `sigma` are WAP's)."""
    if method == "wap":
        return compress(tokens, window, weighting, sigma)
    if method == "tome":
        return tome(tokens, window)
    if method == "topk":
        return top_k(tokens, window)
    raise ValueError(f"unknown compression method {method!r}; choose one of {METHODS}")
