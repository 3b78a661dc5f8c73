"""vLLM's multimodal processing for the LiteFrame Video LLM: a video (frames, with vLLM's metadata where a loader
decoded it) -> `pixel_values_videos` and the prompt with each `<video>` replaced by the block the model trained
with, token for token what the folder's transformers processor gives.

- Frames: the trained ones, `num_frames` by the uniform rule. A video that vLLM's loader decoded arrives as
  those frames already (`liteframe_vllm.video`) or as the whole video; frames given without metadata (an array
  to `vllm.LLM`) are the whole video, as transformers' processor takes an array. Frames sampled by any other
  rule are refused. Then resized and normalised by `liteframe_jax.pytorch.hf_processor`'s code.
- Prompt: the text of the block (separators and one `<|video_pad|>` per visual token) replaces `<video>` in the
  decoded prompt, which is tokenised again as a whole, as transformers' processor tokenises the expanded text
  (a separator's last new line and the prompt's next one can merge into one token). The visual tokens fill the
  `<|video_pad|>` positions of each video's block, in order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from transformers import BatchFeature

from liteframe_jax.pytorch.hf_processor import VIDEO_MARKER, resize_frames, uniform_indices, video_block
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import (BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo,
                                        PromptReplacement, PromptUpdateDetails)
from vllm.multimodal.processing.processor import HFMultiModalInputs, PlaceholderFeaturesInfo


class LiteFrameProcessingInfo(BaseProcessingInfo):
    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"video": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"video": self.num_visual_tokens}

    @property
    def num_visual_tokens(self) -> int:
        return int(self.get_hf_config().num_visual_tokens)

    def layout(self, times: list[float]) -> str:
        """The text that stands for one video whose visual groups start at `times` (seconds)."""
        processor = self.get_hf_processor()
        return video_block({"video_token": processor.video_token, "tokens_per_group": processor.tokens_per_group,
                            "visual_groups": processor.video_processor.visual_groups,
                            "separators": processor.separators}, times)


class LiteFrameDummyInputsBuilder(BaseDummyInputsBuilder[LiteFrameProcessingInfo]):
    """What vLLM profiles memory with: videos of the trained frame count and size."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return VIDEO_MARKER * mm_counts.get("video", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        videos = self.info.get_hf_processor().video_processor
        return {"video": self._get_dummy_videos(width=videos.size, height=videos.size, num_frames=videos.num_frames,
                                                num_videos=mm_counts.get("video", 0),
                                                overrides=mm_options.get("video") if mm_options else None)}


def trained_frames(video, metadata: dict | None, num_frames: int) -> tuple[torch.Tensor, list[int], float | None]:
    """(uint8 (num_frames, H, W, 3), their indices in the video, its frames per second or None)."""
    frames = torch.as_tensor(np.asarray(video))
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if not metadata or metadata.get("frames_indices") is None:  # an array: the whole video
        indices = uniform_indices(frames.shape[0], num_frames)
        return frames[indices], indices, None
    got, total = [int(i) for i in metadata["frames_indices"]], int(metadata["total_num_frames"])
    want, fps = uniform_indices(total, num_frames), metadata.get("fps") or None
    if got == want:
        return frames, want, fps
    if got == list(range(total)):
        return frames[want], want, fps
    raise ValueError(f"the video reached the processor as frames {got[:6]}... of {total}, sampled by another rule "
                     f"than the trained one ({num_frames} frames: {want[:6]}...); load it with the 'liteframe' "
                     f"video backend and num_frames {num_frames}, or all frames (num_frames -1)")


class LiteFrameMultiModalProcessor(BaseMultiModalProcessor[LiteFrameProcessingInfo]):
    def _get_hf_mm_inputs(self, mm_items, hf_kwargs) -> HFMultiModalInputs:
        # the frames with their metadata: which frames of the video they are, and its frame rate
        inputs = super()._get_hf_mm_inputs(mm_items, hf_kwargs)
        if "videos" in inputs.hf_data:
            videos = list(inputs.hf_data["videos"])
            metadata = mm_items["video"].metadata
            metadata = metadata if isinstance(metadata, list) else [metadata] * len(videos)
            inputs = inputs._replace(hf_data={**inputs.hf_data, "videos": list(zip(videos, metadata))})
        return inputs

    def _call_hf_processor(self, hf_data, hf_kwargs) -> BatchFeature:
        processor = self.info.get_hf_processor().video_processor
        per_group = processor.num_frames // processor.visual_groups
        pixels, times = [], []
        for video, metadata in hf_data["videos"]:
            frames, indices, fps = trained_frames(video, metadata, processor.num_frames)
            frames = resize_frames(frames, processor.size)
            pixels.append(processor.normalise(frames).permute(0, 3, 1, 2))  # (T, 3, S, S)
            times.append([indices[g * per_group] / (fps or 1.0) for g in range(processor.visual_groups)])
        return BatchFeature({"pixel_values_videos": torch.stack(pixels),
                             "video_times": torch.tensor(times, dtype=torch.float64)})

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values_videos": MultiModalFieldConfig.batched("video"),
                "video_times": MultiModalFieldConfig.batched("video")}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        tokenizer = self.info.get_tokenizer()
        video_id = int(self.info.get_hf_config().video_token_id)

        def block(item_idx: int) -> PromptUpdateDetails:
            times = out_mm_kwargs["video"][item_idx]["video_times"].data.tolist()
            ids = tokenizer.encode(self.info.layout(times), add_special_tokens=False)
            return PromptUpdateDetails.select_token_id(ids, embed_token_id=video_id)

        marker = tokenizer.encode(VIDEO_MARKER, add_special_tokens=False)
        return [PromptReplacement(modality="video", target=marker, replacement=block)]

    def _apply_prompt_updates(self, token_ids, mm_prompt_updates):
        # in text, then the whole text tokenised once: the ids of transformers' processor (see the docstring)
        new_ids, _ = self._apply_prompt_updates_via_text(token_ids, mm_prompt_updates)
        return new_ids, self._find_mm_placeholders(new_ids, mm_prompt_updates)

    def _find_mm_placeholders(self, new_token_ids, mm_prompt_updates):
        """Each video's span: from its first `<|video_pad|>` to its last, `num_visual_tokens` of them in order,
        the separators between them not embedded."""
        video_id, per_video = int(self.info.get_hf_config().video_token_id), self.info.num_visual_tokens
        count = len(mm_prompt_updates.get("video", []))
        at = [i for i, t in enumerate(new_token_ids) if t == video_id]
        if len(at) != count * per_video:
            raise ValueError(f"the prompt holds {len(at)} video placeholder tokens for {count} videos of "
                             f"{per_video} visual tokens: put one {VIDEO_MARKER} per video in the prompt, and no "
                             "placeholder token of its own")
        found = []
        for k in range(count):
            start, end = at[k * per_video], at[(k + 1) * per_video - 1] + 1
            tokens = list(new_token_ids[start:end])
            found.append(PlaceholderFeaturesInfo(modality="video", item_idx=k, start_idx=start, tokens=tokens,
                                                 is_embed=torch.tensor(tokens) == video_id))
        return {"video": found} if found else {}
