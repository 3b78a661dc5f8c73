"""Answer a question about a video file with the Video LLM of an LMA run (its latest checkpoint).

The run's own `config.json` rebuilds the model: frozen parts come from their pretrained sources (as during
training), trained parts from the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from liteframe_jax.convert import mapping
from liteframe_jax.data import video
from liteframe_jax.data.conversations import VIDEO_MARKER
from liteframe_jax.data.sampling import sample_indices
from liteframe_jax.eval.prompts import Prompt
from liteframe_jax.models.layers import pure_dict
from liteframe_jax.train import checkpoint, sharding

# InternVL's reference transform normalises with the ImageNet statistics (`build_transform`).
INTERNVL_MEAN, INTERNVL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VideoQA:
    """A Video LLM ready to answer: from an LMA run (`from_run`) or from an LMA-style config whose parts are all
    pretrained (e.g. the InternVL3 baseline from one Hugging Face folder, `internvl_baseline`)."""

    def __init__(self, config, run_dir: str | None = None, workdir: str | None = None, *,
                 sampling: str | None = None, resize: str | None = None):
        """`sampling` / `resize`: which frames (data/sampling.py) and which resize filter (data/video.py);
        by default the training pipeline's, `uniform` and `bilinear`."""
        from liteframe_jax.train.lma import LMATask
        self.sampling, self.resize = sampling or "uniform", resize or "bilinear"
        sample_indices(self.sampling, 1, 1)  # an unknown rule fails here, before any model is built
        if self.resize not in video.RESIZE_FILTERS:
            raise ValueError(f"unknown resize filter {self.resize!r}; choose one of {video.RESIZE_FILTERS}")
        mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=1)))
        self.config = config
        self.task = task = LMATask(config, mesh, run_dir or workdir or ".", with_data=False)
        # Training refuses rows over data.max_length; at inference the LLM's own context is the limit.
        task.builder.max_length = task.llm_cfg.max_position_embeddings
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
        paths = {k: tuple(v.shape) for k, v in mapping.flatten(pure_dict(abstract)).items()}
        params = mapping.flatten(pure_dict(nnx.state(task.build_model(nnx.Rngs(config.seed)))))
        params.update(task.pretrained_params(paths))
        self.step, self.source = None, "pretrained parts only"
        self.run_dir = None if run_dir is None else os.path.abspath(run_dir)
        if run_dir is not None:
            trained, self.step = checkpoint.restore_params(run_dir)
            params.update(mapping.flatten(trained))
            self.source = f"{run_dir} step {self.step}"
        self.graphdef, self.params = graphdef, jax.tree.map(jnp.asarray, mapping.unflatten(params))
        self._embed = jax.jit(lambda p, tok, fr: task.embeds(nnx.merge(graphdef, p), tok, fr))
        llm_graphdef, self.llm_params = nnx.split(nnx.merge(graphdef, self.params).llm)
        self.llm_graphdef = llm_graphdef

    @classmethod
    def from_run(cls, run_dir: str, mlp_kernel: str | None = None, **preprocess) -> "VideoQA":
        """`mlp_kernel` ('xla' | 'pallas'), when given, replaces the run's `encoder.mlp_kernel`: the kernel
        changes speed, not the function, so a run trained with XLA's MLP can be evaluated with the fused one."""
        path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{run_dir!r} is not an LMA run folder (no config.json)")
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
        if config.trainer != "lma":
            raise ValueError(f"{run_dir!r} holds a {config.trainer!r} run, not an LMA run")
        if mlp_kernel is not None:
            config.encoder.mlp_kernel = mlp_kernel
        return cls(config, run_dir, **preprocess)

    @property
    def num_frames(self) -> int:
        return self.task.frames_per_video

    @property
    def visual_tokens(self) -> int:
        return self.task.builder.visual_groups * self.task.builder.tokens_per_group

    @property
    def preprocessing(self) -> dict:
        return {"sampling": self.sampling, "resize": self.resize, "image_size": self.task.image_size,
                "pixel_mean": list(self.task.pixel_mean), "pixel_std": list(self.task.pixel_std)}

    @property
    def fingerprint(self) -> dict:
        """What identifies the model's answers: its run folder, checkpoint step and the hash of its config (the
        MLP kernel left out: it changes speed, not the function)."""
        config = json.loads(self.config.to_json_best_effort())
        config.get("encoder", {}).pop("mlp_kernel", None)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        return {"run": self.run_dir, "step": self.step, "config_sha256": digest}

    def frame_plan(self, video_path: str, num_frames: int | None = None):
        """(frame indices over the whole video by the sampling rule, the start time of each visual group)."""
        task = self.task
        info = video.probe(video_path)
        idx = sample_indices(self.sampling, info.num_frames, num_frames or task.frames_per_video)
        per_group = task.frames_per_video // task.builder.visual_groups
        return idx, [idx[g * per_group] / (info.fps or 1.0) for g in range(task.builder.visual_groups)]

    def load_frames(self, video_path: str):
        idx, times = self.frame_plan(video_path)
        return video.decode_frames(video_path, idx, self.task.image_size, self.resize), times

    def _prompt(self, prompt: Prompt | str, times) -> np.ndarray:
        prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
        text = prompt.user if VIDEO_MARKER in prompt.user else f"{VIDEO_MARKER}\n{prompt.user}"
        return self.task.builder.generation_prompt((("user", text),), times, system=prompt.system,
                                                   assistant_prefix=prompt.assistant_prefix)

    def check_prompt(self, prompt: Prompt | str, times) -> None:
        """Raises (naming the limit) if the prompt does not fit the model."""
        self._prompt(prompt, times)

    def answer_batch(self, frames: list[np.ndarray], times: list[list[float]], prompts: list[Prompt | str], *,
                     max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> list[str]:
        """Greedy (or sampled) answers for a batch; prompts (questions, or `Prompt`s with a system prompt and
        the start of the answer) are left-padded to a common length."""
        ids = [self._prompt(p, t) for t, p in zip(times, prompts)]
        return self.task.answer_prompts(self._embed, self.params, self.llm_graphdef, self.llm_params, ids, frames,
                                        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                        seed=seed)

    def __call__(self, video_path: str, question: str, **kwargs) -> str:
        frames, times = self.load_frames(video_path)
        return self.answer_batch([frames], [times], [question], **kwargs)[0]


def internvl_baseline(folder: str, *, num_frames: int = 64, dtype: str = "bfloat16",
                      mlp_kernel: str = "xla", sampling: str | None = None, resize: str | None = None) -> VideoQA:
    """The InternVL3 baseline from a whole Hugging Face InternVL folder: its tower, projector, LLM and
    tokenizer; frames as "Frame{k}: <img><IMG_CONTEXT>...</img>" lines, exactly as transformers'
    InternVLProcessor writes video prompts. Frames are preprocessed as InternVL's reference video loader
    does by default: its frame indices (`sampling="internvl"`), a PIL bicubic stretch to 448x448
    (`resize="bicubic"`) and ImageNet normalisation. `mlp_kernel="pallas"`: InternViT's fc1 + GELU as one
    kernel (Hopper GPUs, bfloat16), as `bench latency` times it."""
    from liteframe_jax.jobs import load_config_file
    c = load_config_file("lma", "demo")
    c.encoder.kind, c.encoder.init, c.encoder.mlp_kernel = "internvl", folder, mlp_kernel
    c.llm.init, c.tokenizer, c.video_token = folder, folder, "<IMG_CONTEXT>"
    c.projector.kind = "none"
    c.data.num_frames, c.data.separators, c.data.max_length = num_frames, "internvl", 65_536
    c.dtype = dtype
    c.data.pixel_mean, c.data.pixel_std = INTERNVL_MEAN, INTERNVL_STD
    return VideoQA(c, sampling=sampling or "internvl", resize=resize or "bicubic")
