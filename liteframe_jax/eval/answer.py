"""Answer questions about video files with a Video LLM: an LMA run folder (its spec, tokenizer, frozen parts and
checkpoint, nothing outside it) or the InternVL3 baseline from one Hugging Face folder.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from liteframe_jax.assembly import run_folder
from liteframe_jax.assembly.answering import Answerer
from liteframe_jax.assembly.baseline import load_internvl_video_llm
from liteframe_jax.assembly.specs import VideoLLMSpec
from liteframe_jax.core import paths
from liteframe_jax.core.dtypes import compute_dtype
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.data import nvdec, video
from liteframe_jax.data.conversations import GROUP_MARKER, VIDEO_MARKER
from liteframe_jax.data.sampling import group_times, sample_indices, snap_to_keyframes
from liteframe_jax.eval.prompts import Prompt
from liteframe_jax.models import kernel_choice

# The system message of InternVL's `internvl2_5` conversation template, which `model.chat` (and lmms-eval's
# `internvl3` wrapper, which calls it) sends before the "Frame{i}: <image>" lines; transformers' `-hf`
# processor and chat template send no system turn.
INTERNVL_SYSTEM_MESSAGE = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
INTERNVL_PROMPT_FORMS = {"chat": INTERNVL_SYSTEM_MESSAGE, "hf": None}

STREAM_FRAMES = 8  # frames per streamed piece: one student clip, or as many frames of a per-frame encoder


def stream_piece(clip_frames: int, clips_per_call: int | None = None) -> int:
    """Frames per piece when encoding streams behind decoding: `clips_per_call` whole clips, by default as
    many as make `STREAM_FRAMES` (a per-frame encoder's call then holds 8 frames, not one)."""
    clips = clips_per_call or max(1, STREAM_FRAMES // clip_frames)
    return clip_frames * clips


class VideoQA:
    """A Video LLM ready to answer: `from_run` (an LMA run folder) or `internvl_baseline` (a Hugging Face
    folder). `sampling` / `resize`: which frames (data/sampling.py) and which resize filter (data/video.py).
    `decoder`: 'pyav' (the CPU), 'nvdec' (the GPU's video engines, data/nvdec.py: frames stay on the GPU, a
    linear resize there) or 'auto' (NVDEC where it can run); `decoder_reason` says why. `keyframes_only`:
    each sampled frame moved to its nearest keyframe (`sampling.snap_to_keyframes`), so only keyframes are
    decoded: faster, not the same frames, never the default. `prompt_form` (the InternVL3 baseline's,
    `ask_as`): 'chat' (InternVL's `model.chat`, its system message) or 'hf' (the `-hf` processor's, none); a
    prompt's own system prompt replaces it."""

    prompt_form: str | None = None
    system_prompt: str | None = None

    def __init__(self, spec: VideoLLMSpec, tokenizer, graphdef, params, *, dtype, sampling: str, resize: str,
                 identity: dict, decoder: str = "pyav", keyframes_only: bool = False):
        sample_indices(sampling, 1, 1)  # an unknown rule fails here, before any work
        self.decoder, self.decoder_reason = nvdec.choose(decoder)
        if resize not in video.RESIZE_FILTERS:
            raise ValueError(f"unknown resize filter {resize!r}; choose one of {video.RESIZE_FILTERS}")
        self.spec, self.tokenizer, self.sampling, self.resize = spec, tokenizer, sampling, resize
        self.keyframes_only = bool(keyframes_only)
        self.graphdef, self.params = graphdef, jax.tree.map(jnp.asarray, params)
        self.builder = spec.prompt_builder(tokenizer)  # at inference the LLM's own context is the limit
        self.answerer = Answerer(spec, tokenizer, graphdef, dtype, beside_decoding=self.decoder == "nvdec")
        self.identity = identity

    @classmethod
    def from_run(cls, run_dir: str, *, step: int | None = None, mlp_kernel: str | None = None,
                 dtype: str | None = None, sampling: str | None = None, resize: str | None = None,
                 image_size: int | None = None, decoder: str = "pyav", keyframes_only: bool = False) -> "VideoQA":
        """The Video LLM of an LMA run folder at `step` (default: the latest). `mlp_kernel` ('xla' | 'pallas')
        and `dtype` change how it runs, not what it computes; by default the run's own (from its config.json,
        or 'xla' and 'float32'). By default frames are sampled as in training: `uniform` and `bilinear`.
        `image_size` runs the encoder on frames of another size (its position table resampled)."""
        run_dir = paths.resolve(run_dir)
        trained = _run_settings(run_dir)
        dtype = dtype or trained.get("dtype", "float32")
        mlp_kernel = mlp_kernel or trained.get("mlp_kernel") or "xla"
        if mlp_kernel == kernel_choice.AUTO:  # answering never trains the encoder
            mlp_kernel = kernel_choice.resolve({"mlp": mlp_kernel}, compute_dtype(dtype))[0]["mlp"]
        spec, tokenizer, graphdef, params, step = run_folder.load_model(
            run_dir, step=step, want=VideoLLMSpec, dtype=compute_dtype(dtype), mlp_kernel=mlp_kernel,
            image_size=image_size)
        return cls(spec, tokenizer, graphdef, params, dtype=compute_dtype(dtype), sampling=sampling or "uniform",
                   resize=resize or "bilinear", identity={"run": run_dir, "step": step, "spec_sha256": _digest(spec)},
                   decoder=decoder, keyframes_only=keyframes_only)

    def ask_as(self, form: str) -> "VideoQA":
        """The InternVL3 baseline asked in `form` ('chat' or 'hf'); answers of two forms are not mixed (the
        form is part of `fingerprint`)."""
        if "internvl" not in self.identity:
            raise ValueError("the prompt form (--config.model.internvl_prompt) applies to the InternVL3 baseline; "
                             "an LMA run is asked as it trained")
        if form not in INTERNVL_PROMPT_FORMS:
            raise ValueError(f"unknown InternVL prompt form {form!r}; choose one of {sorted(INTERNVL_PROMPT_FORMS)}")
        self.prompt_form, self.system_prompt = form, INTERNVL_PROMPT_FORMS[form]
        self.identity = {**self.identity, "prompt_form": form}
        return self

    def at_frames(self, num_frames: int) -> "VideoQA":
        """The same model and weights asked about `num_frames` frames per video (a frame sweep): the frames
        sampled, the prompt's visual groups and the compiled answering follow the count, which must be whole
        encoder clips."""
        clip = self.spec.encoder.clip_frames
        if int(num_frames) <= 0 or int(num_frames) % clip:
            raise ValueError(f"{num_frames} frames is not a positive multiple of the encoder's {clip}-frame clips")
        return self._rebuilt(dataclasses.replace(self.spec, num_frames=int(num_frames)), self.answerer.devices)

    def on_devices(self, devices) -> "VideoQA":
        """The same model answering each batch split over `devices` of this process, with a copy of the weights
        on each (one device: the weights there, without a copy where they already are)."""
        devices = tuple(devices)
        if not devices:
            raise ValueError("on_devices: no devices given")
        return self._rebuilt(self.spec, devices)

    def _rebuilt(self, spec: VideoLLMSpec, devices: tuple) -> "VideoQA":
        out = copy.copy(self)
        out.spec = spec
        out.builder = spec.prompt_builder(self.tokenizer)
        out.answerer = Answerer(spec, self.tokenizer, self.graphdef, self.answerer.dtype,
                                beside_decoding=self.decoder == "nvdec", devices=devices)
        if len(devices) > 1:
            out.params = out.answerer.replicated(self.params)
        elif devices:
            out.params = jax.tree.map(lambda a: _on(a, devices[0]), self.params)
        return out

    @property
    def device_count(self) -> int:
        """The devices each batch is split over."""
        return max(1, len(self.answerer.devices))

    @property
    def step(self) -> int | None:
        return self.identity.get("step")

    @property
    def source(self) -> str:
        """Where the model comes from, for people: `RUN step N` or the InternVL folder."""
        if "run" in self.identity:
            return f"{self.identity['run']} step {self.identity['step']}"
        return f"InternVL3 baseline from {self.identity['internvl']}"

    @property
    def num_frames(self) -> int:
        return self.spec.num_frames

    @property
    def visual_tokens(self) -> int:
        return self.spec.num_visual_tokens

    @property
    def clip_frames(self) -> int:
        """Frames the encoder turns into visual tokens together (1: a per-frame encoder)."""
        return self.spec.encoder.clip_frames

    @property
    def preprocessing(self) -> dict:
        e = self.spec.encoder
        return {"sampling": self.sampling, "resize": self.resize if self.decoder == "pyav" else "nvdec-linear",
                "decoder": self.decoder, "keyframes_only": self.keyframes_only, "image_size": e.image_size, "pixel_mean": list(e.pixel_mean),
                "pixel_std": list(e.pixel_std)}

    @property
    def fingerprint(self) -> dict:
        """What identifies the model's answers: its source, checkpoint step and the hash of its spec (kernels and
        dtype left out: they change speed, not the function)."""
        return dict(self.identity)

    def frame_plan(self, video_path: str, num_frames: int | None = None):
        """(frame indices over the whole video by the sampling rule, the start time of each visual group)."""
        return self._plan(video_path, num_frames)[:2]

    def _plan(self, video_path: str, num_frames: int | None = None):
        spec = self.spec
        info = video.probe(video_path)
        idx = sample_indices(self.sampling, info.num_frames, num_frames or spec.num_frames)
        if self.keyframes_only:
            idx = snap_to_keyframes(idx, video.keyframe_indices(video_path))
        return idx, group_times(idx, spec.num_frames, spec.visual_groups, info.fps), info.num_frames

    def load_frames(self, video_path: str):
        idx, times, count = self._plan(video_path)
        if self.decoder == "nvdec":
            return nvdec.decode_frames(video_path, idx, self.spec.encoder.image_size, count), times
        return video.decode_frames(video_path, idx, self.spec.encoder.image_size, self.resize), times

    def _prompt(self, prompt: Prompt | str, times) -> np.ndarray:
        prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
        placed = VIDEO_MARKER in prompt.user or GROUP_MARKER in prompt.user  # else the video goes first
        text = prompt.user if placed else f"{VIDEO_MARKER}\n{prompt.user}"
        system = prompt.system if prompt.system is not None else self.system_prompt
        return self.builder.generation_prompt((("user", text),), times, system=system,
                                              assistant_prefix=prompt.assistant_prefix)

    def prompt_ids(self, prompt: Prompt | str, times) -> np.ndarray:
        """The token ids the model is asked with: the chat template around the question, the video's
        placeholders with a separator before each visual group (starting at `times`)."""
        return self._prompt(prompt, times)

    def check_prompt(self, prompt: Prompt | str, times) -> None:
        """Raises (naming the limit) if the prompt does not fit the model."""
        self._prompt(prompt, times)

    def answer_batch(self, frames: list[np.ndarray], times: list[list[float]], prompts: list[Prompt | str], *,
                     max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> list[str]:
        """Greedy (or sampled) answers for a batch; prompts (questions, or `Prompt`s with a system prompt and
        the start of the answer) are left-padded to a common length."""
        ids = [self._prompt(p, t) for t, p in zip(times, prompts)]
        return self.answerer(self.params, ids, frames, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, seed=seed)

    def encode_streaming(self, video_path: str, clips_per_call: int | None = None):
        """(visual tokens (1, N, LLM width), group start times) of one video, its frames decoded piece by piece
        and each piece (`stream_piece`: whole clips) encoded as soon as it is decoded, so the time to the prompt
        is about the longer of decoding and encoding, not their sum."""
        idx, times, count = self._plan(video_path)
        chunk = stream_piece(self.spec.encoder.clip_frames, clips_per_call)
        if self.decoder == "nvdec":  # pieces of whole clips, one per decode session
            chunks = nvdec.stream_frames(video_path, idx, self.spec.encoder.image_size, count, chunk)
        else:
            chunks = video.stream_frames(video_path, idx, self.spec.encoder.image_size, chunk, self.resize)
        return self.answerer.encode_stream(self.params, chunks), times

    def __call__(self, video_path: str, question: str | Prompt, *, stream: bool = True, max_new_tokens: int = 16,
                 temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> str:
        """The answer to `question` about the video at `video_path`; `stream` encodes clips while later ones
        decode (the same visual tokens as decoding the whole video first, `stream=False`)."""
        generation = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
        if not stream:
            frames, times = self.load_frames(video_path)
            return self.answer_batch([frames], [times], [question], **generation)[0]
        visual, times = self.encode_streaming(video_path)
        return self.answerer(self.params, [self._prompt(question, times)], None, visual=visual, **generation)[0]


def _on(array: jax.Array, device) -> jax.Array:
    """`array` on `device`: its own buffer there when it has one (a replicated array's copy), else a copy."""
    for shard in array.addressable_shards:
        if shard.device == device and shard.data.shape == array.shape:
            return shard.data
    return jax.device_put(array, device)


def _digest(spec: VideoLLMSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _run_settings(run_dir: str) -> dict:
    """How the run trained (dtype, encoder MLP kernel), the defaults for how it answers; readers of the model
    itself use spec.json only."""
    cfg = RunDir(run_dir).read_config()
    if cfg is None:
        return {}
    # runs written before `kernels` kept the encoder's MLP kernel in `encoder.mlp_kernel`
    mlp = (cfg.get("kernels") or {}).get("mlp") or (cfg.get("encoder") or {}).get("mlp_kernel")
    return {"dtype": cfg.get("dtype"), "mlp_kernel": mlp}


def internvl_baseline(folder: str, *, num_frames: int = 64, dtype: str = "bfloat16",
                      mlp_kernel: str = "auto", sampling: str | None = None, resize: str | None = None,
                      decoder: str = "pyav", keyframes_only: bool = False, prompt_form: str = "chat") -> VideoQA:
    """The InternVL3 baseline from a whole Hugging Face InternVL folder (`VideoLLMSpec.internvl`). Frames are
    preprocessed as InternVL's reference video loader does by default: its frame indices
    (`sampling="internvl"`), a PIL bicubic stretch to 448x448 (`resize="bicubic"`) and ImageNet normalisation.
    It is asked as its authors ask it (`prompt_form="chat"`: `model.chat`'s system message, then the
    "Frame{i}: <img>...</img>" lines and the question), or as the `-hf` processor does (`"hf"`: no system
    turn). `mlp_kernel="pallas"`: InternViT's fc1 + GELU as one kernel (Hopper GPUs, bfloat16)."""
    spec = VideoLLMSpec.internvl(folder, frames=num_frames)
    tokenizer = spec.load_tokenizer()
    compute = compute_dtype(dtype)
    if mlp_kernel == kernel_choice.AUTO:
        mlp_kernel = kernel_choice.resolve({"mlp": mlp_kernel}, compute)[0]["mlp"]
    graphdef, params = load_internvl_video_llm(spec, folder, dtype=compute, mlp_kernel=mlp_kernel,
                                               video_token_id=tokenizer.video_token_id)
    return VideoQA(spec, tokenizer, graphdef, params, dtype=compute, sampling=sampling or "internvl",
                   resize=resize or "bicubic", identity={"internvl": os.path.abspath(folder), "step": None,
                                                         "spec_sha256": _digest(spec)}, decoder=decoder,
                   keyframes_only=keyframes_only).ask_as(prompt_form)
