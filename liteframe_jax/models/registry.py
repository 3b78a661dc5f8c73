"""`load_pretrained(path)`: read a Hugging Face folder's config.json and build + load the matching module."""

from __future__ import annotations

import jax.numpy as jnp

from liteframe_jax.convert import hf_folder


def load_pretrained(path: str, *, dtype=jnp.float32, attn_impl: str | None = None, mlp_kernel: str = "xla",
                    mesh=None):
    """Returns a Flax NNX module with the checkpoint's weights, chosen by `config.json`'s `model_type`.

    - `internvl_vision`: an InternVisionTower without head; call(pixels NHWC) -> last_hidden_state.
    - `internvl`: the vision tower and InternVL3 projector of a whole InternVL model; call(pixels) ->
      last_hidden_state, `.features(pixels, 'projector')` -> the visual tokens.
    - `qwen2`: Qwen2ForCausalLM; call(token ids) -> logits, `.hidden` / `.logits` / `.init_cache` for generation.

    `mlp_kernel` ('xla' or 'pallas', `layers.Mlp`) applies to the InternViT MLPs, run per device of `mesh`;
    Qwen2's SwiGLU has no kernel.
    """
    model_type = hf_folder.read_config(path).get("model_type")
    if model_type in ("internvl_vision", "internvl"):
        from liteframe_jax.convert.internvl import load_internvl
        return load_internvl(path, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh)
    if model_type == "qwen2":
        if mlp_kernel != "xla":
            raise ValueError(f"{path}: mlp_kernel {mlp_kernel!r} applies to InternViT towers; a qwen2 model "
                             "has no fused MLP kernel (use 'xla')")
        from liteframe_jax.convert.qwen2 import load_qwen2
        return load_qwen2(path, dtype=dtype, attn_impl=attn_impl)
    raise ValueError(f"{path}: model_type {model_type!r} is not supported by load_pretrained "
                     "(supported: internvl_vision, internvl, qwen2)")
