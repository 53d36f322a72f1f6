"""Task accuracies (SPEC §4), registered by name so a new task plugs in without touching the scorer.

A task is two pure functions of the answer text (the content of the final `<answer>` block):
  accuracy(answer, gold) -> float in [0, 1]
  answer_ok(answer) -> bool   the answer is well formed for the task (part of the single-turn format)
Gold strings come from datasets, not models: a gold in the wrong form is a data error and raises
ValueError naming it. Answers come from models and never raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from rewards.parse import parse_point_answer


@dataclass(frozen=True)
class Task:
    name: str
    accuracy: Callable[[str, str], float]
    answer_ok: Callable[[str], bool]
    check_gold: Callable[[str], None]


TASKS: dict[str, Task] = {}


def register_task(name: str, *, accuracy, answer_ok, check_gold=lambda gold: None) -> None:
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered")
    TASKS[name] = Task(name, accuracy, answer_ok, check_gold)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}") from None


# ---- multiple choice: spatial (SAT-2 / BLINK) and visual search (V*) ----------------------------------
# A leading choice prefix: "A.", "A)", "(A)", "A:", optionally followed by space. Only a single capital
# letter A-F counts, so an answer like "Apple" is left alone.
_CHOICE_PREFIX = re.compile(r"^\s*\(?[A-F][.):]\s*")


def strip_choice(text: str) -> str:
    return _CHOICE_PREFIX.sub("", text, count=1).strip().lower()


def spatial_accuracy(answer: str, gold: str) -> float:
    """Exact lower-cased match with the gold option text, after stripping a leading `A.` / `(A)` prefix."""
    return float(strip_choice(answer) == strip_choice(gold) != "")


def visual_search_accuracy(answer: str, gold: str) -> float:
    """V*: exact match of the stripped, lower-cased answer with the gold option (grounded-rl multi-turn)."""
    return float(answer.strip().lower() == gold.strip().lower() != "")


def _nonempty(answer: str) -> bool:
    return bool(answer.strip())


def _gold_nonempty(gold: str) -> None:
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold answer must be non-empty option text, got {gold!r}")


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


def grounding_accuracy(answer: str, gold: str) -> float:
    """1 iff the answer is an `(int, int)` point inside the gold box, inclusive (SPEC §4)."""
    x1, y1, x2, y2 = parse_box(gold)
    p = parse_point_answer(answer)
    return float(p is not None and x1 <= p[0] <= x2 and y1 <= p[1] <= y2)


# ---- web action ---------------------------------------------------------------------------------------
_ACTION_RES = [
    re.compile(r"\s*click\s*\[\s*\d+\s*\]\s*", re.I),
    re.compile(r"\s*type\s*\[\s*\d+\s*\]\s*\[.*\]\s*", re.I | re.S),
    re.compile(r"\s*scroll\s*\[\s*(down|up)\s*\]\s*", re.I),
    re.compile(r"\s*go_back\s*", re.I),
    re.compile(r"\s*stop\s*(\[.*\])?\s*", re.I | re.S),
]
_FIRST_ID = re.compile(r"\[(\d+)\]")
_FIRST_BRACKET = re.compile(r"\[([^\]]*)\]")


def action_ok(answer: str) -> bool:
    return any(r.fullmatch(answer) for r in _ACTION_RES)


def _check_action_gold(gold: str) -> None:
    if not isinstance(gold, str) or not action_ok(gold):
        raise ValueError(f"gold web action must be one of click [id] / type [id] [text] / scroll [down|up] / "
                         f"go_back / stop [answer], got {gold!r}")


def web_action_accuracy(answer: str, gold: str) -> float:
    """SPEC §4, checked in this order on the answer text:
    go_back / stop: 1 iff gold has the same keyword; scroll: 1 iff both [down] or both [up];
    click: 0.5 if gold is a click + 0.5 if the first [digits] ids are equal;
    type: 0.5 if gold is a type + 0.5 if the first [...] contents are equal (typed text not compared)."""
    a, g = answer.strip().lower(), gold.strip().lower()
    for kw in ("go_back", "stop"):
        if a.startswith(kw):
            return float(g.startswith(kw))
    if a.startswith("scroll"):
        return float(g.startswith("scroll") and (("[down]" in a and "[down]" in g) or ("[up]" in a and "[up]" in g)))
    if a.startswith("click"):
        if not g.startswith("click"):
            return 0.0
        ia, ig = _FIRST_ID.search(a), _FIRST_ID.search(g)
        return 0.5 + 0.5 * float(ia is not None and ig is not None and ia.group(1) == ig.group(1))
    if a.startswith("type"):
        if not g.startswith("type"):
            return 0.0
        ia, ig = _FIRST_BRACKET.search(a), _FIRST_BRACKET.search(g)
        return 0.5 + 0.5 * float(ia is not None and ig is not None and ia.group(1).strip() == ig.group(1).strip())
    return 0.0


register_task("spatial", accuracy=spatial_accuracy, answer_ok=_nonempty, check_gold=_gold_nonempty)
register_task("visual_search", accuracy=visual_search_accuracy, answer_ok=_nonempty, check_gold=_gold_nonempty)
def _check_box_gold(gold: str) -> None:
    parse_box(gold)


register_task("gui_grounding", accuracy=grounding_accuracy,
              answer_ok=lambda a: parse_point_answer(a) is not None, check_gold=_check_box_gold)
register_task("web_action", accuracy=web_action_accuracy, answer_ok=action_ok, check_gold=_check_action_gold)
