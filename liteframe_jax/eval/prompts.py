"""Evaluation protocols as data: for each benchmark, the prompt a model is asked and how its answer is read.

`config.protocol` picks one per benchmark:
- `lmms_eval`: what lmms-eval's task files do (tasks/videomme, tasks/mlvu `mlvu_dev`, tasks/longvideobench
  `longvideobench_val_v`: `doc_to_text` with the yaml's default `post_prompt`, and `process_results`).
- `official`: the benchmark authors' own scripts (Video-MME's README prompt and `eval_your_results.py`;
  MLVU's `choice_bench.py`; LongVideoBench's `LongVideoBenchDataset`).

A protocol is a system prompt (None: the chat template's default), a user-turn template over `{question}`
and `{options}` (one line per option in `option_format`), an assistant-turn prefix the answer continues
(MLVU's authors put "Best option:(" there), an extraction rule (eval/extraction.py) and what an answer with
no parsable letter scores: `wrong`, `excluded` (left out of the denominator, as Video-MME's script does) or
`random` (a seeded random option, LongVideoBench's rule). `fingerprint()` hashes all of it, so
`results.json` says exactly which prompts produced a score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from liteframe_jax.data.benchmarks import LETTERS, MCQuestion
from liteframe_jax.data.qa_demo import MC_SUFFIX

PROTOCOLS = ("lmms_eval", "official")
UNPARSED_RULES = ("wrong", "excluded", "random")

VIDEOMME_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. "
                        "Respond with only the letter (A, B, C, or D) of the correct option.")
LETTER_DIRECTLY = "Answer with the option's letter from the given choices directly."


@dataclasses.dataclass(frozen=True)
class Protocol:
    benchmark: str
    name: str
    user: str  # template over {question} and {options}
    option_format: str = "{letter}. {text}"
    system: str | None = None
    assistant_prefix: str = ""
    extraction: str = "videomme"  # a rule in eval/extraction.py
    unparsed: str = "wrong"

    def options(self, q: MCQuestion) -> str:
        return "\n".join(self.option_format.format(letter=LETTERS[i], text=t) for i, t in enumerate(q.options))

    def render(self, q: MCQuestion) -> "Prompt":
        return Prompt(self.user.format(question=q.question, options=self.options(q)), self.system,
                      self.assistant_prefix)

    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One question as the model is asked it: the user turn (the video goes before it), an optional system
    prompt and the start of the assistant's turn."""

    user: str
    system: str | None = None
    assistant_prefix: str = ""


_TABLE = {
    ("videomme", "official"): Protocol(
        "videomme", "official", VIDEOMME_INSTRUCTION + "\n{question}\n{options}\nThe best answer is:",
        extraction="videomme", unparsed="excluded"),
    # lmms-eval's doc_to_text says "based on the video and the subtitles" with or without subtitles, and
    # its yaml's default post_prompt follows the options after an empty line.
    ("videomme", "lmms_eval"): Protocol(
        "videomme", "lmms_eval",
        "Select the best answer to the following multiple-choice question based on the video and the "
        "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\n{question}\n{options}"
        "\n\n" + LETTER_DIRECTLY, extraction="videomme", unparsed="wrong"),
    ("mlvu", "official"): Protocol(
        "mlvu", "official", "Question: {question}\nOptions:\n{options}\nOnly give the best option.",
        option_format="({letter}) {text}",
        system="Carefully watch this video and pay attention to every detail. Based on your observations, "
               "select the best option that accurately addresses the question.\n",
        assistant_prefix="Best option:(", extraction="mlvu_official", unparsed="wrong"),
    # lmms-eval's MLVU rows carry the options inside the question as "(A) ..." lines.
    ("mlvu", "lmms_eval"): Protocol(
        "mlvu", "lmms_eval", "{question}\n{options}\nOnly give the best option.\nBest option: (",
        option_format="({letter}) {text}", extraction="mlvu_lmms_eval", unparsed="wrong"),
    ("longvideobench", "official"): Protocol(
        "longvideobench", "official", "Question: {question}\n{options}\n" + LETTER_DIRECTLY,
        extraction="longvideobench", unparsed="random"),
    ("longvideobench", "lmms_eval"): Protocol(
        "longvideobench", "lmms_eval", "{question}\n{options}\n" + LETTER_DIRECTLY + "\n",
        extraction="longvideobench", unparsed="random"),
    # The demo's lettered training rows (data/qa_demo.py) are written in this format.
    ("demo", "official"): Protocol("demo", "official", "{question}\n{options}\n" + MC_SUFFIX,
                                   extraction="letters", unparsed="wrong"),
}
_TABLE[("demo", "lmms_eval")] = dataclasses.replace(_TABLE[("demo", "official")], name="lmms_eval")


def protocol(benchmark: str, name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"config.protocol={name!r}: choose one of {PROTOCOLS}")
    if (benchmark, name) not in _TABLE:
        raise ValueError(f"no {name!r} protocol for benchmark {benchmark!r}")
    return _TABLE[(benchmark, name)]
