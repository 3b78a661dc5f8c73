"""Answering with a built Video LLM: token-id prompts and their frames in, decoded text out.

Used by LMA's held-out evaluation during training and by `eval.answer.VideoQA` (generation and benchmarks),
so both answer the same way. A batch can be split over several devices of this process (`devices`): each
answers its share of the questions with its own copy of the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liteframe_jax.data import nvdec
from liteframe_jax.models.generate import generate

# Prompts are left-padded to a multiple of this many tokens: the jitted embedding and generation compile once
# per width, and benchmark prompts differ in length from batch to batch.
PROMPT_WIDTH_STEP = 64


class Answerer:
    def __init__(self, spec, tokenizer, graphdef, dtype, *, beside_decoding: bool = False, devices=None):
        """`beside_decoding`: the streamed encoder runs while NVDEC sessions decode, so it is compiled without
        CUDA graphs (`nvdec.jit_beside_decoding`). `devices` (more than one): each batch of prompts with their
        frames is split over them, padded to a multiple of them; the parameters given to each call must then
        be replicated on them (`replicated`)."""
        self.spec, self.tokenizer, self.graphdef, self.dtype = spec, tokenizer, graphdef, dtype
        self.devices = tuple(devices or ())
        self.batch_sharding = None
        if len(self.devices) > 1:
            mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
            self.batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        self._embed = jax.jit(lambda p, tok, fr: spec.embeds(nnx.merge(graphdef, p), tok, fr, dtype))
        self._embed_with = jax.jit(lambda p, tok, vis: spec.embeds_with(nnx.merge(graphdef, p), tok, vis))
        jit = nvdec.jit_beside_decoding if beside_decoding else jax.jit
        self._encode = jit(lambda p, fr: spec.visual_tokens(nnx.merge(graphdef, p), fr, dtype))

    def replicated(self, params):
        """`params` placed for this answerer: a copy on each of its devices (several), or left as they are."""
        if self.batch_sharding is None:
            return params
        everywhere = jax.sharding.NamedSharding(self.batch_sharding.mesh, jax.sharding.PartitionSpec())
        return jax.device_put(params, everywhere)

    def encode_stream(self, params, chunks) -> jax.Array:
        """Visual tokens (1, num_visual_tokens, LLM width) of one video whose frames arrive in `chunks` (uint8
        (n, S, S, 3), n a multiple of the encoder's clip), each encoded as soon as it arrives: JAX dispatches
        the encoder without waiting for it, so the device encodes a clip while the host decodes the next."""
        parts = [self._encode(params, jnp.asarray(c)[None]) for c in chunks]
        return jnp.concatenate(parts, axis=1)

    def token_ids(self, params, prompts: list[np.ndarray], frames: list[np.ndarray] | None, *, max_new_tokens: int,
                  temperature: float = 0.0, top_k: int = 0, seed: int = 0, visual=None) -> list[list[int]]:
        """Prompts (token ids, each with its uint8 frames, or with `visual`: their visual tokens, encoded before)
        -> each answer's token ids, up to and including its stop token. Prompts are left-padded so every one ends
        at the same column. Split over several devices, a batch of frames is padded with copies of its last
        prompt to a multiple of them (their answers dropped); prompts with `visual` (one streamed request) are
        not split."""
        asked = len(prompts)
        split = self.batch_sharding is not None and visual is None
        if split and asked % len(self.devices):
            extra = len(self.devices) - asked % len(self.devices)
            prompts, frames = list(prompts) + [prompts[-1]] * extra, list(frames) + [frames[-1]] * extra
        width = -(-max(len(p) for p in prompts) // PROMPT_WIDTH_STEP) * PROMPT_WIDTH_STEP
        pad = self.tokenizer.pad_id
        ids = np.full((len(prompts), width), pad, np.int32)
        valid = np.zeros((len(prompts), width), bool)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], valid[i, width - len(p):] = p, True
        if visual is not None:
            embeds = self._embed_with(params, jnp.asarray(ids), visual)
        elif split:  # each device gets its rows straight from the host (frames decoded on a GPU pass through it)
            put = lambda x: jax.device_put(x, self.batch_sharding)
            ids, valid = put(ids), put(valid)
            embeds = self._embed(params, ids, put(np.stack([np.asarray(f) for f in frames])))
        else:
            # numpy frames travel to the device here; frames decoded on the GPU stay there
            embeds = self._embed(params, jnp.asarray(ids), jnp.stack([jnp.asarray(f) for f in frames]))
        llm_graphdef, llm_params = nnx.split(nnx.merge(self.graphdef, params).llm)
        out, lengths = generate(llm_graphdef, llm_params, embeds, jnp.asarray(valid),
                                jnp.asarray(self.tokenizer.stop_ids), jax.random.key(seed),
                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, pad_id=pad)
        out, lengths = np.asarray(out), np.asarray(lengths)
        return [[int(t) for t in out[i, :lengths[i]]] for i in range(asked)]

    def __call__(self, params, prompts: list[np.ndarray], frames: list[np.ndarray] | None, **generation
                 ) -> list[str]:
        """Prompts and their frames -> the answers as text (stop tokens left out); `generation` as `token_ids`."""
        stops = set(self.tokenizer.stop_ids)
        return [self.tokenizer.decode([t for t in answer if t not in stops])
                for answer in self.token_ids(params, prompts, frames, **generation)]
