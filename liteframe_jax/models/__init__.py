"""Flax NNX models: teacher towers, compression, the LiteFrame student, and `load_pretrained`."""

from liteframe_jax.models.registry import load_pretrained

__all__ = ["load_pretrained"]
