"""Flax NNX models: teacher towers, compression, the LiteFrame student, Qwen2 and the Video LLM.

Weights from files are the business of `liteframe_jax.convert` (`load_pretrained`)."""
