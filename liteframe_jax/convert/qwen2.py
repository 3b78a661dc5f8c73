"""Qwen2 / Qwen2.5 (Hugging Face `qwen2`) configs and weights -> our Qwen2 module.

Works for a plain `Qwen2ForCausalLM` folder and for the language model inside a whole InternVL folder
(`language_model.model.*`, `model.language_model.*`, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.convert import hf_folder, mapping
from liteframe_jax.core.tree import flatten, pure_dict, unflatten
from liteframe_jax.models.layers import ACTIVATIONS
from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config

# Anything before "layers.N." / "embed_tokens" / "norm" that a layout may put there.
LLM_PREFIX = r"(?:model\.)?(?:language_model\.)?(?:model\.)?"
HEAD_PREFIX = r"(?:model\.)?(?:language_model\.)?"


def config_from_hf(d: dict) -> Qwen2Config:
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"Qwen2 config: rope type {rope_type!r} is not supported (only the default RoPE)")
    theta = rope.get("rope_theta", d.get("rope_theta", 10_000.0))
    if d.get("hidden_act", "silu") not in ACTIVATIONS:
        raise ValueError(f"Qwen2 config: hidden_act={d['hidden_act']!r} is not supported")
    if d.get("attention_dropout", 0.0):
        raise ValueError(f"Qwen2 config: attention_dropout={d['attention_dropout']} is not supported (use 0.0)")
    n = d.get("num_hidden_layers", 28)
    window = d.get("sliding_window") if d.get("use_sliding_window", False) else None
    layer_types = d.get("layer_types")
    if layer_types is None:
        layer_types = ["sliding_attention" if window and i >= d.get("max_window_layers", n) else "full_attention"
                       for i in range(n)]
    if len(layer_types) != n or set(layer_types) - {"sliding_attention", "full_attention"}:
        raise ValueError(f"Qwen2 config: layer_types {layer_types} do not match {n} layers of known types")
    sliding = tuple(t == "sliding_attention" for t in layer_types)
    if any(sliding) and not window:
        raise ValueError("Qwen2 config: sliding_attention layers need use_sliding_window and sliding_window")
    heads = d.get("num_attention_heads", 28)
    return Qwen2Config(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=n, num_heads=heads, num_kv_heads=d.get("num_key_value_heads", heads),
        head_dim=d.get("head_dim") or 0, rope_theta=float(theta), rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=d.get("tie_word_embeddings", False),
        max_position_embeddings=d.get("max_position_embeddings", 32_768), hidden_act=d.get("hidden_act", "silu"),
        sliding_window=int(window or 0), sliding_layers=sliding if any(sliding) else (),
        initializer_range=d.get("initializer_range", 0.02))


def table():
    P, L = LLM_PREFIX, LLM_PREFIX + r"layers\.(\d+)\."
    inner = "dense/"  # our projections are LoraDense modules wrapping a Dense
    rows = [(P + r"embed_tokens\.weight", "embed", mapping.identity),
            (P + r"norm\.weight", "final_norm/scale", mapping.identity),
            (HEAD_PREFIX + r"lm_head\.weight", "lm_head", mapping.linear),
            (L + r"input_layernorm\.weight", "layer_{0}/input_norm/scale", mapping.identity),
            (L + r"post_attention_layernorm\.weight", "layer_{0}/post_norm/scale", mapping.identity)]
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
        rows.append((L + rf"self_attn\.{theirs}\.weight", f"layer_{{0}}/attn/{ours}/{inner}kernel", mapping.linear))
        rows.append((L + rf"self_attn\.{theirs}\.bias", f"layer_{{0}}/attn/{ours}/{inner}bias", mapping.identity))
    for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        rows.append((L + rf"mlp\.{theirs}\.weight", f"layer_{{0}}/mlp/{ours}/{inner}kernel", mapping.linear))
    return rows


def load_qwen2_params(path: str, shapes: dict) -> dict:
    """Our parameter tree (numpy) for the Qwen2 weights in `path`, shaped like `shapes`.

    LoRA adapters present in `shapes` are not part of any HF checkpoint: they are left out of the result
    (the caller keeps their initial values).
    """
    flat = flatten(shapes)
    base = unflatten({k: v for k, v in flat.items() if "/lora_" not in k})
    is_llm = lambda n: "vision_tower" not in n and "multi_modal_projector" not in n
    return mapping.apply_table(table(), hf_folder.read_tensors(path, keep=is_llm), base, source=path)


def text_config(path: str) -> dict:
    cfg = hf_folder.read_config(path)
    if cfg.get("model_type") == "internvl":
        top = cfg
        cfg = dict(cfg.get("text_config") or {})
        if "tie_word_embeddings" in top:  # transformers ties the composite model's head by the outer flag
            cfg["tie_word_embeddings"] = top["tie_word_embeddings"]
    if cfg.get("model_type") != "qwen2":
        raise ValueError(f"{path}: model_type {cfg.get('model_type')!r} is not a Qwen2 model")
    return cfg


def load_qwen2(path: str, *, dtype=jnp.float32, attn_impl=None) -> Qwen2:
    llm = nnx.eval_shape(lambda: Qwen2(config_from_hf(text_config(path)), rngs=nnx.Rngs(0), dtype=dtype,
                                       attn_impl=attn_impl))
    graphdef, state = nnx.split(llm)
    params = load_qwen2_params(path, pure_dict(state))
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))
