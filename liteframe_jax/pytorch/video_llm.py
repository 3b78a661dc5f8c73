"""The exported LiteFrame Video LLM in PyTorch: the student (`LiteFrameEncoder`), the projector, and the LLM as a
plain Hugging Face `Qwen2ForCausalLM` with its tokenizer. Needs torch and transformers, not JAX.

    model = LiteFrameVideoLLM.from_pretrained("export")
    model.generate("clip.mp4", "Which way does the shape move?")   # or frames: uint8 (num_frames, S, S, 3)

The model takes the video's frames as it trained on them: `num_frames` sampled uniformly over the whole video
(the middle frame of each of `num_frames` equal segments) and resized to S x S (config.json says both). A path
is decoded so (`hf_processor.LiteFrameVideoProcessor`: PyAV where installed, else OpenCV); frames given as
an array are taken as they are.
The prompt is built as training built it: the question after one video placeholder token per visual token
(grouped per temporal slice, with the separators the model trained with), rendered with the tokenizer's chat
template; the placeholders' embeddings are replaced by the visual tokens, in order, and the LLM decodes.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from liteframe_jax.pytorch.encoder import LiteFrameEncoder
from liteframe_jax.pytorch.hf_processor import VIDEO_MARKER, LiteFrameVideoProcessor, video_block
from liteframe_jax.pytorch.projector import Projector
from liteframe_jax.pytorch.weights import read_config, read_file

MODEL_TYPE = "liteframe_video_llm"


def merge_lora_adapter(llm: nn.Module, folder: str) -> int:
    """Fold a PEFT LoRA adapter folder into `llm`'s weights (W += B @ A * alpha / r); returns how many
    layers it changed. PEFT itself (`PeftModel.from_pretrained`) reads the same folder."""
    with open(os.path.join(folder, "adapter_config.json")) as f:
        cfg = json.load(f)
    scale = cfg["lora_alpha"] / cfg["r"]
    tensors = read_file(os.path.join(folder, "adapter_model.safetensors"))
    modules = dict(llm.named_modules())
    changed = 0
    for name in tensors:
        if not name.endswith(".lora_A.weight"):
            continue
        path = name[len("base_model.model."):-len(".lora_A.weight")]
        if path not in modules:
            raise ValueError(f"{folder!r}: adapter for {path!r}, which the LLM does not have")
        a, b = tensors[name], tensors[name.replace("lora_A", "lora_B")]
        weight = modules[path].weight
        with torch.no_grad():
            weight.copy_((weight.float() + (b.float() @ a.float()) * scale).to(weight.dtype))
        changed += 1
    return changed


class LiteFrameVideoLLM(nn.Module):
    def __init__(self, config: dict, encoder: LiteFrameEncoder, projector: Projector | None, llm: nn.Module,
                 tokenizer):
        super().__init__()
        self.config, self.encoder, self.projector, self.llm, self.tokenizer = config, encoder, projector, llm, tokenizer
        self.video_token_id = tokenizer.convert_tokens_to_ids(config["video_token"])
        self.stop_ids = list(config["stop_token_ids"])
        self.pad_id = config["pad_token_id"]

    @classmethod
    def from_pretrained(cls, folder: str, *, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "LiteFrameVideoLLM":
        """An exported folder (`python -m liteframe_jax.export`): config.json, student/, projector/, llm/ and,
        for an adapter export, llm_lora/ (merged into the LLM on load)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = read_config(folder, MODEL_TYPE)
        encoder = LiteFrameEncoder.from_pretrained(os.path.join(folder, config["encoder"]), dtype=dtype)
        projector = Projector.from_pretrained(os.path.join(folder, config["projector"])) if config["projector"] else None
        llm_dir = os.path.join(folder, config["llm"])
        llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype or "auto")
        if config.get("lora_adapter"):
            merge_lora_adapter(llm, os.path.join(folder, config["lora_adapter"]))
        tokenizer = AutoTokenizer.from_pretrained(llm_dir)
        model = cls(config, encoder, projector, llm, tokenizer).eval()
        if projector is not None:
            projector.to(dtype=next(llm.parameters()).dtype)
        return model.to(device) if device is not None else model

    # --- the prompt ---
    def video_block(self, times: list[float] | None = None) -> str:
        return video_block(self.config, times)

    def prompt_ids(self, question: str, *, times: list[float] | None = None, system: str | None = None) -> list[int]:
        """Token ids of the question (after the video, unless it places `<video>` itself) as a chat turn
        awaiting the assistant's answer. `times`: the start (s) of each visual group, for 'timestamp'."""
        text = question if VIDEO_MARKER in question else f"{VIDEO_MARKER}\n{question}"
        system = system or self.config.get("system_prompt")
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": text.replace(VIDEO_MARKER, self.video_block(times))}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    # --- running ---
    @torch.no_grad()
    def visual_tokens(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (num_frames, S, S, 3) -> (1, visual tokens, LLM width)."""
        frames = torch.as_tensor(frames_uint8)
        if frames.dim() != 4 or frames.shape[0] != self.config["num_frames"]:
            raise ValueError(f"expected ({self.config['num_frames']}, S, S, 3) uint8 frames, got {tuple(frames.shape)}")
        tokens = self.encoder.encode_video(frames)
        return tokens if self.projector is None else self.projector(tokens.to(self.projector.fc1.weight.dtype))

    @torch.no_grad()
    def inputs_embeds(self, frames_uint8, question: str, **prompt) -> torch.Tensor:
        ids = torch.tensor([self.prompt_ids(question, **prompt)], device=self.llm.device)
        embeds = self.llm.get_input_embeddings()(ids)
        visual = self.visual_tokens(frames_uint8).to(device=embeds.device, dtype=embeds.dtype)
        at = ids[0] == self.video_token_id
        if int(at.sum()) != visual.shape[1]:
            raise ValueError(f"the prompt holds {int(at.sum())} video placeholders for {visual.shape[1]} visual tokens")
        embeds[0, at] = visual[0]
        return embeds

    def frames(self, video):
        """(uint8 (num_frames, S, S, 3), each visual group's start time in seconds or None): a path decoded and
        sampled as in training, or frames as given."""
        if isinstance(video, (str, os.PathLike)):
            c = self.config
            processor = LiteFrameVideoProcessor(num_frames=c["num_frames"], size=c["image_size"],
                                                visual_groups=c["visual_groups"])
            return processor.frames(os.fspath(video))
        return video, None

    @torch.no_grad()
    def generate_ids(self, video, question: str, *, max_new_tokens: int = 64, times=None, system=None,
                     **generate_kwargs) -> list[int]:
        """The answer's token ids, up to and including the first stop token; greedy unless `generate_kwargs`
        say otherwise (they go to `transformers`' `generate`). `video`: a path or uint8 frames; `times` (each
        visual group's start, for 'timestamp' separators) default to the file's."""
        frames_uint8, file_times = self.frames(video)
        embeds = self.inputs_embeds(frames_uint8, question, times=times or file_times, system=system)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        settings = {"do_sample": False, **generate_kwargs}
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                eos_token_id=self.stop_ids, pad_token_id=self.pad_id, **settings)[0].tolist()
        stop = next((i for i, t in enumerate(out) if t in self.stop_ids), None)
        return out if stop is None else out[:stop + 1]

    def generate(self, video, question: str, **kwargs) -> str:
        """The answer as text (stop tokens and special tokens left out)."""
        ids = [t for t in self.generate_ids(video, question, **kwargs) if t not in self.stop_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)
