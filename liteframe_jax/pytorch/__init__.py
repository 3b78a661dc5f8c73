"""Exported LiteFrame models in plain PyTorch (no JAX): `LiteFrameEncoder` (torch only) and
`LiteFrameVideoLLM` (torch and transformers)."""

from liteframe_jax.pytorch.encoder import LiteFrameEncoder

__all__ = ["LiteFrameEncoder", "LiteFrameVideoLLM"]


def __getattr__(name):
    if name == "LiteFrameVideoLLM":  # torch alone is enough for the encoder; the Video LLM needs transformers
        from liteframe_jax.pytorch.video_llm import LiteFrameVideoLLM
        return LiteFrameVideoLLM
    raise AttributeError(name)
