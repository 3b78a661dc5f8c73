"""`load_pretrained(path)`: a Hugging Face folder's `config.json` `model_type` -> the loader that builds and fills
the matching module. A new architecture is its mapping table (a file in this package) plus one entry here."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from liteframe_jax.convert import hf_folder, internvl, qwen2


def _internvl(path, *, dtype, attn_impl, mlp_kernel, mesh):
    return internvl.load_internvl(path, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh)


def _qwen2(path, *, dtype, attn_impl, mlp_kernel, mesh):
    if mlp_kernel != "xla":
        raise ValueError(f"{path}: mlp_kernel {mlp_kernel!r} applies to InternViT towers; a qwen2 model "
                         "has no fused MLP kernel (use 'xla')")
    return qwen2.load_qwen2(path, dtype=dtype, attn_impl=attn_impl)


# model_type -> (loader, what call() of the returned module gives)
LOADERS: dict[str, tuple[Callable, str]] = {
    "internvl_vision": (_internvl, "an InternVisionTower without head; call(pixels NHWC) -> last_hidden_state"),
    "internvl": (_internvl, "the vision tower and InternVL3 projector of a whole InternVL model; "
                            "`.features(pixels, 'projector')` -> the visual tokens"),
    "qwen2": (_qwen2, "Qwen2ForCausalLM; call(token ids) -> logits, `.hidden` / `.logits` / `.init_cache`"),
}


def load_pretrained(path: str, *, dtype=jnp.float32, attn_impl: str | None = None, mlp_kernel: str = "xla",
                    mesh=None):
    """A Flax NNX module with the checkpoint's weights, chosen by `config.json`'s `model_type` (see LOADERS).

    `mlp_kernel` ('xla' or 'pallas', `layers.Mlp`) applies to the InternViT MLPs, run per device of `mesh`.
    """
    model_type = hf_folder.read_config(path).get("model_type")
    if model_type not in LOADERS:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported by load_pretrained "
                         f"(supported: {', '.join(sorted(LOADERS))})")
    loader, _ = LOADERS[model_type]
    return loader(path, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh)
