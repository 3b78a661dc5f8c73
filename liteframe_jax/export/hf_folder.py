"""An exported Video LLM as one Hugging Face folder that stands alone (`OUT/hf/`), loaded with transformers'
Auto classes and `trust_remote_code=True`, never with this package:

    config.json                    a Qwen2 configuration plus the student, the projector and the video token,
                                   with `architectures` and `auto_map` (AutoConfig, AutoModelForImageTextToText)
    generation_config.json         greedy, stopping at the end-of-turn / end-of-text tokens
    processor_config.json, video_preprocessor_config.json
                                   the prompt's video block and the frames as trained (sampling, size, statistics),
                                   with `auto_map` (AutoProcessor, AutoVideoProcessor)
    chat_template.jinja            the tokenizer's chat template, a message's video item rendered as `<video>`
    tokenizer files                as in `llm/`
    *.py                           the model and processor code: `liteframe_jax/pytorch/`'s files (torch and
                                   transformers only), their imports of each other made relative
    model.safetensors.index.json   the weights: the LLM's files of `llm/` (hard links: no second copy on disk)
                                   and the student and projector under `vision_tower.` / `multi_modal_projector.`
    README.md                      the model card
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
from safetensors import safe_open

from liteframe_jax.export.safetensors_out import Tensor, write_file, write_model

PYTORCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch")
# liteframe_jax/pytorch/<key>.py -> <value>.py in the folder
CODE_FILES = {"hf_config": "configuration_liteframe", "hf_model": "modeling_liteframe",
              "hf_processor": "processing_liteframe", "encoder": "liteframe_encoder",
              "projector": "liteframe_projector", "weights": "liteframe_weights"}
AUTO_MAP = {"AutoConfig": "configuration_liteframe.LiteFrameConfig",
            "AutoModelForImageTextToText": "modeling_liteframe.LiteFrameForConditionalGeneration"}
PROCESSOR = "processing_liteframe.LiteFrameProcessor"
VIDEO_PROCESSOR = "processing_liteframe.LiteFrameVideoProcessor"
VIDEO_MARKER = "<video>"  # pytorch/hf_processor.py replaces it with the video block
_OUR_IMPORT = re.compile(r"^from liteframe_jax\.pytorch\.(\w+) import", re.MULTILINE)
_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}


def copy_code(folder: str) -> list[str]:
    """The folder's Python files, from `liteframe_jax/pytorch/`, with `from liteframe_jax.pytorch.x import`
    made `from .x' import` (transformers copies a remote-code file's relative imports beside it)."""
    def relative(m: re.Match) -> str:
        if m.group(1) not in CODE_FILES:
            raise ValueError(f"the exported code imports liteframe_jax.pytorch.{m.group(1)}, which it does not copy")
        return f"from .{CODE_FILES[m.group(1)]} import"

    names = []
    for ours, theirs in CODE_FILES.items():
        with open(os.path.join(PYTORCH_DIR, f"{ours}.py")) as f:
            text = _OUR_IMPORT.sub(relative, f.read())
        if re.search(r"^\s*(from|import)\s+liteframe_jax", text, re.MULTILINE):
            raise ValueError(f"pytorch/{ours}.py imports liteframe_jax in a way the export cannot make relative")
        with open(os.path.join(folder, f"{theirs}.py"), "w") as f:
            f.write(text)
        names.append(f"{theirs}.py")
    return names


def chat_template(tokenizer_template: str, system_prompt: str | None) -> str:
    """The tokenizer's template after a preamble that turns each message's content list into text (a video
    item -> `<video>` and a new line, a text item -> its text, as training wrote `<video>\\n{question}`) and puts
    the run's system prompt first where the messages have none."""
    system = json.dumps(system_prompt) if system_prompt else "none"
    preamble = (
        "{%- set ns = namespace(messages=[]) -%}"
        f"{{%- set default_system = {system} -%}}"
        "{%- if default_system and (messages | length == 0 or messages[0]['role'] != 'system') -%}"
        "{%- set ns.messages = [{'role': 'system', 'content': default_system}] -%}{%- endif -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set ns.messages = ns.messages + [m] -%}"
        "{%- else -%}{%- set parts = namespace(text='') -%}"
        "{%- for item in m['content'] -%}"
        f"{{%- if item['type'] == 'video' -%}}{{%- set parts.text = parts.text ~ '{VIDEO_MARKER}\\n' -%}}"
        "{%- elif item['type'] == 'text' -%}{%- set parts.text = parts.text ~ item['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': parts.text}] -%}"
        "{%- endif -%}{%- endfor -%}"
        "{%- set messages = ns.messages -%}")
    return preamble + tokenizer_template


def _tokenizer_template(llm_dir: str, default: str) -> str:
    path = os.path.join(llm_dir, "chat_template.jinja")
    if os.path.isfile(path):
        return open(path).read()
    with open(os.path.join(llm_dir, "tokenizer_config.json")) as f:
        return json.load(f).get("chat_template") or default


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, dst)


def _file_index(path: str) -> tuple[dict[str, str], int]:
    """{tensor: file name} and its bytes, from the file's header through `safe_open`."""
    names, size = {}, 0
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            info = f.get_slice(name)
            names[name] = os.path.basename(path)
            size += int(np.prod(info.get_shape(), dtype=np.int64)) * _BYTES[info.get_dtype()]
    return names, size


def _llm_files(folder: str, llm_dir: str, llm_tensors: list[Tensor] | None, max_bytes: int) -> list[str]:
    """The LLM's safetensors files in `folder`: `llm/`'s own, linked (`llm_tensors` None: llm/ holds the merged
    weights), or written from `llm_tensors` (LoRA kept apart in llm/, merged here)."""
    if llm_tensors is None:
        names = []
        for name in sorted(os.listdir(llm_dir)):
            if name.endswith(".safetensors"):
                _link_or_copy(os.path.join(llm_dir, name), os.path.join(folder, f"llm-{name}"))
                names.append(f"llm-{name}")
        return names
    written = write_model(folder, llm_tensors, max_shard_bytes=max_bytes, base="llm-model")
    for name in written:
        if name.endswith(".index.json"):
            os.remove(os.path.join(folder, name))  # model.safetensors.index.json lists every file
    return [n for n in written if n.endswith(".safetensors")]


def write(folder: str, *, llm_dir: str, llm_config: dict, student_config: dict, projector_config: dict | None,
          vision_tensors: list[Tensor], llm_tensors: list[Tensor] | None, layout: dict, default_template: str,
          max_bytes: int) -> list[str]:
    """Write the folder; `layout`: the root config.json's video layout (video token and its id, frames, groups,
    separators, image size, system prompt). Returns the names written."""
    os.makedirs(folder)
    files = copy_code(folder)
    config = {**llm_config, "model_type": "liteframe", "architectures": ["LiteFrameForConditionalGeneration"],
              "auto_map": AUTO_MAP, "vision_config": student_config, "projector_config": projector_config,
              "video_token_id": layout["video_token_id"], "num_visual_tokens": layout["num_visual_tokens"]}
    _write_json(os.path.join(folder, "config.json"), config)
    for name in sorted(os.listdir(llm_dir)):  # generation config and tokenizer files, as llm/ has them
        if not (name.endswith((".safetensors", ".safetensors.index.json")) or name in ("config.json",
                                                                                       "chat_template.jinja")):
            shutil.copyfile(os.path.join(llm_dir, name), os.path.join(folder, name))
            files.append(name)
    with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
        f.write(chat_template(_tokenizer_template(llm_dir, default_template), layout.get("system_prompt")))
    _write_json(os.path.join(folder, "processor_config.json"), {
        "processor_class": "LiteFrameProcessor", "auto_map": {"AutoProcessor": PROCESSOR},
        "video_token": layout["video_token"], "tokens_per_group": layout["tokens_per_group"],
        "separators": layout["separators"]})
    _write_json(os.path.join(folder, "video_preprocessor_config.json"), {
        "video_processor_type": "LiteFrameVideoProcessor", "processor_class": "LiteFrameProcessor",
        "auto_map": {"AutoVideoProcessor": VIDEO_PROCESSOR, "AutoProcessor": PROCESSOR},
        "num_frames": layout["num_frames"], "size": layout["image_size"], "image_mean": student_config["pixel_mean"],
        "image_std": student_config["pixel_std"], "visual_groups": layout["visual_groups"], "sampling": "uniform",
        "resize": "bilinear"})
    files += ["chat_template.jinja", "config.json", "processor_config.json", "video_preprocessor_config.json"]

    weights = _llm_files(folder, llm_dir, llm_tensors, max_bytes)
    write_file(os.path.join(folder, "vision-model.safetensors"), vision_tensors)
    weight_map, total = {}, 0
    for name in weights + ["vision-model.safetensors"]:
        names, size = _file_index(os.path.join(folder, name))
        weight_map.update(names)
        total += size
    _write_json(os.path.join(folder, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})
    return sorted(files) + weights + ["vision-model.safetensors", "model.safetensors.index.json"]


def loading_lines(folder_name: str = ".") -> list[str]:
    """The model card's loading section: transformers' Auto classes, the folder's own code."""
    return ["from transformers import AutoModelForImageTextToText, AutoProcessor",
            f'processor = AutoProcessor.from_pretrained("{folder_name}", trust_remote_code=True)',
            f'model = AutoModelForImageTextToText.from_pretrained("{folder_name}", trust_remote_code=True)',
            *answering_lines('videos="clip.mp4", return_tensors="pt")  # or uint8 frames (T, H, W, 3)')]


def answering_lines(videos: str) -> list[str]:
    """A model card's lines from the chat message to the printed answer; `videos`: the processor call's
    arguments after the text."""
    return ['messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]',
            "text = processor.apply_chat_template(messages, add_generation_prompt=True)",
            f"inputs = processor(text=text, {videos}",
            "out = model.generate(**inputs, max_new_tokens=64)",
            'print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
