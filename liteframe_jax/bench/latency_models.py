"""The models `bench latency` times, as the specs answering builds them from (`VideoLLMSpec.build`):

- InternVL3-8B-style: `VideoLLMSpec.internvl_layout` around an InternViT-300M tower with its InternVL3 head,
  from the configs (configs/ctd.py:paper's teacher), no folder;
- the same with its tokens pooled by WAP after the tower (`PosthocWapSpec`: post-hoc compression, as CTD's
  targets are made, configs/ctd.py:paper's window and weighting);
- LiteFrame: the `paper` and `paper_tubelet2` CTD students as their runs' spec.json describe them, with the
  LMA `paper` preset's projector and separators (a timestamp before each temporal slice);

all around one Qwen2.5-7B-shaped LLM, random weights in bfloat16, and the prompt's ids those of
`eval_prompt.PieceTokenizer`. With `small`, the model configs' `tiny` presets (the LLM with Qwen2.5's
vocabulary, so every prompt id is a row of its table).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.assembly.specs import InternVitSpec, StudentSpec, VideoLLMSpec
from liteframe_jax.bench.common import BF16, TUBELET, paper_models, qwen25_7b_config, tubelet_student
from liteframe_jax.bench.eval_prompt import VIDEO_TOKEN, VIDEO_TOKEN_ID, VOCAB_SIZE
from liteframe_jax.core.configs import load_config_file
from liteframe_jax.core.tree import pure_dict
from liteframe_jax.models import compression
from liteframe_jax.models.video_llm import ProjectorConfig

INTERNVL = "InternVL3-8B-style"
POSTHOC = "InternVL3-8B-style + WAP 16x"  # InternVL3's encoder, its tokens then pooled as CTD's targets are
LITEFRAME = "LiteFrame"
MODELS = (INTERNVL, POSTHOC, LITEFRAME, TUBELET)
WAP_WEIGHTING = "norm"  # configs/ctd.py:paper's: weights proportional to each token's norm


@dataclasses.dataclass(frozen=True)
class PosthocWapSpec(VideoLLMSpec):
    """InternVL3's layout with each `window` (frames, rows, columns) of the tower's tokens pooled into one by
    WAP: one visual group, and one "Frame{k}" line, per `window[0]` frames. A baseline to time, not a model a
    run folder holds (its spec.json would not keep `window`)."""

    window: tuple[int, int, int] = (4, 2, 2)

    def __post_init__(self):
        super().__post_init__()
        if self.num_frames % self.window[0]:
            raise ValueError(f"num_frames={self.num_frames} is not a multiple of the {self.window[0]}-frame WAP window")
        compression.output_grid((self.num_frames, *self._frame_grid()), self.window)  # the window tiles a frame

    def _frame_grid(self) -> tuple[int, int]:
        side = self.encoder.vit.grid // self.encoder.head.factor  # the tower's tokens per frame, a side x side grid
        return side, side

    @property
    def visual_groups(self) -> int:
        return self.num_frames // self.window[0]

    @property
    def tokens_per_group(self) -> int:
        h, w = self._frame_grid()
        return h // self.window[1] * (w // self.window[2])

    def visual_tokens(self, model, frames_uint8, dtype, clips_per_pass: int = 0) -> jax.Array:
        tokens = super().visual_tokens(model, frames_uint8, dtype, clips_per_pass)  # (B, T * H * W, width)
        b, t = frames_uint8.shape[:2]
        grid = tokens.reshape(b, t, *self._frame_grid(), tokens.shape[-1])
        pooled = compression.compress(grid, self.window, WAP_WEIGHTING).astype(tokens.dtype)
        return pooled.reshape(b, -1, tokens.shape[-1])


def whole_frames(spec: VideoLLMSpec) -> int:
    """The frames one encoder call needs whole: a student's clip, the WAP window, or one frame."""
    return spec.window[0] if isinstance(spec, PosthocWapSpec) else spec.encoder.clip_frames


def latency_specs(small: bool) -> dict[str, VideoLLMSpec]:
    """Each model's spec at 64 frames (`dataclasses.replace(spec, num_frames=n)` for another count)."""
    vit, head, student, _, window = paper_models(small)
    llm = qwen25_7b_config(small)
    if small:  # Qwen2.5's vocabulary, so the prompt's ids are rows of the table; 2x2 pooling of the 2x2 grid
        llm, window = dataclasses.replace(llm, vocab_size=VOCAB_SIZE), (4, 2, 2)
    tower = InternVitSpec(vit, head)
    lma = load_config_file("lma", "paper")
    p = lma.projector
    liteframe = lambda cfg: VideoLLMSpec(
        encoder=StudentSpec(cfg), projector=ProjectorConfig(p.kind, p.hidden, p.act, p.norm), llm=llm,
        video_token=VIDEO_TOKEN, num_frames=64, separators=lma.data.separators)
    return {INTERNVL: VideoLLMSpec.internvl_layout(tower, llm),
            POSTHOC: PosthocWapSpec(encoder=tower, projector=None, llm=llm, video_token=VIDEO_TOKEN, num_frames=64,
                                    separators="internvl", window=tuple(window)),
            LITEFRAME: liteframe(student), TUBELET: liteframe(tubelet_student(small))}


def build_models(specs: dict[str, VideoLLMSpec], **how) -> dict[str, tuple]:
    """{name: (graphdef, bfloat16 parameters)} of each spec built with `how` (attn_impl, mlp_kernel), random
    weights. The models share one LLM (four Qwen2.5-7B copies would not fit one GPU): the first model is built
    whole; each other one from its spec with a zero-layer LLM of the same width in the LLM's place, which gives
    its encoder and projector as `build` makes them without a second LLM, then joined to the first one's LLM."""
    models, llm = {}, None
    for seed, (name, spec) in enumerate(specs.items()):
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: _build(spec, seed, how)))
        if llm is None:
            params = _bf16(_build(spec, seed, how))
            llm = params["llm"]
        else:
            stand_in = dataclasses.replace(spec.llm, num_layers=0, vocab_size=1, tie_word_embeddings=True)
            params = _bf16(_build(dataclasses.replace(spec, llm=stand_in), seed, how))
        models[name] = graphdef, {**params, "llm": llm}
    return models


def _build(spec: VideoLLMSpec, seed: int, how: dict):
    return spec.build(rngs=nnx.Rngs(seed), dtype=BF16, video_token_id=VIDEO_TOKEN_ID, **how)


def _bf16(model) -> dict:
    """The model's parameters in bfloat16, as inference keeps them; the float32 ones go with the model."""
    cast = lambda x: x.astype(BF16) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, pure_dict(nnx.state(model)))
