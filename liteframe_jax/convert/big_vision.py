"""big_vision SigLIP checkpoints (`.npz`, as `big_vision.utils.save_checkpoint` writes them) -> our SiglipTower.

The file holds flattened parameter names, `params/img/...` for the image tower (`img/...` without the
`params/` root in some exports). The tower is read in either of big_vision's layouts: one
`Transformer/encoderblock_{i}` group per layer, or one stacked `Transformer/encoderblock` group whose arrays
carry the layers on a leading axis (models trained with `scan=True`). The file has no config, so the shapes
give it: width and patch from the embedding kernel, the table from `pos_embedding`, heads from the attention
kernels' (width, heads, head_dim) layout, the MLP width, the layer count, and whether a `MAPHead_0` is there.
Activation (tanh GELU) and LayerNorm epsilon (1e-6) are big_vision's ViT defaults. The text tower is not read.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax.numpy as jnp
import numpy as np

from liteframe_jax.convert import mapping
from liteframe_jax.convert.siglip import abstract_shapes, build_tower
from liteframe_jax.core import paths
from liteframe_jax.models.siglip import SiglipTower, SiglipVitConfig

_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/")


def read_image_tower(path: str) -> dict[str, np.ndarray]:
    """`img/...` arrays of the file, named without the `params/img/` root; stacked layers split per layer."""
    with paths.open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
        names = list(npz.files)
        arrays = {}
        for name in names:
            short = name[len("params/"):] if name.startswith("params/") else name
            if short.startswith("img/"):
                arrays[short[len("img/"):]] = np.asarray(npz[name])
    if not arrays:
        raise ValueError(f"{path}: no image-tower arrays (params/img/...) in this .npz; its first names are "
                         f"{names[:5]}: is it a big_vision SigLIP checkpoint?")
    stacked = {n: a for n, a in arrays.items() if n.startswith("Transformer/encoderblock/")}
    for name, value in stacked.items():
        del arrays[name]
        for i, layer in enumerate(value):
            arrays[name.replace("encoderblock/", f"encoderblock_{i}/", 1)] = layer
    return arrays


def config_from_arrays(arrays: dict, source: str, image_size: int | None = None) -> SiglipVitConfig:
    def need(name):
        if name not in arrays:
            raise ValueError(f"{source}: the image tower has no {name!r}")
        return arrays[name]

    p, _, c, d = need("embedding/kernel").shape
    positions = need("pos_embedding").shape[-2]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"{source}: pos_embedding has {positions} positions, not a square grid")
    layers = sorted({int(m.group(1)) for n in arrays if (m := _BLOCK.match(n))})
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"{source}: encoder blocks {layers[:5]}... are not numbered 0..L-1")
    query = need("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    if query.ndim != 3:
        raise ValueError(f"{source}: attention query kernel of shape {query.shape}, expected (width, heads, head_dim)")
    hidden = need("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel").shape[1]
    if image_size is not None and image_size < p:
        raise ValueError(f"{source}: image_size {image_size} is smaller than one patch ({p})")
    return SiglipVitConfig(hidden_size=d, num_layers=len(layers), num_heads=query.shape[1], intermediate_size=hidden,
                           image_size=image_size or grid * p, patch_size=p, num_channels=c, position_grid=grid,
                           position_resize="bicubic", use_head=any(n.startswith("MAPHead_0/") for n in arrays))


def _attention(prefix: str, ours: str, d: int):
    a = re.escape(prefix) + r"MultiHeadDotProductAttention_0/"
    table = []
    for theirs, short in (("query", "q"), ("key", "k"), ("value", "v")):
        table += [(a + theirs + r"/kernel", f"{ours}{short}/kernel", lambda w: w.reshape(d, -1)),
                  (a + theirs + r"/bias", f"{ours}{short}/bias", lambda b: b.reshape(-1))]
    return table + [(a + r"out/kernel", f"{ours}out/kernel", lambda w: w.reshape(-1, d)),
                    (a + r"out/bias", f"{ours}out/bias", mapping.identity)]


def _mlp(prefix: str, ours: str):
    m = re.escape(prefix) + r"MlpBlock_0/"
    return [(m + rf"Dense_{i}/{kind}", f"{ours}mlp/fc{i + 1}/{kind}", mapping.identity)
            for i in (0, 1) for kind in ("kernel", "bias")]


def _norm(theirs: str, ours: str):
    return [(re.escape(theirs) + "/scale", f"{ours}/scale", mapping.identity),
            (re.escape(theirs) + "/bias", f"{ours}/bias", mapping.identity)]


def _table(cfg: SiglipVitConfig, keep_head: bool):
    d, g = cfg.hidden_size, cfg.position_grid
    table = [("embedding/kernel", "patch_kernel", mapping.identity),
             ("embedding/bias", "patch_bias", mapping.identity),
             ("pos_embedding", "pos_embedding", lambda w: w.reshape(g, g, d)),
             *_norm("Transformer/encoder_norm", "final_norm")]
    for i in range(cfg.num_layers):
        block = f"Transformer/encoderblock_{i}/"
        table += [*_norm(block + "LayerNorm_0", f"block_{i}/norm1"), *_norm(block + "LayerNorm_1", f"block_{i}/norm2"),
                  *_attention(block, f"block_{i}/", d), *_mlp(block, f"block_{i}/")]
    if keep_head:
        table += [("MAPHead_0/probe", "head/probe", mapping.identity), *_norm("MAPHead_0/LayerNorm_0", "head/norm"),
                  *_attention("MAPHead_0/", "head/", d), *_mlp("MAPHead_0/", "head/")]
    return table


def load_big_vision(path: str, *, dtype=jnp.float32, attn_impl: str | None = None, mlp_kernel: str = "xla",
                    mesh=None, image_size: int | None = None, feature_layer: int = -1,
                    use_head: bool | None = None) -> SiglipTower:
    """A SiglipTower with the image tower of a big_vision SigLIP `.npz` (see the module docstring)."""
    arrays = read_image_tower(path)
    cfg = config_from_arrays(arrays, path, image_size)
    keep_head = cfg.use_head if use_head is None else use_head
    if keep_head and not cfg.use_head:
        raise ValueError(f"{path}: use_head=True, but this checkpoint has no MAPHead_0")
    cfg = dataclasses.replace(cfg, use_head=keep_head)
    params = mapping.apply_table(_table(cfg, keep_head), arrays, abstract_shapes(cfg), source=path,
                                 ignore=lambda n: not keep_head and n.startswith("MAPHead_0/"))
    return build_tower(cfg, params, feature_layer=feature_layer, dtype=dtype, attn_impl=attn_impl,
                       mlp_kernel=mlp_kernel, mesh=mesh)
