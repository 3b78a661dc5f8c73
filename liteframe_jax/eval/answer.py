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
from liteframe_jax.models.generate import generate
from liteframe_jax.models.layers import pure_dict
from liteframe_jax.train import checkpoint, sharding


class VideoQA:
    def __init__(self, run_dir: str):
        from liteframe_jax.train.lma import LMATask
        path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{run_dir!r} is not an LMA run folder (no config.json)")
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
        if config.trainer != "lma":
            raise ValueError(f"{run_dir!r} holds a {config.trainer!r} run, not an LMA run")
        mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=1)))
        self.task = task = LMATask(config, mesh, run_dir, with_data=False)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
        paths = {k: tuple(v.shape) for k, v in mapping.flatten(pure_dict(abstract)).items()}
        params = mapping.flatten(pure_dict(nnx.state(task.build_model(nnx.Rngs(config.seed)))))
        params.update(task.pretrained_params(paths))
        trained, self.step = checkpoint.restore_params(run_dir)
        params.update(mapping.flatten(trained))
        self.graphdef, self.params = graphdef, jax.tree.map(jnp.asarray, mapping.unflatten(params))
        self._embed = jax.jit(lambda p, tok, fr: task.embeds(nnx.merge(graphdef, p), tok, fr))

    def __call__(self, video_path: str, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 0, seed: int = 0) -> str:
        task = self.task
        info = video.probe(video_path)
        idx = uniform_indices(info.num_frames, task.frames_per_video)
        per_group = task.frames_per_video // task.builder.visual_groups
        times = [idx[g * per_group] / (info.fps or 1.0) for g in range(task.builder.visual_groups)]
        frames = video.decode_frames(video_path, idx, task.image_size)[None]
        text = question if VIDEO_MARKER in question else f"{VIDEO_MARKER}\n{question}"
        ids = task.builder.generation_prompt((("user", text),), times)[None]
        embeds = self._embed(self.params, jnp.asarray(ids), jnp.asarray(frames))
        model = nnx.merge(self.graphdef, self.params)
        llm_graphdef, llm_params = nnx.split(model.llm)
        out, lengths = generate(llm_graphdef, llm_params, embeds, jnp.ones(ids.shape, bool),
                                jnp.asarray(task.tokenizer.stop_ids), jax.random.key(seed),
                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                pad_id=task.tokenizer.pad_id)
        tokens = [t for t in np.asarray(out[0, :int(lengths[0])]) if t not in task.tokenizer.stop_ids]
        return task.tokenizer.decode(tokens)
