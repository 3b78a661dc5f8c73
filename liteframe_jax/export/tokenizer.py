"""An exported LLM's tokenizer files: a Hugging Face tokenizer's files as the run copied them, or the demo's
byte-level tokenizer written as a `tokenizer.json` that `tokenizers` and `transformers.AutoTokenizer` read
and that encodes every text to the same ids.

The byte tokenizer maps byte b to id b and its special tokens to 256, 257, ...; as a `tokenizer.json` that
is a byte-level BPE with no merges (each byte, spelt with GPT-2's printable byte alphabet, is one token of
the vocabulary) plus the special tokens as added tokens, which are split out of a text before the bytes.
"""

from __future__ import annotations

import json
import os

from liteframe_jax.core import paths
from liteframe_jax.data.tokenizer import CHATML_TEMPLATE, ByteTokenizer


def _byte_alphabet() -> list[str]:
    """GPT-2's `bytes_to_unicode`: byte b -> a printable character, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_byte_tokenizer(folder: str, tokenizer: ByteTokenizer, *, max_length: int) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tokenizer.SPECIALS])
    for s, i in tokenizer.special_ids.items():
        if tok.token_to_id(s) != i:
            raise AssertionError(f"byte tokenizer export: {s!r} got id {tok.token_to_id(s)}, not {i}")
    tok.save(os.path.join(folder, "tokenizer.json"))
    added = {str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for s, i in tokenizer.special_ids.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<pad>", "unk_token": None,
              "additional_special_tokens": ["<|im_start|>", "<|endoftext|>", "<|video_pad|>"],
              "added_tokens_decoder": added, "clean_up_tokenization_spaces": False,
              "chat_template": tokenizer.chat_template or CHATML_TEMPLATE}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<pad>",
                   "additional_special_tokens": config["additional_special_tokens"]}, f, indent=2)


def copy_tokenizer(source: str, folder: str, files: tuple[str, ...]) -> list[str]:
    """The tokenizer files of `source` (the run's `tokenizer/`) that exist, copied into `folder`; a model's
    generation_config.json is not copied (the export writes its own)."""
    copied = []
    for name in files:
        if name != "generation_config.json" and paths.isfile(os.path.join(source, name)):
            paths.copy(os.path.join(source, name), os.path.join(folder, name))  # the run may be in a bucket
            copied.append(name)
    if "tokenizer.json" not in copied:
        raise FileNotFoundError(f"{source!r} has no tokenizer.json")
    return copied
