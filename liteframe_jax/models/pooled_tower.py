"""The post-hoc baseline's encoder: an image tower run on every frame, its tokens then compressed in
(frames, rows, columns) windows exactly as CTD makes its targets (models/compression.py).

It gives the LLM the same number and layout of visual tokens as the LiteFrame student that learnt to predict
those targets, at the tower's cost for every frame: the shape of Video LLM that the student replaces, trained
and asked the same way, so that the two can be compared at the same time to first token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.models import compression
from liteframe_jax.models.internvit import InternVisionTower


class PooledTower(nnx.Module):
    """Normalised clips (N, F, S, S, 3) -> (N, tokens per clip, width): each frame through `tower` at `output`,
    then `compression.reduce` over each clip's (F, h, w) token grid. The tower's weights sit under `tower/`."""

    def __init__(self, tower: InternVisionTower, *, output: str, window: tuple[int, int, int], method: str,
                 weighting: str, sigma: float):
        self.tower = tower
        self.output, self.window = output, tuple(window)
        self.method, self.weighting, self.sigma = method, weighting, float(sigma)

    def __call__(self, clips: jax.Array) -> jax.Array:
        n, f = clips.shape[:2]
        grid = self.tower.features(clips.reshape(n * f, *clips.shape[2:]), self.output)
        # pooled in float32, as CTD pools its targets
        grid = grid.astype(jnp.float32).reshape(n, f, *grid.shape[1:])
        pooled = compression.reduce(grid, self.window, self.method, self.weighting, self.sigma)
        return pooled.reshape(n, -1, pooled.shape[-1]).astype(clips.dtype)
