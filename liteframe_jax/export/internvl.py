"""An LMA run whose encoder is InternVL3's own tower (the baseline adapted) -> one Hugging Face `internvl`
folder, the layout the published `-hf` checkpoints have, which transformers' InternVLForConditionalGeneration
and AutoProcessor (InternVLProcessor) load without this package:

    config.json                     model_type 'internvl': vision_config, text_config, image_token_id, ...
    model*.safetensors              vision_tower.*, multi_modal_projector.*, language_model.model.*,
                                    language_model.lm_head.weight (LoRA merged)
    tokenizer files                 the run's tokenizer (with <img>, </img> and <IMG_CONTEXT>)
    preprocessor_config.json, video_preprocessor_config.json, processor_config.json

The tensor names and layouts are convert/internvl.py's tables read backwards, so the folder loads back into
this package exactly as it loads the published checkpoints.
"""

from __future__ import annotations

import re

import numpy as np

from liteframe_jax.assembly.specs import InternVitSpec, VideoLLMSpec
from liteframe_jax.convert import internvl as from_hf
from liteframe_jax.convert import mapping
from liteframe_jax.export import hf_folder, qwen2
from liteframe_jax.export.safetensors_out import Tensor

# InternVLProcessor's own tokens: a frame is "<img>" + image_seq_length x "<IMG_CONTEXT>" + "</img>"
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")
# each convert transform read backwards: (the transform, the axes order it gives our layout)
_BACKWARDS = {mapping.identity: None, mapping.linear: (1, 0), mapping.conv2d_hwio: (3, 2, 0, 1)}


class InternVLExportError(ValueError):
    """A run that an `internvl` folder cannot hold, with what is wrong."""


def check_spec(spec: VideoLLMSpec) -> None:
    """Refuse a run whose model the `internvl` format has no place for, naming what."""
    enc = spec.encoder
    if not isinstance(enc, InternVitSpec) or enc.head is None:
        raise InternVLExportError("an 'internvl' folder holds an InternViT tower with InternVL3's projector head")
    if spec.projector is not None:
        raise InternVLExportError(f"the run adds a projector ({spec.projector.kind!r}) after InternVL3's own head; "
                                  "an 'internvl' folder has no place for it (train with projector.kind='none')")
    if enc.vit.position_grid and enc.vit.position_grid != enc.vit.grid:
        raise InternVLExportError(f"the tower runs at {enc.vit.image_size} px with a position table for a "
                                  f"{enc.vit.position_grid}x{enc.vit.position_grid} grid; export it at the size "
                                  "its table was trained at")
    if enc.head.out_features != spec.llm.hidden_size:
        raise InternVLExportError(f"the projector gives width {enc.head.out_features}, the LLM takes "
                                  f"{spec.llm.hidden_size}")
    if spec.separators != "internvl" or spec.video_token != "<IMG_CONTEXT>":
        raise InternVLExportError(f"InternVLProcessor writes frames as 'Frame{{i}}: <img><IMG_CONTEXT>...</img>'; the "
                                  f"run used separators {spec.separators!r} and video token {spec.video_token!r}")


def check_tokenizer(tokenizer) -> None:
    missing = [t for t in IMAGE_TOKENS if tokenizer.token_id(t) is None]
    if missing:
        raise InternVLExportError(f"the run's tokenizer has no {missing}: InternVLProcessor writes them")


def _vision_config(spec: InternVitSpec) -> dict:
    v = spec.vit
    return {"model_type": "internvl_vision", "hidden_size": v.hidden_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "intermediate_size": v.intermediate_size, "hidden_act": v.hidden_act,
            "norm_type": v.norm_type, "layer_norm_eps": v.layer_norm_eps, "image_size": [v.image_size] * 2,
            "patch_size": [v.patch_size] * 2, "num_channels": v.num_channels, "attention_bias": v.attention_bias,
            "use_qk_norm": v.use_qk_norm, "use_absolute_position_embeddings": v.use_absolute_position_embeddings,
            "layer_scale_init_value": v.layer_scale_init_value, "use_mean_pooling": v.use_mean_pooling,
            "initializer_range": v.initializer_range, "use_mask_token": False, "attention_dropout": 0.0,
            "hidden_dropout_prob": 0.0, "projection_dropout": 0.0}


def config(spec: VideoLLMSpec, tokenizer, dtype: str) -> dict:
    """config.json as transformers' InternVLConfig reads it (and convert/internvl.py reads it back)."""
    text = qwen2.config(spec.llm, dtype=dtype, bos_id=tokenizer.bos_id, eos_ids=list(tokenizer.stop_ids),
                        pad_id=tokenizer.pad_id)
    text.pop("architectures")
    head = spec.encoder.head
    return {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
            "vision_config": _vision_config(spec.encoder), "text_config": text,
            "image_token_id": tokenizer.video_token_id, "image_seq_length": spec.encoder.token_grid[1],
            "downsample_ratio": head.downsample_ratio, "projector_hidden_act": head.act,
            "vision_feature_layer": spec.encoder.feature_layer, "vision_feature_select_strategy": "default",
            "tie_word_embeddings": spec.llm.tie_word_embeddings, "torch_dtype": dtype}


def _backwards(table, flat: dict, dtype: str) -> list[Tensor]:
    """Our parameters -> HF tensors through a convert table (external regex, our template, transform)."""
    out = []
    for pattern, template, fn in table:
        ours = re.compile(re.escape(template).replace(re.escape("{0}"), r"(\d+)") + "$")
        for path in sorted(flat):
            m = ours.match(path)
            if not m:
                continue
            name = pattern.replace(r"(\d+)", m.group(1) if m.groups() else "").replace("\\", "")
            value, axes = flat[path], _BACKWARDS[fn]
            shape = tuple(np.shape(value)) if axes is None else tuple(np.shape(value)[a] for a in axes)
            produce = (lambda v=value: v) if axes is None else (lambda v=value, a=axes: np.transpose(np.asarray(v), a))
            out.append(Tensor(name, shape, dtype, produce))
    return out


def tensors(spec: VideoLLMSpec, encoder_flat: dict, llm_flat: dict, dtype: str) -> list[Tensor]:
    """Every tensor of the folder, LoRA merged into the LLM's weights; each of our parameters named once."""
    table = (from_hf.nest(from_hf.vit_table("vision_tower."), "vit")
             + from_hf.nest(from_hf.projector_table(""), "projector"))
    vision = _backwards(table, encoder_flat, dtype)
    if len(vision) != len(encoder_flat):
        named = {t.name for t in vision}
        raise InternVLExportError(f"{len(encoder_flat) - len(vision)} tower parameters have no InternVL name "
                                  f"(of {len(encoder_flat)}; {len(named)} named)")
    return vision + qwen2.tensors(spec.llm, llm_flat, spec.lora, dtype, prefix="language_model.")


def processor_files(spec: VideoLLMSpec) -> dict[str, dict]:
    """InternVLProcessor's configs: one 'Frame{i}: <img>...</img>' per frame, frames resized to the tower's
    size with bicubic resampling and normalised with the run's statistics (InternVL's `build_transform`)."""
    enc = spec.encoder
    size = {"height": enc.image_size, "width": enc.image_size}
    pixels = {"do_resize": True, "size": size, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "image_mean": list(enc.pixel_mean), "image_std": list(enc.pixel_std),
              "do_convert_rgb": True, "processor_class": "InternVLProcessor"}
    return {"preprocessor_config.json": {**pixels, "image_processor_type": "GotOcr2ImageProcessorFast",
                                         "crop_to_patches": False, "min_patches": 1, "max_patches": 12},
            "video_preprocessor_config.json": {**pixels, "video_processor_type": "InternVLVideoProcessor",
                                               "do_sample_frames": False},
            "processor_config.json": {"processor_class": "InternVLProcessor",
                                      "image_seq_length": enc.token_grid[1]}}


def loading_lines(folder_name: str = ".") -> list[str]:
    """The model card's loading section: transformers' own InternVL classes, no custom code."""
    return ["from transformers import AutoProcessor, InternVLForConditionalGeneration",
            f'processor = AutoProcessor.from_pretrained("{folder_name}")',
            f'model = InternVLForConditionalGeneration.from_pretrained("{folder_name}")',
            *hf_folder.answering_lines('videos=frames, return_tensors="pt")  # frames: uint8 (T, H, W, 3)')]
