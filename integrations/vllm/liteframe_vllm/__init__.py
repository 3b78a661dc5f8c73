"""The LiteFrame Video LLM in vLLM. vLLM calls `register` in each of its processes (the `vllm.general_plugins`
entry point of this folder's pyproject.toml); it registers

- the architecture of an exported `hf/` folder's config.json, `LiteFrameForConditionalGeneration`, as
  `liteframe_vllm.model` (imported lazily: vLLM imports it where it builds the model);
- a video loader for the folder's `LiteFrameVideoProcessor` (`liteframe_vllm.video`): a video URL is decoded
  into the frames the model trained on, not vLLM's default 32 frames.

    vllm serve EXPORT/hf --trust-remote-code          (the folder's config and processor are its own code)
"""

ARCHITECTURE = "LiteFrameForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    from liteframe_vllm import video

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"liteframe_vllm.model:{ARCHITECTURE}")
    video.register()
