"""`load_pretrained(path)`: a Hugging Face folder's `config.json` `model_type` (or a big_vision `.npz` file) ->
the loader that builds and fills the matching module. A new architecture is its mapping table (a file in this
package) plus one entry here."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from liteframe_jax.convert import big_vision, hf_folder, internvl, qwen2, siglip


def _internvl(path, *, dtype, attn_impl, mlp_kernel, mesh, image_size=None, use_head=None, feature_layer=None):
    if use_head:
        raise ValueError(f"{path}: use_head applies to SigLIP towers; an InternVL model has no pooling head")
    return internvl.load_internvl(path, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh,
                                  image_size=image_size, feature_layer=feature_layer)


def _siglip(path, *, dtype, attn_impl, mlp_kernel, mesh, image_size=None, use_head=None, feature_layer=None):
    return siglip.load_siglip(path, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh,
                              image_size=image_size, use_head=use_head,
                              feature_layer=-1 if feature_layer is None else feature_layer)


def _qwen2(path, *, dtype, attn_impl, mlp_kernel, mesh, image_size=None, use_head=None, feature_layer=None):
    if mlp_kernel != "xla":
        raise ValueError(f"{path}: mlp_kernel {mlp_kernel!r} applies to vision towers; a qwen2 model "
                         "has no fused MLP kernel (use 'xla')")
    if image_size is not None or use_head is not None or feature_layer is not None:
        raise ValueError(f"{path}: image_size / use_head / feature_layer apply to vision towers, not to a qwen2 "
                         "model")
    return qwen2.load_qwen2(path, dtype=dtype, attn_impl=attn_impl)


_VISION = "call(pixels NHWC) -> last_hidden_state; `.features(pixels, 'vit')` -> the token grid"

# model_type -> (loader, what call() of the returned module gives)
LOADERS: dict[str, tuple[Callable, str]] = {
    "internvl_vision": (_internvl, "an InternVisionTower without head; call(pixels NHWC) -> last_hidden_state"),
    "internvl": (_internvl, "the vision tower and InternVL3 projector of a whole InternVL model; "
                            "`.features(pixels, 'projector')` -> the visual tokens"),
    "siglip_vision_model": (_siglip, f"a SiglipTower; {_VISION}; `.pooled` with the head"),
    "siglip": (_siglip, f"the vision tower of a whole SigLIP model (SigLIP2 at fixed resolution too); {_VISION}"),
    "siglip2_vision_model": (_siglip, f"a SiglipTower (SigLIP2, one square grid per image); {_VISION}"),
    "siglip2": (_siglip, f"the vision tower of a whole SigLIP2 (NaFlex) model; {_VISION}"),
    "qwen2": (_qwen2, "Qwen2ForCausalLM; call(token ids) -> logits, `.hidden` / `.logits` / `.init_cache`"),
}


def load_pretrained(path: str, *, dtype=jnp.float32, attn_impl: str | None = None, mlp_kernel: str = "xla",
                    mesh=None, image_size: int | None = None, use_head: bool | None = None,
                    feature_layer: int | None = None):
    """A Flax NNX module with the checkpoint's weights, chosen by `config.json`'s `model_type` (see LOADERS), or
    a SiglipTower from a big_vision `.npz` file.

    `mlp_kernel` ('xla' or 'pallas', `layers.Mlp`) applies to the vision towers' MLPs, run per device of
    `mesh`. `image_size` runs a vision tower at another input size, its position table resampled as the
    reference model does; `use_head=False` leaves out a SigLIP tower's attention-pooling head;
    `feature_layer` picks the hidden state a tower's `features` reads (unset: the checkpoint's own choice,
    InternVL's `vision_feature_layer`, the last layer for SigLIP).
    """
    if str(path).endswith(".npz"):
        return big_vision.load_big_vision(path, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh,
                                          image_size=image_size, use_head=use_head,
                                          feature_layer=-1 if feature_layer is None else feature_layer)
    model_type = hf_folder.read_config(path).get("model_type")
    if model_type not in LOADERS:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported by load_pretrained "
                         f"(supported: {', '.join(sorted(LOADERS))}, or a big_vision SigLIP .npz file)")
    loader, _ = LOADERS[model_type]
    return loader(path, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh, image_size=image_size,
                  use_head=use_head, feature_layer=feature_layer)
