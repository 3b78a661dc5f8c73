"""Losses. CTD: MSE against outlier-clipped targets plus a cosine term, weights from config."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def clip_outliers(target: jax.Array, num_sigma: float) -> jax.Array:
    """Clip each channel of (B, N, C) targets to mean +- num_sigma * std over the batch's tokens.

    Large vision encoders carry a few huge-activation channels/tokens; unclipped, they dominate the MSE.
    Statistics are taken over batch and tokens so every channel keeps its own scale.
    """
    mean = target.mean(axis=(0, 1), keepdims=True)
    std = target.std(axis=(0, 1), keepdims=True)
    return jnp.clip(target, mean - num_sigma * std, mean + num_sigma * std)


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Per-token cosine similarity over the last axis."""
    dot = (a * b).sum(-1)
    return dot / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)


def ctd_loss(pred: jax.Array, target: jax.Array, *, mse_weight: float, cosine_weight: float,
             clip_sigma: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """pred, target: (B, N, C). Returns (loss, {'mse', 'cosine'}), all float32."""
    pred, target = pred.astype(jnp.float32), jax.lax.stop_gradient(target.astype(jnp.float32))
    if clip_sigma and clip_sigma > 0:
        target = clip_outliers(target, clip_sigma)
    mse = jnp.square(pred - target).mean()
    cosine = cosine_similarity(pred, target).mean()
    return mse_weight * mse + cosine_weight * (1.0 - cosine), {"mse": mse, "cosine": cosine}
