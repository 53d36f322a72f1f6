"""MCTS judges (docs/algorithm.md §6): the outcome reward of a final answer during trace generation, per task, by name.
A judge takes (answer text without tags, gold in the frame of the image as the model sees it) and returns a
reward in [0, 1]; an answer counts as correct at >= 1.0.

Two sets, chosen by `MCTSJobConfig.judge`:
  released (default)  the released search's `Judge` (Gabesarch/grounded-rl@e7970c0:
                      src/vlmsearch/reward_funcs/judge.py), as the MCTS run script picks it per domain:
                      string match for spatial / visual_search / web_qa, point in bbox for gui_grounding,
                      `_web_action` for web_action.
  vigorl              whole-word lenient match (no "12" for "2"), a point-in-box that reads the gold with
                      `rewards.tasks.parse_box`, and the RL accuracy of web actions (partial credit 0.5).

`released_string_match` and `released_point_in_bbox` are pure (no logging) and shared with evaluation.
"""

from __future__ import annotations

import ast
import re
import string
from typing import Callable

from rewards.parse import literal_int_pair
from rewards.tasks import parse_box, web_action_match

JudgeFn = Callable[[str, str], float]
JUDGE_KINDS = ("released", "vigorl")
JUDGES: dict[str, dict[str, JudgeFn]] = {k: {} for k in JUDGE_KINDS}
_PUNCT = re.compile(r"[^\w\s]")


def register_judge(task: str, fn: JudgeFn, kind: str = "released") -> None:
    if kind not in JUDGES:
        raise ValueError(f"judge kind must be one of {JUDGE_KINDS}, got {kind!r}")
    if task in JUDGES[kind]:
        raise ValueError(f"{kind} judge for task {task!r} is already registered")
    JUDGES[kind][task] = fn


def get_judge(task: str, kind: str = "released") -> JudgeFn:
    if kind not in JUDGES:
        raise ValueError(f"judge kind must be one of {JUDGE_KINDS}, got {kind!r}")
    if task not in JUDGES[kind]:
        raise ValueError(f"no {kind} MCTS judge for task {task!r}; registered: {sorted(JUDGES[kind])}")
    return JUDGES[kind][task]


# ---- released (Gabesarch/grounded-rl@e7970c0:src/vlmsearch/reward_funcs/judge.py, class Judge) ---------

# `_remove_punctuation_spaces` deletes these 32 ASCII punctuation characters and the ' ' space, one by one;
# the same set as string.punctuation (tabs and newlines inside the text stay).
_DROP = str.maketrans("", "", string.punctuation + " ")


def _released_clean(text: str) -> str:
    # strip, delete punctuation and ' ', strip again, lower-case (the released order)
    return text.strip().translate(_DROP).strip().lower()


def released_string_match(answer: str, gold: str) -> float:
    """The released `Judge._string_matching`: gold lower-cased, then both cleaned (stripped, the 32 ASCII
    punctuation characters and every ' ' removed, lower-cased); 1.0 if equal or the gold occurs anywhere in
    the answer (a substring: "12" is right for "2"; an empty gold matches anything), else 0.0."""
    g, a = _released_clean(gold.lower()), _released_clean(answer)
    return 1.0 if g == a or g in a else 0.0


def _int_tuple(text: str, n: int) -> tuple | None:
    # `tuple(ast.literal_eval(s))` holding exactly n ints (bools are ints to isinstance, as released)
    try:
        t = tuple(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return t if len(t) == n and all(isinstance(v, int) for v in t) else None


def released_point_in_bbox(answer: str, gold: str) -> float:
    """The released `Judge._point_in_bbox` (no scaling): gold a literal of 4 ints (x1, y1, x2, y2), answer
    a literal of 2 ints (x, y), both read with `ast.literal_eval` (never eval); 1.0 iff x1 <= x <= x2 and
    y1 <= y <= y2 (borders inside), 0.0 for anything unparsable or of the wrong shape."""
    box, point = _int_tuple(gold, 4), _int_tuple(answer, 2)
    if box is None or point is None:
        return 0.0
    (x1, y1, x2, y2), (x, y) = box, point
    return 1.0 if x1 <= x <= x2 and y1 <= y <= y2 else 0.0


def released_web_action(answer: str, gold: str) -> float:
    """The released `Judge._web_action`: both stripped and lower-cased; the first keyword of go_back, stop,
    scroll, click, type found in the answer decides: go_back / stop / scroll -> 1 iff the gold has the same
    keyword (no scroll direction or stop answer compared); click -> the answer must split on ' ' into exactly
    2 parts, 1 iff the gold has 'click' and the id part; type -> exactly 3 parts, 1 iff the gold has 'type'
    and the id part (the text is not compared); anything else, or any error, 0. Returns 1.0 / 0.0 (the
    released click and type branches return a bool)."""
    try:
        g, a = gold.strip().lower(), answer.strip().lower()
        for word in ("go_back", "stop", "scroll"):
            if word in a:
                return float(word in g)
        if "click" in a:
            _, element = a.split(" ")  # not exactly 2 parts: ValueError -> 0
            return float("click" in g and element.strip() in g)
        if "type" in a:
            _, element, _ = a.split(" ")  # not exactly 3 parts: ValueError -> 0
            return float("type" in g and element.strip() in g)
        return 0.0
    except Exception:  # noqa: BLE001 - the released judge scores any failure 0
        return 0.0


# ---- vigorl (option `judge: vigorl`) --------------------------------------------------------------------

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
    register_judge(_task, released_string_match)
    register_judge(_task, lenient_match, "vigorl")
register_judge("gui_grounding", released_point_in_bbox)
register_judge("gui_grounding", point_in_box, "vigorl")
register_judge("web_action", released_web_action)
register_judge("web_action", web_action_match, "vigorl")  # the RL accuracy: keyword order, partial credit 0.5
