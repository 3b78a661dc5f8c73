"""liteframe_jax: Compressed Token Distillation and Language Model Adaptation for LiteFrame video encoders."""

__version__ = "0.1.0"
