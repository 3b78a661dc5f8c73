"""Reading the chosen letter out of a model's answer, one rule per protocol (eval/prompts.py names them).

Each rule returns the letter or None (unparsed); what an unparsed answer scores is the protocol's business.
The rules reproduce the reference scripts, quirks included, since a score is only comparable when read the
same way:
- `lmms_eval_mcq`: lmms-eval's shared `extract_mcq_answer` (tasks/_task_utils/mcq_extract.py, since v0.7.2),
  which Video-MME and MLVU call with the letters A-D. Every letter is a candidate in the forms it appears in
  ("(B)", "B.", "B:", "B)", "B ", after an answer phrase such as "the answer is" or "答案是", the answer's
  first or last standalone letter); the form of highest rank wins, the last place within a form.
- `videomme`: Video-MME's `extract_characters_regex` (the authors' script, and lmms-eval's task up to
  v0.7.1). Answer prefixes are removed, then the first capital A-D anywhere is the answer; more than ten
  words with no A-D is unparsed. Two entries of its prefix list lack a comma, so Python joins them ("The
  best option isThe correct option is", "Best answer:Best option:"): those prefixes are never removed, and
  neither is here.
- `longvideobench`: lmms-eval's `parse_multi_choice_response` (the same rule as the LongVideoBench
  authors'): the prefix list without that slip, letters A-E.
- `mlvu_official`: MLVU's `videochat2/choice_bench.py` `check_ans`: the answer up to its first ")" must be
  exactly the letter (the prompt ends "Best option:(").
- `before_paren`: lmms-eval's MLVU rule up to v0.7.1: the character before the first ")", else the whole
  answer (stripped).
- `before_paren_unstripped`: MLVU's `multiple_choice_evaluation/choice_bench.py` `check_ans`: the same, on
  the answer as generated (no whitespace removed).
- `letters`: the Video-MME rule over as many letters as the question has options (the demo's).

`strip_reasoning` removes reasoning blocks as lmms-eval's evaluator does before any of its task rules run.
"""

from __future__ import annotations

import re

from liteframe_jax.data.benchmarks import LETTERS

_VIDEOMME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option is" "The correct option is", "Best answer:" "Best option:")
_LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                 "The best option is", "The correct option is", "Best answer:", "Best option:")

# lmms-eval's `--reasoning_tags` default (its evaluator strips these before `process_results`).
LMMS_EVAL_REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def strip_reasoning(text: str, tag_pairs) -> str:
    """lmms-eval's `strip_reasoning_tags`: each start..end block is cut out (case-sensitive; an opening tag
    with no closing tag after it stays); where only closing tags remain (a chat template that opened the
    block in the prompt), what follows the last one is the answer. The result is stripped."""
    out = text
    for start, end in tag_pairs:
        while start in out and end in out:
            i = out.find(start)
            j = out.find(end, i)
            if j == -1:
                break
            out = out[:i] + out[j + len(end):]
        if end in out and start not in out:
            out = out.rsplit(end, 1)[-1]
    return out.strip()


# Answer phrases after which the next capital letter is the answer, in lmms-eval's order.
_MCQ_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
                "best answer is", "the correct option is", "correct option is", "the best option is",
                "best option is", "the choice is", "choice is", "the correct choice is", "correct choice is",
                "i choose", "i select", "i pick", "my answer is", "my choice is",
                "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
# Rank of each form a letter is found in: a higher rank wins, then the later place.
_MCQ_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}


def lmms_eval_mcq(text: str, num_options: int, letters: str = "ABCD") -> str | None:
    if not text or not text.strip():
        return None
    s = text.strip()
    for ch in ",.!?;:'\"":  # one pass per character, in this order, as the reference does
        s = s.strip(ch)
    s = f" {s} "
    found = []  # (letter, place, form), in the reference's order (the sort below is stable)
    for form, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                          ("space", "{} ")):
        found += [(c, s.rfind(pattern.format(c)), form) for c in letters if pattern.format(c) in s]
    lower = s.lower()
    for phrase in _MCQ_PHRASES:
        at = lower.find(phrase)
        if at != -1:
            found += [(c, s.find(c, at + len(phrase)), "phrase") for c in letters if s.find(c, at + len(phrase)) != -1]
    bare = s.strip()
    found += [(c, 0, "start") for c in letters
              if bare.startswith(c) and (len(bare) == 1 or not bare[1].isalpha())]
    found += [(c, len(s) - 1, "end") for c in letters
              if bare.endswith(c) and (len(bare) == 1 or not bare[-2].isalpha())]
    if not found:
        found = [(c, s.rfind(c), "fallback") for c in letters if c in s]
    if not found:
        return None
    found.sort(key=lambda x: (_MCQ_RANK[x[2]], x[1]), reverse=True)
    return found[0][0]


def _first_letter(text: str, prefixes, letters: str) -> str | None:
    s = text.strip()
    for p in prefixes:
        s = s.replace(p, "")
    found = re.search(f"[{letters}]", s)
    if len(s.split()) > 10 and not found:
        return None
    return found.group(0) if found else None


def videomme(text: str, num_options: int) -> str | None:
    return _first_letter(text, _VIDEOMME_PREFIXES, "ABCD")


def longvideobench(text: str, num_options: int) -> str | None:
    return _first_letter(text, _LVB_PREFIXES, "ABCDE")


def letters(text: str, num_options: int) -> str | None:
    return _first_letter(text, _VIDEOMME_PREFIXES, LETTERS[:num_options])


def mlvu_official(text: str, num_options: int) -> str | None:
    s = text.strip()
    if ")" in s:
        s = s[:s.index(")")]
    return s if len(s) == 1 and s in LETTERS[:num_options] else None


def _before_paren(s: str, num_options: int) -> str | None:
    if ")" in s:
        i = s.index(")")
        s = s[i - 1:i]  # empty where ")" comes first
    return s if len(s) == 1 and s in LETTERS[:num_options] else None


def before_paren(text: str, num_options: int) -> str | None:
    return _before_paren(text.strip(), num_options)


def before_paren_unstripped(text: str, num_options: int) -> str | None:
    return _before_paren(text, num_options)


RULES = {"lmms_eval_mcq": lmms_eval_mcq, "videomme": videomme, "longvideobench": longvideobench,
         "letters": letters, "mlvu_official": mlvu_official, "before_paren": before_paren,
         "before_paren_unstripped": before_paren_unstripped}


def extract(rule: str, text: str, num_options: int) -> str | None:
    if rule not in RULES:
        raise ValueError(f"unknown answer extraction rule {rule!r}; known: {sorted(RULES)}")
    return RULES[rule](text, num_options)


def is_degenerate(text: str) -> bool:
    """Empty, or one character repeated (e.g. '!!!!!!')."""
    s = text.strip()
    return not s or (len(s) >= 4 and len(set(s)) == 1)
