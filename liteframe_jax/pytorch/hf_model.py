"""The LiteFrame Video LLM as a transformers model: `LiteFrameForConditionalGeneration`, the Qwen2 causal LM with
the student (`vision_tower`) and the projector (`multi_modal_projector`) beside it. Imports torch and
transformers; the export copies it into the Hugging Face folder as `modeling_liteframe.py`, loaded through
`AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)`.

It subclasses `Qwen2ForCausalLM`, so the LLM's tensors keep the names of a plain Qwen2 folder
(`model.layers.N...`, `lm_head.weight`) and `generate` is transformers' own. `pixel_values_videos` (B, T, 3, S, S),
normalised by the processor, go through the student clip by clip and the projector; the visual tokens replace
the embeddings of the video placeholder tokens in `input_ids`, in order, before the LLM runs.
"""

from __future__ import annotations

import torch

from transformers import Qwen2ForCausalLM

from liteframe_jax.pytorch.encoder import LiteFrameEncoder
from liteframe_jax.pytorch.hf_config import LiteFrameConfig
from liteframe_jax.pytorch.projector import Projector


class LiteFrameForConditionalGeneration(Qwen2ForCausalLM):
    config_class = LiteFrameConfig

    def __init__(self, config: LiteFrameConfig):
        super().__init__(config)
        self.vision_tower = LiteFrameEncoder(config.vision_config)
        self.multi_modal_projector = Projector(config.projector_config) if config.projector_config else None

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LiteFrameEncoder):  # its pixel statistics are buffers that no weight file holds
            with torch.no_grad():
                module.pixel_mean.copy_(torch.tensor(module.config["pixel_mean"], dtype=module.pixel_mean.dtype))
                module.pixel_std.copy_(torch.tensor(module.config["pixel_std"], dtype=module.pixel_std.dtype))

    def get_video_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) normalised frames, T a multiple of the student's clip -> (B, visual tokens, LLM width)."""
        tower = self.vision_tower
        x = pixel_values_videos.permute(0, 1, 3, 4, 2)  # the student takes channels last
        b, t = x.shape[:2]
        if t % tower.num_frames:
            raise ValueError(f"{t} frames is not a multiple of the student's {tower.num_frames}-frame clips")
        clips = x.reshape(b * (t // tower.num_frames), tower.num_frames, *x.shape[2:]).to(tower.head.weight.dtype)
        tokens = tower(clips).reshape(b, -1, tower.head.out_features)
        if self.multi_modal_projector is not None:
            tokens = self.multi_modal_projector(tokens.to(self.multi_modal_projector.fc1.weight.dtype))
        return tokens

    def forward(self, input_ids=None, pixel_values_videos=None, inputs_embeds=None, **kwargs):
        # only a step that holds the placeholders takes the video (the prompt); decoding steps after it do not
        video_id = self.config.video_token_id
        if pixel_values_videos is not None and input_ids is not None and bool((input_ids == video_id).any()):
            inputs_embeds = self.get_input_embeddings()(input_ids)
            visual = self.get_video_features(pixel_values_videos).to(inputs_embeds.dtype)
            at = input_ids == video_id
            if int(at.sum()) != visual.shape[0] * visual.shape[1]:
                raise ValueError(f"the prompt holds {int(at.sum())} video placeholders for "
                                 f"{visual.shape[0] * visual.shape[1]} visual tokens")
            inputs_embeds = inputs_embeds.masked_scatter(at[..., None].expand_as(inputs_embeds), visual)
            input_ids = None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
