"""SigLIP / SigLIP2 Hugging Face folders (`siglip_vision_model`, `siglip`, `siglip2_vision_model`, `siglip2`) ->
our SiglipTower.

Every option of `transformers.SiglipVisionConfig` / `Siglip2VisionConfig` is read here or has no effect on a
frozen inference pass (dropout); a value we cannot run is an error naming it. A whole `siglip` / `siglip2`
model contributes its vision tower; its text tower and logit scale/bias are not read.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liteframe_jax.convert import hf_folder, mapping
from liteframe_jax.core.tree import pure_dict
from liteframe_jax.models.layers import ACTIVATIONS
from liteframe_jax.models.siglip import SiglipTower, SiglipVitConfig

VISION_TYPES = {"siglip_vision_model": "siglip", "siglip2_vision_model": "siglip2"}
WHOLE_TYPES = {"siglip": "siglip", "siglip2": "siglip2"}
NO_EFFECT_OPTIONS = ("attention_dropout",)  # inference: dropout is off


def vit_config_from_hf(d: dict, family: str, image_size: int | None = None) -> SiglipVitConfig:
    """`family` 'siglip' (image_size in the config) or 'siglip2' (num_patches: a square table of that many).

    `image_size` runs the tower at another input size than the table's, resampling the table as the
    reference does."""
    act = d.get("hidden_act", "gelu_pytorch_tanh")
    if act not in ACTIVATIONS:
        raise ValueError(f"SigLIP vision config: hidden_act={act!r} is not supported")
    patch = hf_folder.square(d.get("patch_size", 16), "patch_size", "SigLIP vision")
    if family == "siglip":
        native = hf_folder.square(d.get("image_size", 224), "image_size", "SigLIP vision")
        grid, resize = native // patch, "bicubic"
    else:
        num_patches = int(d.get("num_patches", 256))
        grid, resize = math.isqrt(num_patches), "bilinear_antialias"
        if grid * grid != num_patches:
            raise ValueError(f"SigLIP2 vision config: num_patches={num_patches} is not a square grid")
    if image_size is not None and image_size < patch:
        raise ValueError(f"SigLIP: image_size {image_size} is smaller than one patch ({patch})")
    if family == "siglip" and image_size is None:
        image_size = native  # the checkpoint's own input size, which may end in a partial patch (384 at 14)
    return SiglipVitConfig(
        hidden_size=d.get("hidden_size", 768), num_layers=d.get("num_hidden_layers", 12),
        num_heads=d.get("num_attention_heads", 12), intermediate_size=d.get("intermediate_size", 3072),
        hidden_act=act, layer_norm_eps=d.get("layer_norm_eps", 1e-6),
        image_size=image_size or grid * patch, patch_size=patch, num_channels=d.get("num_channels", 3),
        position_grid=grid, position_resize=resize, use_head=bool(d.get("vision_use_head", True)))


def _patch_from_linear(cfg: SiglipVitConfig):
    """SigLIP2's Linear over (row, column, channel)-flattened patches -> the (p, p, c, d) kernel."""
    p, c = cfg.patch_size, cfg.num_channels
    return lambda w: np.asarray(w).T.reshape(p, p, c, -1)


def _table(prefix: str, cfg: SiglipVitConfig, family: str):
    p = prefix.replace(".", r"\.")
    L = r"encoder\.layers\.(\d+)\."
    g = cfg.position_grid
    patch = (mapping.conv2d_hwio if family == "siglip" else _patch_from_linear(cfg))
    table = [
        (p + r"embeddings\.patch_embedding\.weight", "patch_kernel", patch),
        (p + r"embeddings\.patch_embedding\.bias", "patch_bias", mapping.identity),
        (p + r"embeddings\.position_embedding\.weight", "pos_embedding", lambda w: np.asarray(w).reshape(g, g, -1)),
        (p + r"post_layernorm\.weight", "final_norm/scale", mapping.identity),
        (p + r"post_layernorm\.bias", "final_norm/bias", mapping.identity),
    ]
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "out_proj")):
        table += [(p + L + rf"self_attn\.{theirs}\.weight", f"block_{{0}}/{ours}/kernel", mapping.linear),
                  (p + L + rf"self_attn\.{theirs}\.bias", f"block_{{0}}/{ours}/bias", mapping.identity)]
    for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
        table += [(p + L + rf"{theirs}\.weight", f"block_{{0}}/{ours}/scale", mapping.identity),
                  (p + L + rf"{theirs}\.bias", f"block_{{0}}/{ours}/bias", mapping.identity)]
    for fc in ("fc1", "fc2"):
        table += [(p + L + rf"mlp\.{fc}\.weight", f"block_{{0}}/mlp/{fc}/kernel", mapping.linear),
                  (p + L + rf"mlp\.{fc}\.bias", f"block_{{0}}/mlp/{fc}/bias", mapping.identity)]
    if cfg.use_head:
        h = p + r"head\."
        table += [(h + r"probe", "head/probe", mapping.identity),
                  (h + r"attention\.out_proj\.weight", "head/out/kernel", mapping.linear),
                  (h + r"attention\.out_proj\.bias", "head/out/bias", mapping.identity),
                  (h + r"layernorm\.weight", "head/norm/scale", mapping.identity),
                  (h + r"layernorm\.bias", "head/norm/bias", mapping.identity)]
        for fc in ("fc1", "fc2"):
            table += [(h + rf"mlp\.{fc}\.weight", f"head/mlp/{fc}/kernel", mapping.linear),
                      (h + rf"mlp\.{fc}\.bias", f"head/mlp/{fc}/bias", mapping.identity)]
    return table


def _split_in_proj(tensors: dict, prefix: str) -> dict:
    """torch.nn.MultiheadAttention keeps q, k, v as one (3d, d) `in_proj`: split it into three projections."""
    out = dict(tensors)
    for kind in ("weight", "bias"):
        name = f"{prefix}head.attention.in_proj_{kind}"
        if name in out:
            q, k, v = np.split(np.asarray(out.pop(name)), 3, axis=0)
            for short, value in zip("qkv", (q, k, v)):
                out[f"{prefix}head.attention.{short}_proj.{kind}"] = value
    return out


def _head_qkv_table(prefix: str):
    h = prefix.replace(".", r"\.") + r"head\.attention\."
    table = []
    for short in "qkv":
        table += [(h + rf"{short}_proj\.weight", f"head/{short}/kernel", mapping.linear),
                  (h + rf"{short}_proj\.bias", f"head/{short}/bias", mapping.identity)]
    return table


def build_tower(cfg: SiglipVitConfig, params: dict, *, feature_layer: int, dtype, attn_impl, mlp_kernel,
                mesh) -> SiglipTower:
    tower = nnx.eval_shape(lambda: SiglipTower(cfg, rngs=nnx.Rngs(0), feature_layer=feature_layer, dtype=dtype,
                                               attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh))
    graphdef, _ = nnx.split(tower)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def abstract_shapes(cfg: SiglipVitConfig) -> dict:
    return pure_dict(nnx.split(nnx.eval_shape(lambda: SiglipTower(cfg, rngs=nnx.Rngs(0))))[1])


def load_siglip(path: str, *, dtype=jnp.float32, attn_impl: str | None = None, mlp_kernel: str = "xla",
                mesh=None, image_size: int | None = None, feature_layer: int = -1,
                use_head: bool | None = None) -> SiglipTower:
    """Build and load a SiglipTower from a SigLIP / SigLIP2 HF folder (vision tower alone or a whole model).

    `use_head=False` leaves out the attention-pooling head of a checkpoint that has one (CTD reads the token
    grid, not the pooled embedding); `None` keeps what the config says."""
    config = hf_folder.read_config(path)
    model_type = config.get("model_type")
    if model_type in VISION_TYPES:
        family, vision, prefix = VISION_TYPES[model_type], config, ""
    elif model_type in WHOLE_TYPES:
        family, vision = WHOLE_TYPES[model_type], config.get("vision_config") or {}
        prefix = None  # "vision_model." as transformers saves it, found from the names below
    else:
        raise ValueError(f"{path}: model_type {model_type!r} is not a SigLIP model "
                         f"(expected one of {sorted({**VISION_TYPES, **WHOLE_TYPES})})")
    cfg = vit_config_from_hf(vision, family, image_size)
    keep = (lambda n: True) if prefix == "" else (lambda n: n.startswith(("vision_model.", "model.vision_model.")))
    tensors = hf_folder.read_tensors(path, keep=keep)
    if prefix is None:
        prefix = "model.vision_model." if any(n.startswith("model.vision_model.") for n in tensors) else "vision_model."
    elif any(n.startswith("vision_model.") for n in tensors):  # SiglipVisionModel saves its tower under this name
        prefix = "vision_model."
    has_head = any(n.startswith(prefix + "head.") for n in tensors)
    if cfg.use_head and not has_head:
        raise ValueError(f"{path}: vision_use_head is true but the checkpoint holds no {prefix}head.* tensors")
    keep_head = cfg.use_head if use_head is None else use_head
    if keep_head and not cfg.use_head:
        raise ValueError(f"{path}: use_head=True, but this checkpoint has no attention-pooling head")
    cfg = dataclasses.replace(cfg, use_head=keep_head)
    tensors = _split_in_proj(tensors, prefix)
    table = _table(prefix, cfg, family) + (_head_qkv_table(prefix) if keep_head else [])
    params = mapping.apply_table(table, tensors, abstract_shapes(cfg), source=path,
                                 ignore=lambda n: not keep_head and n.startswith(prefix + "head."))
    return build_tower(cfg, params, feature_layer=feature_layer, dtype=dtype, attn_impl=attn_impl,
                       mlp_kernel=mlp_kernel, mesh=mesh)
