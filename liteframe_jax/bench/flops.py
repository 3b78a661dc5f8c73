"""Analytic FLOP counts (multiply-adds x 2) for MFU. XLA's cost analysis does not see inside cuDNN's fused
attention, so counts are derived from the shapes, as MaxText and PaLM do; causal attention counts half."""

from __future__ import annotations

from liteframe_jax.models.internvit import InternVitConfig
from liteframe_jax.models.qwen2 import Qwen2Config
from liteframe_jax.models.siglip import SiglipVitConfig
from liteframe_jax.models.student import StudentConfig


def vit_block(tokens: int, width: int, mlp: int) -> float:
    return 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width


def internvit_per_frame(cfg: InternVitConfig, head_out: int = 0, unshuffle: int = 2) -> float:
    n = cfg.grid ** 2 + 1
    f = 2 * (n - 1) * cfg.patch_size ** 2 * cfg.num_channels * cfg.hidden_size
    f += cfg.num_layers * vit_block(n, cfg.hidden_size, cfg.intermediate_size)
    if head_out:  # pixel-unshuffle + projector on (grid/2)^2 tokens
        m = (cfg.grid // unshuffle) ** 2
        f += 2 * m * (cfg.hidden_size * unshuffle ** 2 * head_out + head_out * head_out)
    return f


def siglip_per_frame(cfg: SiglipVitConfig) -> float:
    """A SigLIP tower's forward: patch embedding and its blocks over grid**2 tokens (no CLS, no head)."""
    n = cfg.grid ** 2
    f = 2 * n * cfg.patch_size ** 2 * cfg.num_channels * cfg.hidden_size
    return f + cfg.num_layers * vit_block(n, cfg.hidden_size, cfg.intermediate_size)


def teacher_per_frame(cfg, head_out: int = 0) -> float:
    """The CTD teacher's forward per frame, InternViT (with its projector when `head_out`) or SigLIP."""
    return siglip_per_frame(cfg) if isinstance(cfg, SiglipVitConfig) else internvit_per_frame(cfg, head_out)


def student_per_clip(cfg: StudentConfig) -> float:
    (pt, ph, pw), (t, h, w) = cfg.patch_size, cfg.input_grid
    f = 2 * t * h * w * pt * ph * pw * 3 * cfg.width
    for blocks, stride in cfg.stages:
        per_frame = h * w
        f += blocks * t * vit_block(per_frame, cfg.width, cfg.mlp_dim)
        f += blocks * 2 * t * per_frame * cfg.width * cfg.temporal_kernel
        t, h, w = t // stride[0], h // stride[1], w // stride[2]
    return f + 2 * t * h * w * cfg.width * cfg.out_dim


def qwen2_per_sequence(cfg: Qwen2Config, tokens: int, logits_tokens: int) -> float:
    d, hd = cfg.hidden_size, cfg.dim_per_head
    proj = 2 * d * cfg.num_heads * hd + 2 * 2 * d * cfg.num_kv_heads * hd + 2 * 3 * d * cfg.intermediate_size
    attn = 2 * 2 * tokens * tokens * cfg.num_heads * hd / 2  # causal
    return cfg.num_layers * (tokens * proj + attn) + 2 * logits_tokens * d * cfg.vocab_size
