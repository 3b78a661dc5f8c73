"""lmms-eval's `liteframe` model: an exported Hugging Face folder (`OUT/hf/`) answering lmms-eval's video
requests, so its own tasks score a LiteFrame Video LLM:

    pip install ".[pytorch]" lmms-eval==0.7.3 "filelock<4"     # its evaluator imports filelock._api, gone in 4
    lmms-eval --model liteframe --model_args pretrained=OUT/hf --tasks videomme --batch_size 1

lmms-eval 0.7.3 finds a model from outside its tree through the entry-point group `lmms_eval.models`
(pyproject.toml names lmms_eval_plugin.py's `model_manifest`), so installing this package is all it takes.

Why here, in the pytorch room: lmms-eval looks for models in installed packages only, so the model cannot live
in the exported folder; and this room is the package's side that runs without JAX (torch, transformers and,
for this file, lmms-eval). It loads the folder through transformers' Auto classes with
`trust_remote_code=True`, so what answers is the folder's own code, as any user of the folder runs it.

A chat model (`is_simple = False`, lmms-eval's recommended kind): each request's messages (a task's
`doc_to_messages`, or lmms-eval's own from `doc_to_visual` + `doc_to_text`) are rendered by the folder's chat
template, each video item in place, and the video paths go to the folder's processor, which samples the frames
by the rule the model trained with (video_preprocessor_config.json: `num_frames` uniformly over the whole
video, resized and normalised as in training). Model args of other lmms-eval models' frame loaders
(`max_num_frames`, `fps`, ...) are refused, not ignored: the frames are the folder's rule. Generation honours
the task's `max_new_tokens`, `temperature` / `do_sample` (greedy unless sampling is asked), `top_p`, `top_k`,
`num_beams`, `repetition_penalty` and `until` (the answer cut at the first stop string). Only `generate_until`
is supported: loglikelihood and multi-round requests end with an error naming the request type.
"""

from __future__ import annotations

import os

import torch
from loguru import logger
from tqdm import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages

DEFAULT_MAX_NEW_TOKENS = 128  # where a task sets none
# generation settings a task may pass that change what is generated; any other key is reported once and unused
GENERATION_KEYS = {"max_new_tokens", "temperature", "do_sample", "top_p", "top_k", "num_beams",
                   "repetition_penalty", "until"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LiteFrameLmms(lmms):
    """`--model_args pretrained=DIR` (an exported `hf/` folder, or a Hub id of one), `device` (default: cuda
    where there is one, else cpu), `dtype` (float32, the exported weights' own, or bfloat16 / float16)."""

    is_simple = False

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "float32", batch_size=1,
                 max_batch_size=None, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"liteframe: unknown model_args {sorted(unknown)}; it takes pretrained, device and dtype "
                             "(the frames are sampled by the folder's processor, as the model trained)")
        if str(batch_size) != "1":
            raise ValueError(f"liteframe: batch_size {batch_size!r}: it answers one request at a time (batch_size 1)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("liteframe runs in one process; start lmms-eval without accelerate's several processes")
        if dtype not in DTYPES:
            raise ValueError(f"liteframe: dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=True)
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, trust_remote_code=True,
                                                                 dtype=DTYPES[dtype]).to(self.device).eval()
        self.pretrained = pretrained
        self._unused_reported: set[str] = set()

    def prompt(self, messages: list[dict]) -> tuple[str, list[str]]:
        """lmms-eval's messages -> (the folder's chat template over them, the video paths in order)."""
        ours, videos = [], []
        for message in ChatMessages(messages=messages).messages:
            content = []
            for item in message.content:
                if item.type == "text":
                    content.append({"type": "text", "text": item.text})
                elif item.type == "video":
                    if not isinstance(item.url, str):
                        raise ValueError(f"liteframe: a video item is a {type(item.url).__name__}; it takes a path")
                    if item.start_time is not None or item.end_time is not None:
                        raise ValueError(f"liteframe: {item.url!r} asked from {item.start_time} to {item.end_time} "
                                         "s; the model samples its frames over the whole video")
                    content.append({"type": "video"})
                    videos.append(item.url)
                else:
                    raise ValueError(f"liteframe answers about videos and text; the request holds {item.type} "
                                     f"{item.url!r}")
            ours.append({"role": message.role, "content": content})
        return self.processor.apply_chat_template(ours, add_generation_prompt=True), videos

    def generation(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """A task's generation_kwargs -> (`generate`'s keyword arguments, the stop strings)."""
        unused = set(gen_kwargs) - GENERATION_KEYS - self._unused_reported
        if unused:
            logger.warning(f"liteframe: generation_kwargs {sorted(unused)} are not generation settings it knows; "
                           "unused")
            self._unused_reported |= unused
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
        out = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
               "do_sample": sample, "num_beams": int(gen_kwargs.get("num_beams") or 1)}
        if sample:
            out.update(temperature=temperature or 1.0, top_p=gen_kwargs.get("top_p"), top_k=gen_kwargs.get("top_k"))
        if gen_kwargs.get("repetition_penalty") is not None:
            out["repetition_penalty"] = float(gen_kwargs["repetition_penalty"])
        until = gen_kwargs.get("until") or []
        return out, [until] if isinstance(until, str) else list(until)

    @torch.no_grad()
    def answer(self, messages: list[dict], gen_kwargs: dict) -> str:
        text, videos = self.prompt(messages)
        inputs = self.processor(text=text, videos=videos or None, return_tensors="pt").to(self.device)
        if "pixel_values_videos" in inputs:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        settings, until = self.generation(gen_kwargs)
        out = self.model.generate(**inputs, **settings)[0, inputs["input_ids"].shape[1]:]
        answer = self.processor.decode(out, skip_special_tokens=True)
        for stop in until:
            if stop:
                answer = answer.split(stop)[0]
        return answer

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for request in tqdm(requests, disable=self.rank != 0, desc="liteframe answering"):
            _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            answers.append(self.answer(doc_to_messages(self.task_dict[task][split][doc_id]), dict(gen_kwargs)))
        return answers

    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError("liteframe: loglikelihood requests are not supported; it answers generate_until "
                                  "tasks (output_type: generate_until)")

    def generate_until_multi_round(self, requests: list[Instance]):
        raise NotImplementedError("liteframe: multi-round requests are not supported; it answers generate_until "
                                  "tasks (output_type: generate_until)")
