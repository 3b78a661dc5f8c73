"""`LiteFrameForConditionalGeneration` in vLLM: vLLM's own Qwen2 (`language_model`) with the LiteFrame student
(`vision_tower`) and projector (`multi_modal_projector`) of `liteframe_jax.pytorch`, the modules transformers
runs from the folder. The weights are the folder's: the LLM's names of a plain Qwen2 folder (`model.`,
`lm_head.`) go to `language_model.`, the student's and the projector's keep their names.

`embed_multimodal` turns each video's `pixel_values_videos` (num_frames, 3, S, S) into its visual tokens (clip
by clip through the student, then the projector); vLLM writes them over the `<|video_pad|>` positions that the
processor marked (`liteframe_vllm.processing`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from liteframe_jax.pytorch.encoder import LiteFrameEncoder
from liteframe_jax.pytorch.projector import Projector
from liteframe_vllm.processing import (LiteFrameDummyInputsBuilder, LiteFrameMultiModalProcessor,
                                       LiteFrameProcessingInfo)
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.utils import (AutoWeightsLoader, WeightsMapper, init_vllm_registered_model,
                                              maybe_prefix)
from vllm.multimodal import MULTIMODAL_REGISTRY


@MULTIMODAL_REGISTRY.register_processor(LiteFrameMultiModalProcessor, info=LiteFrameProcessingInfo,
                                        dummy_inputs=LiteFrameDummyInputsBuilder)
class LiteFrameForConditionalGeneration(nn.Module, SupportsMultiModal):
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={"model.": "language_model.model.",
                                                          "lm_head.": "language_model.lm_head."})

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("video"):
            return "<video>"  # what the folder's chat template writes for a video item
        raise ValueError(f"the LiteFrame Video LLM takes videos, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, "video"):
            self.vision_tower = LiteFrameEncoder(config.vision_config)
            self.multi_modal_projector = Projector(config.projector_config) if config.projector_config else None
        with self._mark_language_model(vllm_config):
            # the folder's config is a Qwen2 config with the video fields beside it: vLLM's Qwen2 reads it as is
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        pixels = kwargs.get("pixel_values_videos")
        if pixels is None:
            return []
        videos = list(pixels) if isinstance(pixels, (list, tuple)) else list(pixels.unbind(0))
        tower = self.vision_tower
        dtype = tower.head.weight.dtype
        out = []
        for video in videos:  # (T, 3, S, S)
            x = video.permute(0, 2, 3, 1)  # the student takes channels last
            if x.shape[0] % tower.num_frames:
                raise ValueError(f"{x.shape[0]} frames is not a multiple of the student's {tower.num_frames}-frame "
                                 "clips")
            clips = x.reshape(x.shape[0] // tower.num_frames, tower.num_frames, *x.shape[1:]).to(dtype)
            tokens = tower(clips).reshape(-1, tower.head.out_features)
            if self.multi_modal_projector is not None:
                tokens = self.multi_modal_projector(tokens.to(self.multi_modal_projector.fc1.weight.dtype))
            out.append(tokens)
        return out

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
