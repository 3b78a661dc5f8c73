"""Reading the chosen letter out of a model's answer, one rule per protocol (eval/prompts.py names them).

Each rule returns the letter or None (unparsed); what an unparsed answer scores is the protocol's business.
The rules reproduce the reference scripts, quirks included, since a score is only comparable when read the
same way:
- `videomme`: Video-MME's `extract_characters_regex` (the authors' script and lmms-eval's task share it).
  Answer prefixes are removed, then the first capital A-D anywhere is the answer; more than ten words with
  no A-D is unparsed. Two entries of its prefix list lack a comma, so Python joins them ("The best option
  isThe correct option is", "Best answer:Best option:"): those prefixes are never removed, and neither is
  here.
- `longvideobench`: lmms-eval's `parse_multi_choice_response` (the same rule as the LongVideoBench
  authors'): the prefix list without that slip, letters A-E.
- `mlvu_official`: MLVU's `check_ans`: the answer up to its first ")" must be exactly the letter (the
  prompt ends "Best option:(").
- `mlvu_lmms_eval`: lmms-eval's MLVU rule: the character before the first ")", else the whole answer.
- `letters`: the Video-MME rule over as many letters as the question has options (the demo's).
"""

from __future__ import annotations

import re

from liteframe_jax.data.benchmarks import LETTERS

_VIDEOMME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option is" "The correct option is", "Best answer:" "Best option:")
_LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                 "The best option is", "The correct option is", "Best answer:", "Best option:")


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


def mlvu_lmms_eval(text: str, num_options: int) -> str | None:
    s = text.strip()
    if ")" in s:
        i = s.index(")")
        s = s[i - 1:i]
    return s if len(s) == 1 and s in LETTERS[:num_options] else None


RULES = {"videomme": videomme, "longvideobench": longvideobench, "letters": letters,
         "mlvu_official": mlvu_official, "mlvu_lmms_eval": mlvu_lmms_eval}


def extract(rule: str, text: str, num_options: int) -> str | None:
    if rule not in RULES:
        raise ValueError(f"unknown answer extraction rule {rule!r}; known: {sorted(RULES)}")
    return RULES[rule](text, num_options)


def is_degenerate(text: str) -> bool:
    """Empty, or one character repeated (e.g. '!!!!!!')."""
    s = text.strip()
    return not s or (len(s) >= 4 and len(set(s)) == 1)
