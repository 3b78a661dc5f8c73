"""A benchmark request's prompt as evaluation builds it, for the latency bench: the chat template, the video's
visual tokens between their per-group separators, and a Video-MME question under the authors' protocol,
built by the same `PromptBuilder` and `eval.prompts` that evaluation uses.

No tokenizer file can be fetched here, so `PieceTokenizer` stands in for Qwen2.5's: special tokens are one id
each and other text is cut by the Qwen2 pre-tokenizer's pattern, one id per piece. A common English word or
a digit is one piece and one BPE token; a rare word is one piece and several BPE tokens, so the count is a
lower bound, close on benchmark prose. The prefill then runs at the request's real length, with the visual
tokens where the placeholders are (`models.video_llm.splice`).
"""

from __future__ import annotations

import re
import zlib

from liteframe_jax.data.benchmarks import MCQuestion
from liteframe_jax.data.conversations import VIDEO_MARKER, PromptBuilder
from liteframe_jax.eval import prompts

VIDEO_TOKEN = "<IMG_CONTEXT>"
VIDEO_TOKEN_ID = 151667  # InternVL3's <IMG_CONTEXT>; any id the LLM's table holds would do
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # Qwen2.5's default
ENDOFTEXT_ID = 151643  # Qwen2.5's <|endoftext|>: its padding token and, with <|im_end|>, a stop token
VOCAB_SIZE = 152_064  # Qwen2.5-7B's embedding rows: every id this tokenizer gives is below it
_SPECIAL = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<img>": 151665, "</img>": 151666,
            VIDEO_TOKEN: VIDEO_TOKEN_ID}
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in _SPECIAL))
# Qwen2's pre-tokenizer pattern with `re`'s classes for \p{L} (letters: [^\W\d_]) and \p{N} (digits: \d)
_PIECES = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
                     re.IGNORECASE)

# A question of Video-MME's usual length (its median stem is about 15 words, its options 5-10 words each).
QUESTION = MCQuestion(
    id="bench", video="", question="What does the woman in the red jacket do right after the car stops in front "
                                   "of the bakery?",
    options=("She opens the trunk and takes out two shopping bags.", "She waves at a man standing on the corner.",
             "She walks into the bakery without looking back.", "She answers her phone and turns around."),
    answer="A")


class PieceTokenizer:
    """Enough of a tokenizer for `PromptBuilder` and `Answerer`: Qwen2's ChatML template, ids by piece (see the
    module), Qwen2.5's padding and stop tokens."""

    video_token, video_token_id = VIDEO_TOKEN, VIDEO_TOKEN_ID
    pad_id = ENDOFTEXT_ID
    stop_ids = (_SPECIAL["<|im_end|>"], ENDOFTEXT_ID)
    vocab_size = VOCAB_SIZE

    def apply_chat_template(self, messages, add_generation_prompt: bool = False) -> str:
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": QWEN_SYSTEM}] + list(messages)
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def encode(self, text: str) -> list[int]:
        ids, pos = [], 0
        for m in _SPECIAL_RE.finditer(text):
            ids += [self._piece_id(p) for p in _PIECES.findall(text[pos:m.start()])]
            ids.append(_SPECIAL[m.group()])
            pos = m.end()
        return ids + [self._piece_id(p) for p in _PIECES.findall(text[pos:])]

    @staticmethod
    def _piece_id(piece: str) -> int:
        return 1000 + zlib.crc32(piece.encode()) % 100_000  # below the special ids; the same piece, the same id


def request_ids(separators: str, visual_groups: int, tokens_per_group: int, group_seconds: float = 1.0):
    """Token ids (int32) of one Video-MME request, `official` protocol, the video's placeholders included."""
    builder = PromptBuilder(PieceTokenizer(), visual_groups=visual_groups, tokens_per_group=tokens_per_group,
                            separators=separators, max_length=1 << 20)
    prompt = prompts.protocol("videomme", "official").render(QUESTION)
    times = [g * group_seconds for g in range(visual_groups)]
    return builder.generation_prompt((("user", f"{VIDEO_MARKER}\n{prompt.user}"),), times, system=prompt.system,
                                     assistant_prefix=prompt.assistant_prefix)
