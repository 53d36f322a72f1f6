"""MCTS judges (SPEC §6): the outcome reward of a final answer during trace generation, per task, by name.
Lenient where RL is exact: the teacher writes free text, and the search only needs to know whether the
answer is right. A judge takes (answer text without tags, gold, image size seen) and returns a reward in
[0, 1]; an answer counts as correct at >= 1.0.
"""

from __future__ import annotations

import re
from typing import Callable

from rewards.parse import literal_int_pair
from rewards.tasks import parse_box, web_action_match

JudgeFn = Callable[[str, str], float]
JUDGES: dict[str, JudgeFn] = {}
_PUNCT = re.compile(r"[^\w\s]")


def register_judge(task: str, fn: JudgeFn) -> None:
    if task in JUDGES:
        raise ValueError(f"judge for task {task!r} is already registered")
    JUDGES[task] = fn


def get_judge(task: str) -> JudgeFn:
    if task not in JUDGES:
        raise ValueError(f"no MCTS judge for task {task!r}; registered: {sorted(JUDGES)}")
    return JUDGES[task]


def _norm(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def lenient_match(answer: str, gold: str) -> float:
    """1 iff the punctuation-free, lower-cased gold occurs in the answer as whole words ("red" in "It is
    red." but not in "reddish"); a leading choice letter like "A." is dropped first."""
    a = _norm(re.sub(r"^\s*\(?[A-Za-z][.)]\s+", "", answer))
    g = _norm(gold)
    return float(bool(g) and f" {g} " in f" {a} ")


def point_in_box(answer: str, gold: str) -> float:
    """1 iff the answer is an (x, y) int pair inside the gold box (x1, y1, x2, y2), borders included."""
    x1, y1, x2, y2 = parse_box(gold)
    p = literal_int_pair(answer.strip())
    return float(p is not None and x1 <= p[0] <= x2 and y1 <= p[1] <= y2)


for _task in ("spatial", "visual_search", "web_qa"):
    register_judge(_task, lenient_match)
register_judge("gui_grounding", point_in_box)
register_judge("web_action", web_action_match)  # the RL accuracy: keyword order, partial credit 0.5
