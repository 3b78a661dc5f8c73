"""Evaluation protocols as data: for each benchmark, the prompt a model is asked and how its answer is read.

`config.protocol` picks one per benchmark, named by what it reproduces (`Protocol.reference` says which
code; `lmms_eval_version` which lmms-eval release, where one is followed):
- `lmms_eval`: lmms-eval 0.7.3, the current release (tasks/videomme, tasks/mlvu `mlvu_dev`,
  tasks/longvideobench `longvideobench_val_v`: `doc_to_text` with the yaml's default `post_prompt`, the
  question and options printed as the release writes them, `process_results`; Video-MME and MLVU read
  answers with the shared `extract_mcq_answer`; `<think>`/`<analysis>` blocks stripped first, as its
  evaluator does by default).
- `lmms_eval_v0.7.1`: the same prompts with lmms-eval's answer reading up to v0.7.1 (Video-MME's
  `extract_characters_regex`, MLVU's character before the first ")"), which older published numbers used.
- `official`: the benchmark authors' own scripts (Video-MME's README prompt and `eval_your_results.py`;
  MLVU's `evaluation/models/videochat2/choice_bench.py`; LongVideoBench's `LongVideoBenchDataset`).
- `lmms_eval_w_subtitle` (Video-MME only): lmms-eval 0.7.3's `videomme_w_subtitle` task: the subtitle lines
  of the release's `subtitle/<videoID>.srt` at its 32 sampled frames (eval/subtitles.py) before the question.
- `official_interleaved` (LongVideoBench only): its authors' `LongVideoBenchDataset` with subtitles
  (`insert_text=True`): the video's clips and the lines of `subtitles/<subtitle_path>` in time order
  (eval/lvb_subtitles.py), then the `official` question; `lmms_eval_interleaved`: lmms-eval 0.7.3's
  `longvideobench_val_i`, the same interleaving before its `lmms_eval` question. `{subtitles}` is then
  that list, one item a line, each clip a run of `GROUP_MARKER`s where its visual tokens go.
- `official_generic` (MLVU only): MLVU's other script, `evaluation/multiple_choice_evaluation/choice_bench.py`.

A protocol is a system prompt (None: the model's own), a user-turn template over `{question}`, `{options}`
(one line per option in `option_format`), `{question_and_options}` (the question, a newline, the options)
and `{subtitles}` (where `subtitles` is set: the lines the harness reads for the question's video), an
assistant-turn prefix the answer continues (MLVU's authors put "Best option:(" there), an extraction rule
(eval/extraction.py), the reasoning blocks removed before it, and what an answer with no parsable letter
scores: `wrong`, `excluded` (left out of the denominator, as Video-MME's script does) or `random` (a seeded
random option, LongVideoBench's rule). `fingerprint()` hashes all of it, so
`results.json` says exactly which prompts produced a score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from liteframe_jax.data.benchmarks import LETTERS, MCQuestion
from liteframe_jax.data.qa_demo import MC_SUFFIX
from liteframe_jax.eval.extraction import LMMS_EVAL_REASONING_TAGS

PROTOCOLS = ("lmms_eval", "lmms_eval_v0.7.1", "lmms_eval_w_subtitle", "lmms_eval_interleaved", "official",
             "official_interleaved", "official_generic")
LMMS_EVAL_VERSION = "0.7.3"
UNPARSED_RULES = ("wrong", "excluded", "random")

VIDEOMME_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. "
                        "Respond with only the letter (A, B, C, or D) of the correct option.")
LETTER_DIRECTLY = "Answer with the option's letter from the given choices directly."


@dataclasses.dataclass(frozen=True)
class Protocol:
    benchmark: str
    name: str
    user: str  # template over {question}, {options} and {question_and_options}
    reference: str  # the code this protocol reproduces
    option_format: str = "{letter}. {text}"
    system: str | None = None
    assistant_prefix: str = ""
    extraction: str = "videomme"  # a rule in eval/extraction.py
    unparsed: str = "wrong"
    # print the release's own question and option text where the benchmark kept it (lmms-eval reads
    # `doc["question"]` and `doc["options"]` unchanged)
    released_text: bool = False
    reasoning_tags: tuple[tuple[str, str], ...] = ()  # blocks removed from an answer before it is read
    lmms_eval_version: str | None = None
    subtitles: bool = False  # the prompt holds the video's subtitles (`render(q, subtitles=...)`)

    def options(self, q: MCQuestion) -> str:
        if self.released_text and q.released_options:
            return "\n".join(q.released_options)
        return "\n".join(self.option_format.format(letter=LETTERS[i], text=t) for i, t in enumerate(q.options))

    def question_and_options(self, q: MCQuestion) -> str:
        if self.released_text and q.released_question:
            return q.released_question
        return f"{q.question}\n{self.options(q)}"

    def render(self, q: MCQuestion, subtitles: str | None = None) -> "Prompt":
        if self.subtitles and subtitles is None:
            raise ValueError(f"the {self.name!r} protocol asks with the video's subtitles; none were given")
        user = self.user.format(question=q.question, options=self.options(q),
                                question_and_options=self.question_and_options(q), subtitles=subtitles)
        return Prompt(user, self.system, self.assistant_prefix)

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


LMMS_EVAL = dict(released_text=True, reasoning_tags=LMMS_EVAL_REASONING_TAGS, lmms_eval_version=LMMS_EVAL_VERSION)
MLVU_SYSTEM = ("Carefully watch this video and pay attention to every detail. Based on your observations, select the "
               "best option that accurately addresses the question.")

_TABLE = {
    ("videomme", "official"): Protocol(
        "videomme", "official", VIDEOMME_INSTRUCTION + "\n{question}\n{options}\nThe best answer is:",
        reference="Video-MME README prompt (without subtitles), eval_your_results.py",
        extraction="videomme", unparsed="excluded"),
    # lmms-eval's doc_to_text says "based on the video and the subtitles" with or without subtitles, and
    # its yaml's default post_prompt follows the options after an empty line.
    ("videomme", "lmms_eval"): Protocol(
        "videomme", "lmms_eval",
        "Select the best answer to the following multiple-choice question based on the video and the "
        "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\n{question_and_options}"
        "\n\n" + LETTER_DIRECTLY,
        reference="lmms-eval tasks/videomme: videomme_doc_to_text (videomme.yaml default post_prompt), "
                  "videomme_process_results with extract_mcq_answer", extraction="lmms_eval_mcq", **LMMS_EVAL),
    # videomme_doc_to_text_subtitle ends with "The best answer is:" whatever the yaml's post_prompt says.
    ("videomme", "lmms_eval_w_subtitle"): Protocol(
        "videomme", "lmms_eval_w_subtitle",
        "This video's subtitles are listed below: \n{subtitles}\nSelect the best answer to the following "
        "multiple-choice question based on the video and the subtitles. Respond with only the letter (A, B, C, "
        "or D) of the correct option.\n{question_and_options}\nThe best answer is:",
        reference="lmms-eval tasks/videomme videomme_w_subtitle: videomme_doc_to_text_subtitle (frame_num 32), "
                  "videomme_process_results with extract_mcq_answer", extraction="lmms_eval_mcq", subtitles=True,
        **LMMS_EVAL),
    ("mlvu", "official"): Protocol(
        "mlvu", "official", "Question: {question}\nOptions:\n{options}\nOnly give the best option.",
        reference="MLVU evaluation/models/videochat2/choice_bench.py (qa_template, infer_mvbench, check_ans)",
        option_format="({letter}) {text}", system=MLVU_SYSTEM + "\n", assistant_prefix="Best option:(",
        extraction="mlvu_official", unparsed="wrong"),
    # The authors' template concatenates the question (its options end it) and "Only give the best
    # option." without a newline, and primes the answer with "Best Option: (".
    ("mlvu", "official_generic"): Protocol(
        "mlvu", "official_generic", "Question: {question}\nOptions:\n{options}Only give the best option.",
        reference="MLVU evaluation/multiple_choice_evaluation/choice_bench.py (qa_template, the prompt "
                  "template in main, check_ans)",
        option_format="({letter}) {text}", system=MLVU_SYSTEM, assistant_prefix="Best Option: (",
        extraction="before_paren_unstripped", unparsed="wrong"),
    # lmms-eval's MLVU rows carry the options inside the question as "(A) ..." lines, asked as released; the
    # authors' rows (which lmms-eval does not read) are asked as their question, a newline and those lines.
    ("mlvu", "lmms_eval"): Protocol(
        "mlvu", "lmms_eval", "{question_and_options}\nOnly give the best option.\nBest option: (",
        reference="lmms-eval tasks/mlvu mlvu_dev: mlvu_doc_to_text (mlvu_dev.yaml default post_prompt), "
                  "mlvu_process_results with extract_mcq_answer",
        option_format="({letter}) {text}", extraction="lmms_eval_mcq", **LMMS_EVAL),
    ("longvideobench", "official"): Protocol(
        "longvideobench", "official", "Question: {question}\n{options}\n" + LETTER_DIRECTLY,
        reference="LongVideoBench LongVideoBenchDataset prompt; unparsed answers get a random option",
        extraction="longvideobench", unparsed="random"),
    ("longvideobench", "lmms_eval"): Protocol(
        "longvideobench", "lmms_eval", "{question_and_options}\n" + LETTER_DIRECTLY + "\n",
        reference="lmms-eval tasks/longvideobench longvideobench_val_v: longvideobench_doc_to_text, "
                  "longvideobench_process_results (parse_multi_choice_response)",
        extraction="longvideobench", unparsed="random", **LMMS_EVAL),
    # The authors' inputs list (the interleaved clips and lines, "Question: ...", the options, the instruction)
    # one item a line, as `official` joins it.
    ("longvideobench", "official_interleaved"): Protocol(
        "longvideobench", "official_interleaved",
        "{subtitles}\nQuestion: {question}\n{options}\n" + LETTER_DIRECTLY,
        reference="LongVideoBench LongVideoBenchDataset(insert_text=True): insert_subtitles_into_frames over "
                  "subtitles/<subtitle_path>; unparsed answers get a random option",
        extraction="longvideobench", unparsed="random", subtitles=True),
    # longvideobench_doc_to_text with insert_interleave_subtitles: pre_prompt, the interleaved list, a newline,
    # the question and options, a newline, the post_prompt.
    ("longvideobench", "lmms_eval_interleaved"): Protocol(
        "longvideobench", "lmms_eval_interleaved", "{subtitles}\n{question_and_options}\n" + LETTER_DIRECTLY + "\n",
        reference="lmms-eval tasks/longvideobench longvideobench_val_i: longvideobench_doc_to_text "
                  "(insert_subtitles_into_frames), longvideobench_process_results (parse_multi_choice_response)",
        extraction="longvideobench", unparsed="random", subtitles=True, **LMMS_EVAL),
    # The demo's lettered training rows (data/qa_demo.py) are written in this format.
    ("demo", "official"): Protocol("demo", "official", "{question}\n{options}\n" + MC_SUFFIX,
                                   reference="the demo's training format (data/qa_demo.py)",
                                   extraction="letters", unparsed="wrong"),
}
# lmms-eval up to v0.7.1 asked the same prompts and read Video-MME's and MLVU's answers otherwise.
_OLD_READING = {"videomme": "videomme", "mlvu": "before_paren", "longvideobench": "longvideobench"}
for _bench, _rule in _OLD_READING.items():
    _new = _TABLE[(_bench, "lmms_eval")]
    _TABLE[(_bench, "lmms_eval_v0.7.1")] = dataclasses.replace(
        _new, name="lmms_eval_v0.7.1", extraction=_rule, lmms_eval_version="0.7.1",
        reference=_new.reference.replace("extract_mcq_answer", "extract_characters_regex"))
for _name in ("lmms_eval", "lmms_eval_v0.7.1"):
    _TABLE[("demo", _name)] = dataclasses.replace(_TABLE[("demo", "official")], name=_name)
# The needle test (data/needle.py) is asked as the demo's lettered questions, which its training rows follow.
for _name in ("official", "lmms_eval", "lmms_eval_v0.7.1"):
    _TABLE[("needle", _name)] = dataclasses.replace(_TABLE[("demo", _name)], benchmark="needle")


def protocol(benchmark: str, name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"config.protocol={name!r}: choose one of {PROTOCOLS}")
    if (benchmark, name) not in _TABLE:
        raise ValueError(f"no {name!r} protocol for benchmark {benchmark!r}")
    return _TABLE[(benchmark, name)]
