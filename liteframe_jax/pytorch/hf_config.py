"""The configuration of a LiteFrame Video LLM as one Hugging Face folder. Imports transformers only; the export
copies this file into the folder as `configuration_liteframe.py` (transformers loads it with
`trust_remote_code=True` through config.json's `auto_map`).

It is a Qwen2 configuration (the LLM's fields at the top level, where `Qwen2ForCausalLM` reads them) with these
keys beside them, kept as attributes and written back by `to_dict`:

- `vision_config`: the student's `config.json` (architecture, output grid, pixel statistics)
- `projector_config`: the projector's `config.json`, or None where the student's width is the LLM's
- `video_token_id`: the placeholder whose embeddings the visual tokens replace
- `num_visual_tokens`: visual tokens per video (clips x tokens per clip)
"""

from __future__ import annotations

from transformers import Qwen2Config


class LiteFrameConfig(Qwen2Config):
    model_type = "liteframe"
