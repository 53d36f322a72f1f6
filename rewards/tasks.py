"""Task accuracies and answer checks (docs/algorithm.md §4), registered by name so a new task plugs in without touching
the scorer. Each is the released ViGoRL reward function's behaviour (Gabesarch/grounded-rl @e7970c0,
`examples/reward_function/`), named beside it.

A task is pure functions:
  accuracy(response, gold) -> float in [0, 1]        single-turn modes; reads the answer itself, as the
  multi_accuracy(response, gold) -> float             official functions do (multi-turn modes)
  answer_ok(answer) -> bool         single-turn format: the first `<answer>` block's content is well formed
  multi_answer_ok(answer) -> bool   multi-turn format: the same, for the final answer block
  check_gold(gold) -> None          raises ValueError on a malformed gold
Gold strings come from datasets, not models: a gold in the wrong form is a data error and raises
ValueError naming it. Responses come from models and never raise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from rewards.parse import (_lazy_block, answer_for_accuracy, answer_for_accuracy_multiturn, literal_int_pair,
                           multiturn_paren_pair, paren_int_pair)


@dataclass(frozen=True)
class Task:
    name: str
    accuracy: Callable[[str, str], float]
    answer_ok: Callable[[str], bool]
    check_gold: Callable[[str], None]
    multi_accuracy: Callable[[str, str], float]
    multi_answer_ok: Callable[[str], bool]


TASKS: dict[str, Task] = {}


def register_task(name: str, *, accuracy, answer_ok, check_gold=lambda gold: None, multi_accuracy=None,
                  multi_answer_ok=None) -> None:
    """Register a task. The multi-turn functions default to the single-turn ones."""
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered")
    TASKS[name] = Task(name, accuracy, answer_ok, check_gold, multi_accuracy or accuracy,
                       multi_answer_ok or answer_ok)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}") from None


def on_answer(fn: Callable[[str, str], float]) -> Callable[[str, str], float]:
    """Lift `fn(answer, gold)` to `(response, gold)` with the official single-turn answer extraction
    (`rewards.parse.answer_for_accuracy`). For tasks whose accuracy only looks at the answer text."""
    return lambda response, gold: fn(answer_for_accuracy(response), gold)


def nonempty(answer: str) -> bool:
    return bool(answer.strip())


def _gold_nonempty(gold: str) -> None:
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold answer must be non-empty option text, got {gold!r}")


# ---- multiple choice: spatial (SAT-2 / BLINK) and visual search (V*) ----------------------------------
# string_match(_grounded_thinking).py `sat_accuracy_reward`: a leading `[A-Za-z][.)]` choice prefix is
# dropped (to the end of its line), then the lower-cased answer must equal the stripped gold — the gold
# is not lower-cased, so golds are written in lower case.
_CHOICE_PREFIX = re.compile(r"^[A-Za-z][\.\)]\s*(.*)")


def choice_accuracy(response: str, gold: str) -> float:
    pred = answer_for_accuracy(response)
    m = _CHOICE_PREFIX.match(pred)
    if m:
        pred = m.group(1).strip()
    return 1.0 if pred.lower() == gold.strip() else 0.0


def multiturn_string_accuracy(response: str, gold: str) -> float:
    """string_match_multiturn.py `accuracy_reward`: first `<answer>` block (any case, may span lines),
    stripped and lower-cased (the whole text without one) == the stripped, lower-cased gold."""
    return 1.0 if answer_for_accuracy_multiturn(response) == gold.strip().lower() else 0.0


# ---- GUI grounding ------------------------------------------------------------------------------------
_BOX_RE = re.compile(r"\s*[\(\[]\s*(-?\d{1,9})\s*,\s*(-?\d{1,9})\s*,\s*(-?\d{1,9})\s*,\s*(-?\d{1,9})\s*[\)\]]\s*")


def parse_box(gold: str) -> tuple[int, int, int, int]:
    """Gold box `(x1, y1, x2, y2)` in integer pixels (grounded-rl point_in_bbox ground-truth form)."""
    m = _BOX_RE.fullmatch(gold) if isinstance(gold, str) else None
    if m is None:
        raise ValueError(f"gold box must be '(x1, y1, x2, y2)' integer pixels, got {gold!r}")
    x1, y1, x2, y2 = map(int, m.groups())
    if x2 < x1 or y2 < y1:
        raise ValueError(f"gold box {gold!r} has x2 < x1 or y2 < y1 (an [x, y, w, h] box read as xyxy?)")
    return x1, y1, x2, y2


def grounding_accuracy(response: str, gold: str) -> float:
    """point_in_bbox.py `accuracy_reward`: the answer read as a Python literal of exactly two ints (a
    list, or even `1, 2` without parentheses, counts, as `tuple(ast.literal_eval(...))` allows) inside
    the gold box, borders included."""
    x1, y1, x2, y2 = parse_box(gold)
    p = literal_int_pair(answer_for_accuracy(response))
    return float(p is not None and x1 <= p[0] <= x2 and y1 <= p[1] <= y2)


def _check_box_gold(gold: str) -> None:
    parse_box(gold)


# ---- web action ---------------------------------------------------------------------------------------
_ACTION_RES = [
    re.compile(r"\s*click\s*\[\s*\d+\s*\]\s*", re.I),
    re.compile(r"\s*type\s*\[\s*\d+\s*\]\s*\[.*\]\s*", re.I | re.S),
    re.compile(r"\s*scroll\s*\[\s*(down|up)\s*\]\s*", re.I),
    re.compile(r"\s*go_back\s*", re.I),
    re.compile(r"\s*stop\s*(\[.*\])?\s*", re.I | re.S),
]
_FIRST_ID = re.compile(r"\[(\d+)\]")


def action_ok(answer: str) -> bool:
    """A well-formed action string (used to validate golds; the official single-turn format does not
    check the answer, so neither does `answer_ok` of web_action)."""
    return any(r.fullmatch(answer) for r in _ACTION_RES)


def _check_action_gold(gold: str) -> None:
    if not isinstance(gold, str) or not action_ok(gold):
        raise ValueError(f"gold web action must be one of click [id] / type [id] [text] / scroll [down|up] / "
                         f"go_back / stop [answer], got {gold!r}")


def web_action_accuracy(response: str, gold: str) -> float:
    """web_action(_grounded_thinking).py `accuracy_reward` on a response (see `web_action_match`)."""
    return web_action_match(answer_for_accuracy(response), gold)


def web_action_match(a: str, gold: str) -> float:
    """web_action(_grounded_thinking).py `accuracy_reward`: case-sensitive substring tests on the answer,
    in this order, the first that matches decides: `go_back` -> 1 iff gold has it; `stop` -> 1 iff gold
    has it (the stop answer is not compared); `scroll` -> 1 iff both have `[down]` or both `[up]`;
    `click` -> both need a `[digits]` (else 0), 0.5·(gold has `click`) + 0.5·(first ids equal); `type` ->
    both need a `[...]` (else 0), 0.5·(gold has `type`) + 0.5·(first bracket contents equal)."""
    g = gold.strip()
    if "go_back" in a:
        return 1.0 if "go_back" in g else 0.0
    if "stop" in a:
        return 1.0 if "stop" in g else 0.0
    if "scroll" in a:
        return 1.0 if ("[down]" in a and "[down]" in g) or ("[up]" in a and "[up]" in g) else 0.0
    if "click" in a:
        ia, ig = _FIRST_ID.search(a), _FIRST_ID.search(g)
        if not ia or not ig:
            return 0.0
        return int("click" in g) * 0.5 + int(ia.group(1).strip() == ig.group(1).strip()) * 0.5
    if "type" in a:
        ca, cg = _lazy_block(a, "[", "]", dotall=False), _lazy_block(g, "[", "]", dotall=False)  # r"\[(.*?)\]"
        if ca is None or cg is None:
            return 0.0
        return int("type" in g) * 0.5 + int(ca.strip() == cg.strip()) * 0.5
    return 0.0


# V* single-turn uses the spatial reward (run_vigorl.sh: vstar/vigorl -> string_match_grounded_thinking);
# its multi-turn reward is string_match_multiturn. Spatial and web action have no official multi-turn
# reward: spatial takes string_match_multiturn's, web action keeps its accuracy.
for _name in ("spatial", "visual_search"):
    register_task(_name, accuracy=choice_accuracy, answer_ok=nonempty, check_gold=_gold_nonempty,
                  multi_accuracy=multiturn_string_accuracy, multi_answer_ok=nonempty)
register_task("gui_grounding", accuracy=grounding_accuracy, answer_ok=paren_int_pair, check_gold=_check_box_gold,
              multi_answer_ok=multiturn_paren_pair)
register_task("web_action", accuracy=web_action_accuracy, answer_ok=lambda answer: True,
              check_gold=_check_action_gold, multi_answer_ok=nonempty)


# ---- VisualWebArena (web_qa) ----------------------------------------------------------------------------
_WORD = re.compile(r"\d+(?:[.,/]\d+)*|\w+|[^\w\s]")  # numbers like 8.5 / 103,000 stay one token


def _clean(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text.lower()


def vwa_string_match(answer: str, gold: str) -> float:
    """VisualWebArena StringEvaluator (must_include / exact_match; alternatives split on ' |OR| '). A
    single-token reference must equal a token of the answer, else substring (tokens: numbers, words or
    one symbol, standing in for nltk's word_tokenize). Scores multiply across approaches."""
    ref = json.loads(gold)
    pred = _clean(answer)
    tokens = set(_WORD.findall(pred))
    score = 1.0
    if "exact_match" in ref:
        score *= float(pred == _clean(ref["exact_match"]))
    for value in ref.get("must_include", []):
        alts = [_clean(a) for a in value.split(" |OR| ")]
        ok = any((a in tokens) if len(_WORD.findall(a)) == 1 else (a in pred) for a in alts)
        score *= float(ok)
    return score


def _check_vwa_gold(gold: str) -> None:
    try:
        ref = json.loads(gold)
    except ValueError:
        raise ValueError(f"web_qa gold must be JSON reference answers, got {gold!r}") from None
    if not isinstance(ref, dict) or not ({"must_include", "exact_match"} & set(ref)):
        raise ValueError(f"web_qa gold needs must_include or exact_match, got {gold!r}")


register_task("web_qa", accuracy=vwa_string_match, answer_ok=lambda a: bool(a.strip()), check_gold=_check_vwa_gold)
