"""Our Qwen2 parameters -> a Hugging Face `Qwen2ForCausalLM` folder's tensors and `config.json`, with LoRA
merged into the weights or kept apart as a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`).

Names and layouts are the ones `convert/qwen2.py` reads back: `model.layers.N.self_attn.q_proj.weight` is our
`layer_N/attn/q/dense/kernel` transposed to torch's (out, in). A merged weight is W + A @ B * alpha / rank,
computed one tensor at a time when it is written.
"""

from __future__ import annotations

import numpy as np

from liteframe_jax.export.safetensors_out import Tensor
from liteframe_jax.models.qwen2 import LoraConfig, Qwen2Config

ATTENTION = (("q", "q_proj", True), ("k", "k_proj", True), ("v", "v_proj", True), ("o", "o_proj", False))
MLP = (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj"))
LORA_MODES = ("merge", "adapter")


def config(cfg: Qwen2Config, *, dtype: str, bos_id: int | None, eos_ids: list[int], pad_id: int | None) -> dict:
    """config.json as transformers writes it for Qwen2 (read by its 4.x and 5.x releases and by
    `convert.qwen2.config_from_hf`)."""
    n = cfg.num_layers
    sliding = list(cfg.sliding_layers) if cfg.sliding_layers else [False] * n
    first_sliding = next((i for i, s in enumerate(sliding) if s), n)
    d = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": cfg.vocab_size,
         "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": n,
         "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
         "hidden_act": cfg.hidden_act, "max_position_embeddings": cfg.max_position_embeddings,
         "initializer_range": cfg.initializer_range, "rms_norm_eps": cfg.rms_norm_eps,
         "tie_word_embeddings": cfg.tie_word_embeddings, "rope_theta": cfg.rope_theta,
         "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
         "use_sliding_window": any(sliding), "sliding_window": cfg.sliding_window or None,
         "max_window_layers": first_sliding,
         "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
         "attention_dropout": 0.0, "use_cache": True, "bos_token_id": bos_id,
         "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids, "pad_token_id": pad_id,
         "torch_dtype": dtype}
    if cfg.head_dim and cfg.head_dim != cfg.hidden_size // cfg.num_heads:
        d["head_dim"] = cfg.head_dim
    return d


def generation_config(*, bos_id: int | None, eos_ids: list[int], pad_id: int | None) -> dict:
    """Greedy decoding that stops at the end-of-turn / end-of-text tokens, as the JAX generation does."""
    return {"bos_token_id": bos_id, "eos_token_id": eos_ids, "pad_token_id": pad_id, "do_sample": False}


def _lora_targets(flat: dict, lora: LoraConfig | None) -> bool:
    return lora is not None and lora.rank > 0 and any("/lora_a" in k for k in flat)


def tensors(cfg: Qwen2Config, flat: dict, lora: LoraConfig | None, dtype: str, *, lora_mode: str = "merge",
            prefix: str = "") -> list[Tensor]:
    """The HF tensors of the LLM whose parameters are `flat` ({'layer_0/attn/q/dense/kernel': array});
    `lora_mode='merge'` folds the adapters into the weights, 'adapter' leaves them out (see `adapter_tensors`)."""
    if lora_mode not in LORA_MODES:
        raise ValueError(f"unknown LoRA export {lora_mode!r}; choose one of {LORA_MODES}")
    scale = lora.alpha / lora.rank if _lora_targets(flat, lora) else 0.0
    merge = lora_mode == "merge" and scale
    P = f"{prefix}model."
    embed = flat["embed"]
    out = [Tensor(f"{P}embed_tokens.weight", tuple(embed.shape), dtype, lambda: embed)]
    for i in range(cfg.num_layers):
        ours, theirs = f"layer_{i}", f"{P}layers.{i}"
        for our_name, hf_name in [(f"{ours}/attn/{o}", f"{theirs}.self_attn.{h}") for o, h, _ in ATTENTION] + \
                                 [(f"{ours}/mlp/{o}", f"{theirs}.mlp.{h}") for o, h in MLP]:
            kernel = flat[f"{our_name}/dense/kernel"]
            a, b = flat.get(f"{our_name}/lora_a"), flat.get(f"{our_name}/lora_b")
            if merge and a is not None:
                produce = lambda k=kernel, a=a, b=b: (np.asarray(k, np.float32)
                                                      + np.asarray(a, np.float32) @ np.asarray(b, np.float32) * scale).T
            else:
                produce = lambda k=kernel: np.asarray(k).T
            out.append(Tensor(f"{hf_name}.weight", tuple(kernel.shape[::-1]), dtype, produce))
            bias = flat.get(f"{our_name}/dense/bias")
            if bias is not None:
                out.append(Tensor(f"{hf_name}.bias", tuple(bias.shape), dtype, lambda b=bias: b))
        for our_norm, hf_norm in (("input_norm", "input_layernorm"), ("post_norm", "post_attention_layernorm")):
            scale_ = flat[f"{ours}/{our_norm}/scale"]
            out.append(Tensor(f"{theirs}.{hf_norm}.weight", tuple(scale_.shape), dtype, lambda s=scale_: s))
    norm = flat["final_norm/scale"]
    out.append(Tensor(f"{P}norm.weight", tuple(norm.shape), dtype, lambda: norm))
    if not cfg.tie_word_embeddings:
        head = flat["lm_head"]
        out.append(Tensor(f"{prefix}lm_head.weight", tuple(head.shape[::-1]), dtype, lambda: np.asarray(head).T))
    expected = len(flat) - sum(1 for k in flat if "/lora_" in k)
    if len(out) != expected:
        raise ValueError(f"LLM export: {len(out)} tensors for {expected} parameters (a parameter has no HF name)")
    return out


def adapter_tensors(cfg: Qwen2Config, flat: dict, dtype: str) -> list[Tensor]:
    """PEFT's names for the LoRA factors: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` is
    our A (in, rank) as (rank, in), `lora_B.weight` our B (rank, out) as (out, rank)."""
    out = []
    for i in range(cfg.num_layers):
        pairs = [(f"layer_{i}/attn/{o}", f"self_attn.{h}") for o, h, _ in ATTENTION] + \
                [(f"layer_{i}/mlp/{o}", f"mlp.{h}") for o, h in MLP]
        for ours, theirs in pairs:
            a, b = flat.get(f"{ours}/lora_a"), flat.get(f"{ours}/lora_b")
            if a is None:
                continue
            name = f"base_model.model.model.layers.{i}.{theirs}"
            out += [Tensor(f"{name}.lora_A.weight", tuple(a.shape[::-1]), dtype, lambda a=a: np.asarray(a).T),
                    Tensor(f"{name}.lora_B.weight", tuple(b.shape[::-1]), dtype, lambda b=b: np.asarray(b).T)]
    return out


def adapter_config(flat: dict, lora: LoraConfig, base_model: str) -> dict:
    """adapter_config.json for PEFT's `PeftModel.from_pretrained` (plain LoRA, no dropout, no bias)."""
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
             "down": "down_proj"}
    targets = sorted({names[k.split("/")[-2]] for k in flat if k.endswith("/lora_a")})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": 0.0, "bias": "none",
            "target_modules": targets, "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None}
