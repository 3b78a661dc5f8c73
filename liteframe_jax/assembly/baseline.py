"""The InternVL3 baseline from one whole Hugging Face `internvl` folder: its spec and its weights."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from liteframe_jax.assembly.specs import VideoLLMSpec
from liteframe_jax.convert import hf_folder
from liteframe_jax.convert.internvl import load_internvl
from liteframe_jax.convert.qwen2 import load_qwen2
from liteframe_jax.core.tree import pure_dict


def load_internvl_video_llm(spec: VideoLLMSpec, folder: str, *, dtype=jnp.float32, mlp_kernel: str = "xla",
                            video_token_id: int | None = None):
    """(graphdef, params) of InternVL3's tower + projector + Qwen2 as the Video LLM `spec`
    (`VideoLLMSpec.internvl(folder)`). `video_token_id` defaults to the folder's `image_token_id`."""
    if video_token_id is None:
        video_token_id = hf_folder.read_config(folder).get("image_token_id", 151667)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: spec.build(rngs=nnx.Rngs(0), dtype=dtype, mlp_kernel=mlp_kernel,
                                                              video_token_id=video_token_id)))
    params = {"encoder": pure_dict(nnx.state(load_internvl(folder))), "llm": pure_dict(nnx.state(load_qwen2(folder)))}
    return graphdef, params
