"""The CTD teacher: a frozen vision tower, loaded from its files or randomly initialised on purpose (demo)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from liteframe_jax.convert.registry import load_pretrained
from liteframe_jax.models.internvit import InternVisionTower, InternVitConfig, InternVLHeadConfig
from liteframe_jax.models.siglip import SiglipTower, SiglipVitConfig


def build_teacher(tcfg, dtype, attn_impl, mlp_kernel="xla", mesh=None) -> tuple[nnx.Module, str]:
    """(tower, description). 'random' is a deliberate choice (demo); anything unset is an error.

    The tower is an InternVisionTower or a SiglipTower: both give `grid_shape(output)`, `features(pixels,
    output)` and `image_size`, which is all CTD reads."""
    size, layer = tcfg.get("image_size"), tcfg.get("feature_layer")
    if tcfg.init == "random":
        kind = tcfg.get("kind", "internvit")
        options = dict(rngs=nnx.Rngs(1234), feature_layer=-1 if layer is None else layer, dtype=dtype,
                       attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh)
        if kind == "internvit":
            vit = InternVitConfig(**tcfg.vit.to_dict())
            if size is not None and size != vit.image_size:
                vit = vit.at_image_size(size)
            head = InternVLHeadConfig(**tcfg.head.to_dict()) if tcfg.head is not None else None
            tower = InternVisionTower(vit, head, **options)
        elif kind == "siglip":
            vit = SiglipVitConfig(**{**tcfg.vit.to_dict(), "use_head": False})
            tower = SiglipTower(vit if size is None else dataclasses.replace(vit, image_size=size), **options)
        else:
            raise ValueError(f"teacher.kind {kind!r} is not a teacher; choose 'internvit' or 'siglip'")
        return tower, f"RANDOMLY INITIALISED {kind} teacher (demo): targets are features of an untrained tower"
    if not tcfg.init:
        raise ValueError("teacher.init is not set: give a Hugging Face InternVL or SigLIP folder "
                         "(--config.teacher.init=/path/to/InternVL3-8B-hf), a big_vision SigLIP .npz, or 'random' "
                         "on purpose")
    tower = load_pretrained(tcfg.init, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh,
                            image_size=size, use_head=False, feature_layer=layer)
    return tower, f"teacher loaded from {tcfg.init} ({type(tower).__name__}, {tower.image_size} px)"
