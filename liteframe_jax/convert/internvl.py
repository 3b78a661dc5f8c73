"""InternVL (Hugging Face `internvl_vision` / `internvl`) configs and weights -> our InternVisionTower.

Every option of `transformers.InternVLVisionConfig` is either honoured or rejected here, by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.convert import hf_folder, mapping
from liteframe_jax.core.tree import pure_dict
from liteframe_jax.models.internvit import InternVisionTower, InternVitConfig, InternVLHeadConfig
from liteframe_jax.models.layers import ACTIVATIONS

# Options that change nothing in a frozen, inference-mode forward pass (dropout), or only matter for
# initialisation / bookkeeping / masked-image-modelling inputs we never pass (a mask token is then unused).
# Everything else of InternVLVisionConfig is read by `vit_config_from_hf` or rejected there.
NO_EFFECT_OPTIONS = ("hidden_dropout_prob", "attention_dropout", "projection_dropout", "use_mask_token")


def vit_config_from_hf(d: dict) -> InternVitConfig:
    if d.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise ValueError(f"InternVL vision config: hidden_act={d['hidden_act']!r} is not supported")
    if d.get("norm_type", "layer_norm") not in ("layer_norm", "rms_norm"):
        raise ValueError(f"InternVL vision config: norm_type={d['norm_type']!r} is not supported")
    return InternVitConfig(
        hidden_size=d.get("hidden_size", 1024), num_layers=d.get("num_hidden_layers", 24),
        num_heads=d.get("num_attention_heads", 16), intermediate_size=d.get("intermediate_size", 4096),
        hidden_act=d.get("hidden_act", "gelu"), norm_type=d.get("norm_type", "layer_norm"),
        layer_norm_eps=d.get("layer_norm_eps", 1e-6),
        image_size=hf_folder.square(d.get("image_size", 448), "image_size", "InternVL vision"),
        patch_size=hf_folder.square(d.get("patch_size", 14), "patch_size", "InternVL vision"),
        num_channels=d.get("num_channels", 3),
        attention_bias=d.get("attention_bias", False), use_qk_norm=d.get("use_qk_norm", False),
        use_absolute_position_embeddings=d.get("use_absolute_position_embeddings", True),
        layer_scale_init_value=d.get("layer_scale_init_value", 0.1),
        use_mean_pooling=d.get("use_mean_pooling", True), initializer_range=d.get("initializer_range", 0.02))


def head_config_from_hf(d: dict) -> tuple[InternVLHeadConfig, int]:
    """The projector head and the vision feature layer of a whole `internvl` config."""
    strategy = d.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ValueError(f"InternVL config: vision_feature_select_strategy={strategy!r} is not supported "
                         "(only 'default', which drops the CLS token, gives a square token grid)")
    layer = d.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ValueError(f"InternVL config: a list vision_feature_layer={layer} is not supported")
    ratio = float(d.get("downsample_ratio", 0.5))
    if abs(1 / ratio - round(1 / ratio)) > 1e-6:
        raise ValueError(f"InternVL config: downsample_ratio={ratio} is not 1/integer")
    act = d.get("projector_hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"InternVL config: projector_hidden_act={act!r} is not supported")
    text = d.get("text_config") or {}
    out = text.get("hidden_size")
    if out is None:
        raise ValueError("InternVL config: text_config.hidden_size is missing (it sets the projector width)")
    return InternVLHeadConfig(downsample_ratio=ratio, out_features=int(out), act=act), layer


def vit_table(prefix: str):
    p = prefix.replace(".", r"\.")
    L = r"encoder\.layer\.(\d+)\."
    return [
        (p + r"embeddings\.cls_token", "cls_token", mapping.identity),
        (p + r"embeddings\.position_embeddings", "pos_embedding", mapping.identity),
        (p + r"embeddings\.patch_embeddings\.projection\.weight", "patch_kernel", mapping.conv2d_hwio),
        (p + r"embeddings\.patch_embeddings\.projection\.bias", "patch_bias", mapping.identity),
        (p + L + r"attention\.q_proj\.weight", "block_{0}/attn/q/kernel", mapping.linear),
        (p + L + r"attention\.q_proj\.bias", "block_{0}/attn/q/bias", mapping.identity),
        (p + L + r"attention\.k_proj\.weight", "block_{0}/attn/k/kernel", mapping.linear),
        (p + L + r"attention\.k_proj\.bias", "block_{0}/attn/k/bias", mapping.identity),
        (p + L + r"attention\.v_proj\.weight", "block_{0}/attn/v/kernel", mapping.linear),
        (p + L + r"attention\.v_proj\.bias", "block_{0}/attn/v/bias", mapping.identity),
        (p + L + r"attention\.projection_layer\.weight", "block_{0}/attn/out/kernel", mapping.linear),
        (p + L + r"attention\.projection_layer\.bias", "block_{0}/attn/out/bias", mapping.identity),
        (p + L + r"attention\.q_norm\.weight", "block_{0}/attn/q_norm/scale", mapping.identity),
        (p + L + r"attention\.k_norm\.weight", "block_{0}/attn/k_norm/scale", mapping.identity),
        (p + L + r"layernorm_before\.weight", "block_{0}/norm1/scale", mapping.identity),
        (p + L + r"layernorm_before\.bias", "block_{0}/norm1/bias", mapping.identity),
        (p + L + r"layernorm_after\.weight", "block_{0}/norm2/scale", mapping.identity),
        (p + L + r"layernorm_after\.bias", "block_{0}/norm2/bias", mapping.identity),
        (p + L + r"lambda_1", "block_{0}/ls1", mapping.identity),
        (p + L + r"lambda_2", "block_{0}/ls2", mapping.identity),
        (p + L + r"mlp\.fc1\.weight", "block_{0}/mlp/fc1/kernel", mapping.linear),
        (p + L + r"mlp\.fc1\.bias", "block_{0}/mlp/fc1/bias", mapping.identity),
        (p + L + r"mlp\.fc2\.weight", "block_{0}/mlp/fc2/kernel", mapping.linear),
        (p + L + r"mlp\.fc2\.bias", "block_{0}/mlp/fc2/bias", mapping.identity),
        (p + r"layernorm\.weight", "final_norm/scale", mapping.identity),
        (p + r"layernorm\.bias", "final_norm/bias", mapping.identity),
    ]


def projector_table(prefix: str):
    p = prefix.replace(".", r"\.") + r"multi_modal_projector\."
    return [
        (p + r"layer_norm\.weight", "norm/scale", mapping.identity),
        (p + r"layer_norm\.bias", "norm/bias", mapping.identity),
        (p + r"linear_1\.weight", "fc1/kernel", mapping.linear),
        (p + r"linear_1\.bias", "fc1/bias", mapping.identity),
        (p + r"linear_2\.weight", "fc2/kernel", mapping.linear),
        (p + r"linear_2\.bias", "fc2/bias", mapping.identity),
    ]


def nest(table, under: str):
    return [(pattern, f"{under}/{template}", fn) for pattern, template, fn in table]


def load_internvl(path: str, *, dtype=jnp.float32, attn_impl: str | None = None,
                  mlp_kernel: str = "xla", mesh=None, image_size: int | None = None,
                  feature_layer: int | None = None) -> InternVisionTower:
    """Build and load an InternVisionTower from an `internvl_vision` or a whole `internvl` HF folder.

    `image_size` runs it at another input size, the position table resampled as transformers does;
    `feature_layer` replaces the config's `vision_feature_layer`."""
    cfg = hf_folder.read_config(path)
    model_type = cfg.get("model_type")
    if model_type == "internvl_vision":
        vit_cfg, head_cfg, layer, prefix = vit_config_from_hf(cfg), None, -1, ""
    elif model_type == "internvl":
        vit_cfg = vit_config_from_hf(cfg.get("vision_config") or {})
        head_cfg, layer = head_config_from_hf(cfg)
        prefix = None  # found from the tensor names below
    else:
        raise ValueError(f"{path}: model_type {model_type!r} is not an InternVL model "
                         "(expected 'internvl_vision' or 'internvl')")
    if feature_layer is not None:
        layer = feature_layer
    if image_size is not None and image_size != vit_cfg.image_size:
        try:
            vit_cfg = vit_cfg.at_image_size(image_size)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    tower = nnx.eval_shape(lambda: InternVisionTower(vit_cfg, head_cfg, rngs=nnx.Rngs(0), feature_layer=layer,
                                                     dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel,
                                                     mesh=mesh))
    graphdef, abstract = nnx.split(tower)
    shapes = pure_dict(abstract)
    is_vision = lambda n: "vision_tower." in n or "multi_modal_projector." in n
    tensors = hf_folder.read_tensors(path, keep=(lambda n: True) if prefix == "" else is_vision)
    if prefix is None:  # transformers saves "vision_tower.*" or, in newer layouts, "model.vision_tower.*"
        prefix = "model." if any(n.startswith("model.vision_tower.") for n in tensors) else ""
        table = nest(vit_table(prefix + "vision_tower."), "vit") + nest(projector_table(prefix), "projector")
    else:
        table = nest(vit_table(""), "vit")
    # HF keeps a mask token for masked-image modelling; inference without masks never reads it.
    params = mapping.apply_table(table, tensors, shapes, source=path, ignore=lambda n: n.endswith("mask_token"))
    params = jax.tree.map(jnp.asarray, params)
    return nnx.merge(graphdef, params)
