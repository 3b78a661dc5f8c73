"""Tokenizers with chat templates: Hugging Face `tokenizer.json` (through the `tokenizers` library) with the
model's jinja chat template, and a byte-level tokenizer for the demo's tiny LLM (ChatML, like Qwen2).

Both give: `encode(text)`, `decode(ids)`, `apply_chat_template(messages, add_generation_prompt)`,
`pad_id`, `stop_ids` (end-of-turn / end-of-text) and `video_token_id` (the visual placeholder).
"""

from __future__ import annotations

import json
import os
import re

import jinja2
import jinja2.sandbox

from liteframe_jax.core import paths

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _render(template: str, messages: list[dict], add_generation_prompt: bool, **extra) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(jinja2.TemplateError(msg))
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **extra)


class ByteTokenizer:
    """Bytes 0..255 plus a few special tokens; picklable, so Grain workers can tokenize."""

    SPECIALS = ("<pad>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|video_pad|>")

    def __init__(self, chat_template: str = CHATML_TEMPLATE):
        self.chat_template = chat_template
        self.special_ids = {tok: 256 + i for i, tok in enumerate(self.SPECIALS)}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in self.SPECIALS) + ")")

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.SPECIALS)

    @property
    def pad_id(self) -> int:
        return self.special_ids["<pad>"]

    @property
    def stop_ids(self) -> list[int]:
        return [self.special_ids["<|im_end|>"], self.special_ids["<|endoftext|>"]]

    bos_id = None  # prompts start with no beginning-of-sequence token

    @property
    def video_token_id(self) -> int:
        return self.special_ids["<|video_pad|>"]

    @property
    def video_token(self) -> str:
        return "<|video_pad|>"

    def token_id(self, token: str) -> int | None:
        """The id of a special token, None for any other string (bytes have no names)."""
        return self.special_ids.get(token)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self._split.split(text):
            if piece in self.special_ids:
                ids.append(self.special_ids[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        out, pending = [], bytearray()
        names = {v: k for k, v in self.special_ids.items()}
        for i in ids:
            i = int(i)
            if i < 256:
                pending.append(i)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            if not skip_special and i in names:
                out.append(names[i])
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(self, messages, add_generation_prompt: bool = False) -> str:
        return _render(self.chat_template, messages, add_generation_prompt)


class HFTokenizer:
    """`tokenizer.json` + `tokenizer_config.json` of a Hugging Face model folder (no `transformers` needed)."""

    def __init__(self, folder: str, video_token: str = "<|video_pad|>"):
        from tokenizers import Tokenizer
        path = os.path.join(folder, "tokenizer.json")
        if not paths.isfile(path):
            raise FileNotFoundError(f"{folder!r} has no tokenizer.json")
        self.folder, self.video_token = folder, video_token
        self._tok = Tokenizer.from_str(paths.read_text(path))
        config_path = os.path.join(folder, "tokenizer_config.json")
        self.config = json.loads(paths.read_text(config_path)) if paths.isfile(config_path) else {}
        template = self.config.get("chat_template")
        template_file = os.path.join(folder, "chat_template.jinja")
        if template is None and paths.isfile(template_file):
            template = paths.read_text(template_file)
        self.chat_template = template or CHATML_TEMPLATE
        if self._tok.token_to_id(video_token) is None:
            raise ValueError(f"tokenizer in {folder!r} has no {video_token!r} token for the video placeholders")

    def __getstate__(self):
        return {"folder": self.folder, "video_token": self.video_token}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["video_token"])

    def token_id(self, token: str) -> int | None:
        """The id of one token of the vocabulary (special tokens included), None where it has none."""
        return self._tok.token_to_id(token)

    def _id(self, token) -> int | None:
        if isinstance(token, dict):
            token = token.get("content")
        return None if token is None else self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def pad_id(self) -> int:
        pad = self._id(self.config.get("pad_token")) or self._id("<|endoftext|>")
        return 0 if pad is None else pad

    @property
    def bos_id(self) -> int | None:
        return self._id(self.config.get("bos_token"))

    @property
    def stop_ids(self) -> list[int]:
        ids = [self._id(self.config.get("eos_token")), self._id("<|im_end|>"), self._id("<|endoftext|>")]
        return sorted({i for i in ids if i is not None})

    @property
    def video_token_id(self) -> int:
        return self._tok.token_to_id(self.video_token)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def apply_chat_template(self, messages, add_generation_prompt: bool = False) -> str:
        return _render(self.chat_template, messages, add_generation_prompt,
                       bos_token=self.config.get("bos_token") or "", eos_token=self.config.get("eos_token") or "")


def load_tokenizer(spec: str, video_token: str = "<|video_pad|>"):
    """'bytes' for the demo's byte-level tokenizer, else a Hugging Face model folder."""
    return ByteTokenizer() if spec == "bytes" else HFTokenizer(spec, video_token)
