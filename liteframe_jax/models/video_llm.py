"""The Video LLM: a video encoder (the LiteFrame student, or any teacher tower) -> projector -> visual tokens
spliced into the prompt at the video placeholder tokens -> the Qwen2 LLM.

The prompt carries exactly one placeholder token per visual token (the data side expands `<video>` into
them, with optional per-frame separators and timestamps between groups); `splice` replaces their
embeddings by the visual tokens in order. The InternVL3 baseline is the same class with an
`InternVisionTower` encoder (its own projector included) and no extra projector; the post-hoc baseline has a
`PooledTower` (a CTD teacher with its compression after it) where the student was.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.models import layers
from liteframe_jax.models.internvit import InternVisionTower
from liteframe_jax.models.pooled_tower import PooledTower
from liteframe_jax.models.qwen2 import Qwen2
from liteframe_jax.models.student import LiteFrameStudent

PROJECTOR_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    kind: str = "mlp"  # 'mlp' (norm -> fc -> act -> fc), 'linear', or 'none' (widths must already match)
    hidden: int = 0  # 0: the LLM width
    act: str = "gelu"
    norm: bool = True


class Projector(nnx.Module):
    def __init__(self, in_features: int, out_features: int, cfg: ProjectorConfig, *, rngs, dtype):
        if cfg.kind not in ("mlp", "linear"):
            raise ValueError(f"unknown projector kind {cfg.kind!r}; choose 'mlp', 'linear' or 'none'")
        hidden = cfg.hidden or out_features
        self.norm = layers.LayerNorm(in_features, rngs=rngs, eps=PROJECTOR_NORM_EPS) if cfg.norm else None
        self.fc1 = layers.Dense(in_features, hidden if cfg.kind == "mlp" else out_features, axes=("embed", "mlp"),
                                rngs=rngs, dtype=dtype)
        self.fc2 = (layers.Dense(hidden, out_features, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
                    if cfg.kind == "mlp" else None)
        self.act = cfg.act

    def __call__(self, x):
        if self.norm is not None:
            x = self.norm(x)
        x = self.fc1(x)
        return x if self.fc2 is None else self.fc2(layers.activation(self.act)(x))


def splice(text_embeds: jax.Array, tokens: jax.Array, visual: jax.Array, video_token_id: int) -> jax.Array:
    """Replace the embeddings of the `video_token_id` placeholders, in order, by `visual` (B, Nv, D)."""
    is_video = tokens == video_token_id
    order = jnp.clip(jnp.cumsum(is_video, axis=1) - 1, 0, visual.shape[1] - 1)
    gathered = jnp.take_along_axis(visual.astype(text_embeds.dtype), order[..., None], axis=1)
    return jnp.where(is_video[..., None], gathered, text_embeds)


class VideoLLM(nnx.Module):
    def __init__(self, encoder: nnx.Module, llm: Qwen2, *, video_token_id: int, projector: Projector | None = None):
        if not isinstance(encoder, (LiteFrameStudent, InternVisionTower, PooledTower)):
            raise TypeError(f"unsupported video encoder {type(encoder).__name__}")
        self.encoder, self.projector, self.llm = encoder, projector, llm
        self.video_token_id = int(video_token_id)

    def visual_tokens(self, frames: jax.Array) -> jax.Array:
        """Normalised frames (B, T, H, W, 3) -> (B, Nv, LLM width), in (t, h, w) order."""
        if isinstance(self.encoder, (LiteFrameStudent, PooledTower)):  # clips in, a clip's tokens out
            tokens = self.encoder(frames)
        else:  # an image tower encodes every frame on its own: T * tokens-per-frame
            b, t = frames.shape[:2]
            grid = self.encoder.features(frames.reshape(b * t, *frames.shape[2:]), "projector")
            tokens = grid.reshape(b, -1, grid.shape[-1])
        return tokens if self.projector is None else self.projector(tokens)
