"""Specs: everything that fixes a model's function, as data that a run folder keeps in `spec.json`.

`StudentSpec` is a CTD run's student (architecture, clip frames, input size, pixel statistics);
`PooledTowerSpec` is the post-hoc baseline's encoder (a CTD run's teacher and its compression);
`VideoLLMSpec` is an LMA run's whole Video LLM (encoder, projector, LLM, LoRA, tokenizer, video token,
frames per video and the separators between groups of visual tokens). `spec.build(...)` is the one place
that turns either into a model; LMA, evaluation, generation and the InternVL3 baseline all go through it.
How a model runs (dtype, attention implementation, fused kernels, rematerialisation) is not part of a spec:
it changes speed, not the function.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.convert import hf_folder
from liteframe_jax.convert.internvl import head_config_from_hf, vit_config_from_hf
from liteframe_jax.convert.qwen2 import config_from_hf, text_config
from liteframe_jax.core import paths
from liteframe_jax.data import conversations
from liteframe_jax.data.tokenizer import load_tokenizer
from liteframe_jax.models import compression
from liteframe_jax.models.internvit import InternVisionTower, InternVitConfig, InternVLHeadConfig
from liteframe_jax.models.pixels import normalise
from liteframe_jax.models.pooled_tower import PooledTower
from liteframe_jax.models.qwen2 import LoraConfig, Qwen2, Qwen2Config
from liteframe_jax.models.student import LiteFrameStudent, StudentConfig
from liteframe_jax.models.video_llm import Projector, ProjectorConfig, VideoLLM, splice

SPEC_VERSION = 1
# InternVL's reference transform normalises with the ImageNet statistics (`build_transform`).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tuples(x):
    """JSON lists back to the tuples the model configs hold."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _config(cls, d: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"spec: {cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: _tuples(v) for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    """The LiteFrame student: 8-frame clips (`arch.num_frames`) in, a (T', H', W') grid of tokens out."""

    arch: StudentConfig
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    kind = "student"

    @property
    def clip_frames(self) -> int:
        return self.arch.num_frames

    @property
    def image_size(self) -> int:
        return self.arch.image_size

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(groups per clip, tokens per group, width) of the encoder's output."""
        t, h, w = self.arch.output_grid
        return t, h * w, self.arch.out_dim

    def build(self, *, rngs: nnx.Rngs, dtype=jnp.float32, attn_impl=None, mlp_kernel="xla", tail_kernel=None,
              mesh=None) -> LiteFrameStudent:
        return LiteFrameStudent(self.arch, rngs=rngs, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel,
                                tail_kernel=tail_kernel, mesh=mesh)

    def at_image_size(self, image_size: int) -> "StudentSpec":
        """The same student on frames of another size (its position table resampled; other token counts)."""
        return dataclasses.replace(self, arch=self.arch.at_image_size(image_size))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "arch": dataclasses.asdict(self.arch), "pixel_mean": list(self.pixel_mean),
                "pixel_std": list(self.pixel_std)}

    @classmethod
    def from_dict(cls, d: dict) -> "StudentSpec":
        return cls(StudentConfig.from_dict(d["arch"]), tuple(d["pixel_mean"]), tuple(d["pixel_std"]))

    @classmethod
    def from_config(cls, arch, num_frames: int, data) -> "StudentSpec":
        """The student a config describes: its architecture fields (`student` in a CTD config, `student.arch`
        in an LMA one), its clip frames and `data`'s pixel statistics. `arch` and `data` may be ConfigDicts or
        the plain dicts of a config.json (CTD runs written before spec.json are read that way)."""
        fields = arch.to_dict() if hasattr(arch, "to_dict") else dict(arch)
        return cls(StudentConfig.from_dict({**fields, "num_frames": int(num_frames)}), tuple(data["pixel_mean"]),
                   tuple(data["pixel_std"]))


@dataclasses.dataclass(frozen=True)
class InternVitSpec:
    """An image tower with InternVL3's projector: every frame encoded on its own (the InternVL3 baseline)."""

    vit: InternVitConfig
    head: InternVLHeadConfig | None
    feature_layer: int = -1
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    kind = "internvit"

    clip_frames = 1

    @property
    def image_size(self) -> int:
        return self.vit.image_size

    @property
    def token_grid(self) -> tuple[int, int, int]:
        if self.head is None:
            raise ValueError("a Video LLM's InternViT encoder needs the InternVL3 head (a whole `internvl` folder)")
        side = self.vit.grid // self.head.factor  # pixel-unshuffle, as InternVisionTower.grid_shape('projector')
        return 1, side * side, self.head.out_features

    def build(self, *, rngs: nnx.Rngs, dtype=jnp.float32, attn_impl=None, mlp_kernel="xla", tail_kernel=None,
              mesh=None) -> InternVisionTower:
        del tail_kernel  # a student kernel; an InternViT tower has no block tail
        return InternVisionTower(self.vit, self.head, rngs=rngs, feature_layer=self.feature_layer, dtype=dtype,
                                 attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh)

    def at_image_size(self, image_size: int) -> "InternVitSpec":
        """The same tower on frames of another size, its position table resampled (InternVL's own way)."""
        vit = self.vit.at_image_size(image_size)
        changed = dataclasses.replace(self, vit=vit)
        if self.head is not None and vit.grid % self.head.factor:
            raise ValueError(f"InternViT at {image_size} px has a {vit.grid}x{vit.grid} grid, which the head's "
                             f"{self.head.factor}x{self.head.factor} pixel-unshuffle does not divide")
        return changed

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vit": dataclasses.asdict(self.vit),
                "head": None if self.head is None else dataclasses.asdict(self.head),
                "feature_layer": self.feature_layer, "pixel_mean": list(self.pixel_mean),
                "pixel_std": list(self.pixel_std)}

    @classmethod
    def from_dict(cls, d: dict) -> "InternVitSpec":
        return cls(_config(InternVitConfig, d["vit"]), None if d["head"] is None else _config(InternVLHeadConfig, d["head"]),
                   int(d["feature_layer"]), tuple(d["pixel_mean"]), tuple(d["pixel_std"]))


@dataclasses.dataclass(frozen=True)
class PooledTowerSpec:
    """The post-hoc baseline's encoder (models/pooled_tower.py): a CTD run's teacher on every frame of a
    `clip_frames` clip, its `output` tokens then compressed as that run's targets are (`window`, `method`,
    `weighting`, `sigma`). Its token layout is the run's student's; its cost per frame is the teacher's."""

    tower: InternVitSpec
    output: str
    clip_frames: int
    window: tuple[int, int, int]
    method: str = "wap"
    weighting: str = "uniform"
    sigma: float = 1.0
    kind = "pooled_tower"

    def __post_init__(self):
        self.token_grid  # the window tiles a clip's token grid

    @property
    def image_size(self) -> int:
        return self.tower.image_size

    @property
    def pixel_mean(self) -> tuple[float, ...]:
        return self.tower.pixel_mean

    @property
    def pixel_std(self) -> tuple[float, ...]:
        return self.tower.pixel_std

    def _frame_grid(self) -> tuple[int, int, int]:
        """(h, w, width) of the tower's tokens for one frame at `output` (InternVisionTower.grid_shape's rule)."""
        g, d = self.tower.vit.grid, self.tower.vit.hidden_size
        if self.output == "vit":
            return g, g, d
        head = self.tower.head
        if head is None or self.output not in ("unshuffle", "projector"):
            raise ValueError(f"pooled tower: output {self.output!r} needs 'vit', or 'unshuffle' / 'projector' with "
                             "the InternVL3 head")
        side = g // head.factor
        return side, side, d * head.factor ** 2 if self.output == "unshuffle" else head.out_features

    @property
    def token_grid(self) -> tuple[int, int, int]:
        h, w, width = self._frame_grid()
        t, gh, gw = compression.output_grid((self.clip_frames, h, w), self.window)
        return t, gh * gw, width

    def build(self, *, rngs: nnx.Rngs, dtype=jnp.float32, attn_impl=None, mlp_kernel="xla", tail_kernel=None,
              mesh=None) -> PooledTower:
        tower = self.tower.build(rngs=rngs, dtype=dtype, attn_impl=attn_impl, mlp_kernel=mlp_kernel, mesh=mesh)
        return PooledTower(tower, output=self.output, window=self.window, method=self.method,
                           weighting=self.weighting, sigma=self.sigma)

    def at_image_size(self, image_size: int) -> "PooledTowerSpec":
        return dataclasses.replace(self, tower=self.tower.at_image_size(image_size))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tower": self.tower.to_dict(), "output": self.output,
                "clip_frames": self.clip_frames, "window": list(self.window), "method": self.method,
                "weighting": self.weighting, "sigma": self.sigma}

    @classmethod
    def from_dict(cls, d: dict) -> "PooledTowerSpec":
        return cls(InternVitSpec.from_dict(d["tower"]), d["output"], int(d["clip_frames"]), tuple(d["window"]),
                   d["method"], d["weighting"], float(d["sigma"]))


ENCODERS = {"student": StudentSpec, "internvit": InternVitSpec, "pooled_tower": PooledTowerSpec}


@dataclasses.dataclass(frozen=True)
class VideoLLMSpec:
    """Encoder -> projector -> visual tokens spliced into the prompt -> Qwen2, and the prompt's layout."""

    encoder: StudentSpec | InternVitSpec | PooledTowerSpec
    projector: ProjectorConfig | None  # None: the encoder's width is the LLM's
    llm: Qwen2Config
    lora: LoraConfig | None = None
    tokenizer: str = "bytes"  # 'bytes', or a folder with tokenizer.json (relative: inside the run folder)
    video_token: str = "<|video_pad|>"
    num_frames: int = 8  # per video, a multiple of the encoder's clip
    separators: str = "none"  # between groups of visual tokens: none | frame | timestamp | internvl
    system_prompt: str | None = None
    kind = "video_llm"

    def __post_init__(self):
        if self.num_frames % self.encoder.clip_frames:
            raise ValueError(f"num_frames={self.num_frames} is not a multiple of the encoder's "
                             f"{self.encoder.clip_frames}-frame clips")
        width = self.encoder.token_grid[2]
        if self.projector is None and width != self.llm.hidden_size:
            raise ValueError(f"no projector, but the encoder gives width {width} and the LLM takes "
                             f"{self.llm.hidden_size}")

    # --- the layout of the visual tokens ---
    @property
    def clips(self) -> int:
        return self.num_frames // self.encoder.clip_frames

    @property
    def visual_groups(self) -> int:
        return self.clips * self.encoder.token_grid[0]

    @property
    def tokens_per_group(self) -> int:
        return self.encoder.token_grid[1]

    @property
    def num_visual_tokens(self) -> int:
        return self.visual_groups * self.tokens_per_group

    def at_image_size(self, image_size: int) -> "VideoLLMSpec":
        """The same model on frames of another size: the encoder's position table resampled, so each clip
        gives the LLM more (larger frames) or fewer visual tokens."""
        return dataclasses.replace(self, encoder=self.encoder.at_image_size(image_size))

    # --- building ---
    def build(self, *, rngs: nnx.Rngs, dtype=jnp.float32, attn_impl=None, mlp_kernel="xla", tail_kernel=None,
              mesh=None, remat="none", scan_layers=False, video_token_id: int,
              tower_attn_impl=None) -> VideoLLM:
        """`tail_kernel` (a student encoder's block tail): None follows `mlp_kernel`. `tower_attn_impl`: the
        encoder's attention (`kernel_choice.tower_attention_impl`); None: as `attn_impl`."""
        encoder = self.encoder.build(rngs=rngs, dtype=dtype, attn_impl=tower_attn_impl or attn_impl,
                                     mlp_kernel=mlp_kernel, tail_kernel=tail_kernel, mesh=mesh)
        width = self.encoder.token_grid[2]
        projector = None if self.projector is None else Projector(width, self.llm.hidden_size, self.projector,
                                                                  rngs=rngs, dtype=dtype)
        llm = Qwen2(self.llm, rngs=rngs, dtype=dtype, lora=self.lora, attn_impl=attn_impl, remat=remat,
                    scan_layers=scan_layers, mesh=mesh)
        return VideoLLM(encoder, llm, video_token_id=video_token_id, projector=projector)

    def load_tokenizer(self, run_dir: str | None = None):
        folder = self.tokenizer
        if folder != "bytes" and not paths.isabs(folder) and run_dir is not None:
            folder = os.path.join(run_dir, folder)
        tokenizer = load_tokenizer(folder, self.video_token)
        self.check_tokenizer(tokenizer)
        return tokenizer

    def check_tokenizer(self, tokenizer) -> None:
        if tokenizer.vocab_size > self.llm.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the LLM only {self.llm.vocab_size}")

    def prompt_builder(self, tokenizer, *, max_length: int | None = None,
                       max_answer_tokens: int = 0) -> conversations.PromptBuilder:
        """Rows -> token ids; `max_length` defaults to the LLM's context."""
        return conversations.PromptBuilder(
            tokenizer, visual_groups=self.visual_groups, tokens_per_group=self.tokens_per_group,
            separators=self.separators, max_length=max_length or self.llm.max_position_embeddings,
            system_prompt=self.system_prompt, max_answer_tokens=max_answer_tokens)

    # --- running ---
    def visual_tokens(self, model: VideoLLM, frames_uint8: jax.Array, dtype, clips_per_pass: int = 0) -> jax.Array:
        """uint8 (B, num_frames, S, S, 3) -> (B, num_visual_tokens, LLM width): the video as encoder clips.

        `clips_per_pass` > 0: each row's clips are encoded that many at a time, each pass rematerialised, so a
        training step keeps one pass's activations of the encoder instead of the whole video's (the encoder's
        memory at 512 frames is what limits LMA on a chip). Pass p takes clips p, p + P, p + 2P, ... (P passes):
        where the frames are split over devices by contiguous clips, each pass stays on every device."""
        e = self.encoder
        x = frames_uint8
        b, t = x.shape[:2]
        clips = t // e.clip_frames
        if not clips_per_pass or clips_per_pass >= clips:
            x = normalise(x, e.pixel_mean, e.pixel_std, dtype)
            tokens = model.visual_tokens(x.reshape(b * clips, e.clip_frames, *x.shape[2:]))
            return tokens.reshape(b, -1, tokens.shape[-1])
        if clips % clips_per_pass:
            raise ValueError(f"encoder_clips_per_pass={clips_per_pass} does not divide the {clips} clips of a row")
        passes = clips // clips_per_pass
        x = x.reshape(b, clips_per_pass, passes, e.clip_frames, *x.shape[2:]).swapaxes(1, 2).swapaxes(0, 1)

        @jax.checkpoint
        def one_pass(xs):  # uint8 (B, clips_per_pass, clip frames, S, S, 3) -> (B, clips_per_pass, tokens, width)
            # normalised here, a pass at a time: the whole row's frames in floating point are several GiB at
            # 512 frames
            xs = normalise(xs, e.pixel_mean, e.pixel_std, dtype)
            out = model.visual_tokens(xs.reshape(b * clips_per_pass, *xs.shape[2:]))
            return out.reshape(b, clips_per_pass, *out.shape[1:])

        tokens = jax.lax.map(one_pass, x)  # (passes, B, clips_per_pass, tokens, width)
        return tokens.transpose(1, 2, 0, 3, 4).reshape(b, -1, tokens.shape[-1])

    def embeds(self, model: VideoLLM, tokens: jax.Array, frames_uint8: jax.Array, dtype,
               clips_per_pass: int = 0) -> jax.Array:
        """The prompt's embeddings with the visual tokens at the video placeholders."""
        return self.embeds_with(model, tokens, self.visual_tokens(model, frames_uint8, dtype, clips_per_pass))

    def embeds_with(self, model: VideoLLM, tokens: jax.Array, visual: jax.Array) -> jax.Array:
        """The prompt's embeddings with `visual` (B, num_visual_tokens, LLM width), encoded before (e.g. clip by
        clip as the video decoded), at the video placeholders."""
        return splice(model.llm.embed_tokens(tokens), tokens, visual, model.video_token_id)

    # --- as data ---
    def to_dict(self) -> dict:
        return {"kind": self.kind, "encoder": self.encoder.to_dict(),
                "projector": None if self.projector is None else dataclasses.asdict(self.projector),
                "llm": dataclasses.asdict(self.llm),
                "lora": None if self.lora is None else dataclasses.asdict(self.lora), "tokenizer": self.tokenizer,
                "video_token": self.video_token, "num_frames": self.num_frames, "separators": self.separators,
                "system_prompt": self.system_prompt}

    @classmethod
    def from_dict(cls, d: dict) -> "VideoLLMSpec":
        enc = d["encoder"]
        if enc.get("kind") not in ENCODERS:
            raise ValueError(f"spec: unknown encoder kind {enc.get('kind')!r}; known: {sorted(ENCODERS)}")
        return cls(encoder=ENCODERS[enc["kind"]].from_dict(enc),
                   projector=None if d["projector"] is None else _config(ProjectorConfig, d["projector"]),
                   llm=_config(Qwen2Config, d["llm"]), lora=None if d["lora"] is None else _config(LoraConfig, d["lora"]),
                   tokenizer=d["tokenizer"], video_token=d["video_token"], num_frames=int(d["num_frames"]),
                   separators=d["separators"], system_prompt=d.get("system_prompt"))

    @classmethod
    def internvl(cls, folder: str, frames: int = 64) -> "VideoLLMSpec":
        """InternVL3 from one whole Hugging Face `internvl` folder: its tower and projector, its Qwen2 and
        tokenizer; frames as "Frame{k}: <img><IMG_CONTEXT>...</img>" lines, as transformers'
        InternVLProcessor writes video prompts."""
        hf = hf_folder.read_config(folder)
        if hf.get("model_type") != "internvl":
            raise ValueError(f"{folder}: the InternVL3 baseline needs a whole 'internvl' model, "
                             f"got model_type {hf.get('model_type')!r}")
        head, layer = head_config_from_hf(hf)
        encoder = InternVitSpec(vit_config_from_hf(hf["vision_config"]), head, layer)
        return cls.internvl_layout(encoder, config_from_hf(text_config(folder)), frames=frames, tokenizer=folder)

    @classmethod
    def internvl_layout(cls, encoder: InternVitSpec, llm: Qwen2Config, *, frames: int = 64,
                        tokenizer: str = "bytes") -> "VideoLLMSpec":
        """InternVL3's Video LLM around `encoder` (a tower with its InternVL3 head, which is the projector) and
        `llm`, from configs rather than a folder (e.g. InternVL3-8B's shapes with random weights, to time it)."""
        return cls(encoder=encoder, projector=None, llm=llm, tokenizer=tokenizer, video_token="<IMG_CONTEXT>",
                   num_frames=frames, separators="internvl")


def spec_from_dict(d: dict) -> StudentSpec | VideoLLMSpec:
    version = d.get("version", SPEC_VERSION)
    if version > SPEC_VERSION:
        raise ValueError(f"spec.json has format version {version}; this liteframe_jax reads up to {SPEC_VERSION} "
                         "(upgrade liteframe_jax)")
    kinds = {"student": StudentSpec, "video_llm": VideoLLMSpec}
    if d.get("kind") not in kinds:
        raise ValueError(f"spec.json: unknown kind {d.get('kind')!r}; known: {sorted(kinds)}")
    return kinds[d["kind"]].from_dict(d)
