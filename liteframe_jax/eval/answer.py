"""Answer a question about a video file with the Video LLM of an LMA run (its latest checkpoint).

The run's own `config.json` rebuilds the model: frozen parts come from their pretrained sources (as during
training), trained parts from the checkpoint.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from liteframe_jax.convert import mapping
from liteframe_jax.data import video
from liteframe_jax.data.conversations import VIDEO_MARKER, uniform_indices
from liteframe_jax.models.layers import pure_dict
from liteframe_jax.train import checkpoint, sharding


class VideoQA:
    """A Video LLM ready to answer: from an LMA run (`from_run`) or from an LMA-style config whose parts are all
    pretrained (e.g. the InternVL3 baseline from one Hugging Face folder, `internvl_baseline`)."""

    def __init__(self, config, run_dir: str | None = None, workdir: str | None = None):
        from liteframe_jax.train.lma import LMATask
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
        if run_dir is not None:
            trained, self.step = checkpoint.restore_params(run_dir)
            params.update(mapping.flatten(trained))
            self.source = f"{run_dir} step {self.step}"
        self.graphdef, self.params = graphdef, jax.tree.map(jnp.asarray, mapping.unflatten(params))
        self._embed = jax.jit(lambda p, tok, fr: task.embeds(nnx.merge(graphdef, p), tok, fr))
        llm_graphdef, self.llm_params = nnx.split(nnx.merge(graphdef, self.params).llm)
        self.llm_graphdef = llm_graphdef

    @classmethod
    def from_run(cls, run_dir: str, mlp_kernel: str | None = None) -> "VideoQA":
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
        return cls(config, run_dir)

    @property
    def num_frames(self) -> int:
        return self.task.frames_per_video

    @property
    def visual_tokens(self) -> int:
        return self.task.builder.visual_groups * self.task.builder.tokens_per_group

    def frame_plan(self, video_path: str, num_frames: int | None = None):
        """(frame indices uniform over the whole video, the start time of each visual group)."""
        task = self.task
        info = video.probe(video_path)
        idx = uniform_indices(info.num_frames, num_frames or task.frames_per_video)
        per_group = task.frames_per_video // task.builder.visual_groups
        return idx, [idx[g * per_group] / (info.fps or 1.0) for g in range(task.builder.visual_groups)]

    def load_frames(self, video_path: str):
        idx, times = self.frame_plan(video_path)
        return video.decode_frames(video_path, idx, self.task.image_size), times

    def _prompt(self, question: str, times) -> np.ndarray:
        text = question if VIDEO_MARKER in question else f"{VIDEO_MARKER}\n{question}"
        return self.task.builder.generation_prompt((("user", text),), times)

    def check_prompt(self, question: str, times) -> None:
        """Raises (naming the limit) if the prompt does not fit the model."""
        self._prompt(question, times)

    def answer_batch(self, frames: list[np.ndarray], times: list[list[float]], questions: list[str], *,
                     max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> list[str]:
        """Greedy (or sampled) answers for a batch; prompts are left-padded to a common length."""
        prompts = [self._prompt(q, t) for t, q in zip(times, questions)]
        return self.task.answer_prompts(self._embed, self.params, self.llm_graphdef, self.llm_params, prompts, frames,
                                        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                        seed=seed)

    def __call__(self, video_path: str, question: str, **kwargs) -> str:
        frames, times = self.load_frames(video_path)
        return self.answer_batch([frames], [times], [question], **kwargs)[0]


def internvl_baseline(folder: str, *, num_frames: int = 64, dtype: str = "bfloat16",
                      mlp_kernel: str = "xla") -> VideoQA:
    """The InternVL3 baseline from a whole Hugging Face InternVL folder: its tower, projector, LLM and
    tokenizer; frames as "Frame{k}: <img><IMG_CONTEXT>...</img>" lines, exactly as transformers'
    InternVLProcessor writes video prompts. `mlp_kernel="pallas"`: InternViT's fc1 + GELU as one kernel
    (Hopper GPUs, bfloat16), as `bench latency` times it."""
    from liteframe_jax.jobs import load_config_file
    c = load_config_file("lma", "demo")
    c.encoder.kind, c.encoder.init, c.encoder.mlp_kernel = "internvl", folder, mlp_kernel
    c.llm.init, c.tokenizer, c.video_token = folder, folder, "<IMG_CONTEXT>"
    c.projector.kind = "none"
    c.data.num_frames, c.data.separators, c.data.max_length = num_frames, "internvl", 65_536
    c.dtype = dtype
    return VideoQA(c)
