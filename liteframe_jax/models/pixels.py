"""uint8 frames -> the normalised floats an encoder takes (per-channel mean and std of 0..1 pixels)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalise(frames_uint8: jax.Array, mean, std, dtype) -> jax.Array:
    x = frames_uint8.astype(jnp.float32) / 255.0
    return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)
