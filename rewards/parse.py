"""Parsing of model outputs exactly as the released ViGoRL reward functions read them (Gabesarch/grounded-rl
@e7970c0, `src/trainer/rl/examples/reward_function/*.py`), without their quadratic regex backtracking and
without eval.

Every function here accepts any text (huge, empty, truncated, adversarial) and returns a value; nothing
raises on malformed model output. Where a helper stands in for one of the official regexes, the regex is
quoted beside it and `tests/test_rewards_parse.py` checks the two agree on generated text.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

Point = tuple[int, int]

# coordinate_reward: `re.findall(r"\((\d+)\s*,\s*(\d+)\)", first think block)` — non-negative ints only.
COORD_RE = re.compile(r"\((\d+)\s*,\s*(\d+)\)")
# The structural tags of the multi-turn grammar (case-insensitive, as the official `_TAG_RE`).
TAG_RE = re.compile(r"<(/?)(tool_call|observation|think|answer)>", re.IGNORECASE)
# Official `_TOOL_JSON_RE`; used as is (it only runs after the tag walk has passed, on bounded text).
TOOL_JSON_RE = re.compile(r"<tool_call>\s*({.*?})\s*</tool_call>", re.DOTALL)
_ANSWER_OPEN_I = re.compile("<answer>", re.IGNORECASE)
_ANSWER_CLOSE_I = re.compile("</answer>", re.IGNORECASE)
_THINK_ANSWER = re.compile(r"</think>\s*<answer>")
_PAREN_PAIR = re.compile(r"\s*\(([^)]*)\)\s*")
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
TOOL_NAME = "search_coordinate"
# Python refuses to turn more than 4,300 digits into an int; points with more are not points.
_MAX_DIGITS = 4300


def strip_end(text: str) -> str:
    """Drop trailing whitespace and end-of-turn markers (`<|im_end|>`), which generation may keep."""
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for m in END_MARKERS:
            if text.endswith(m):
                text = text[: -len(m)].rstrip()
                changed = True
    return text


def _lazy_block(text: str, open_: str, close: str, dotall: bool) -> str | None:
    """Content of the leftmost match of `open_(.*?)close` (re.search semantics), in linear time.
    Without DOTALL the content may not hold a newline: the match starts at the first `open_` whose next
    `close` comes before the next newline."""
    start = text.find(open_)
    while start >= 0:
        body = start + len(open_)
        end = text.find(close, body)
        if end < 0:
            return None
        if dotall:
            return text[body:end]
        nl = text.find("\n", body, end)
        if nl < 0:
            return text[body:end]
        start = text.find(open_, nl)  # every `open_` before the newline fails the same way
    return None


def first_think(text: str) -> str | None:
    """`re.search(r"<think>(.*?)</think>", text, re.DOTALL)` -> group 1."""
    return _lazy_block(text, "<think>", "</think>", dotall=True)


def first_answer(text: str) -> str | None:
    """`re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)` -> group 1 (the single-turn format check)."""
    return _lazy_block(text, "<answer>", "</answer>", dotall=True)


def answer_for_accuracy(text: str) -> str:
    """What the official single-turn and point-in-box accuracies compare: `re.search(r"<answer>(.*?)
    </answer>", text)` (no DOTALL: the first answer block on one line), stripped; else the whole text,
    stripped."""
    m = _lazy_block(text, "<answer>", "</answer>", dotall=False)
    return (m if m is not None else text).strip()


def answer_for_accuracy_multiturn(text: str) -> str:
    """string_match_multiturn: `re.search(r"<answer>\\s*(.*?)\\s*</answer>", text, re.DOTALL |
    re.IGNORECASE)`, stripped and lower-cased; else the whole text, stripped and lower-cased."""
    o = _ANSWER_OPEN_I.search(text)
    c = _ANSWER_CLOSE_I.search(text, o.end()) if o else None
    return (text[o.end(): c.start()] if c else text).strip().lower()


def think_points(text: str) -> list[Point]:
    """The integer `(x, y)` pairs of the first think block, in order (official `coordinate_reward`)."""
    think = first_think(text)
    if think is None:
        return []
    return [(int(a), int(b)) for a, b in COORD_RE.findall(think) if max(len(a), len(b)) <= _MAX_DIGITS]


def single_turn_answer(text: str) -> str | None:
    """If the whole text matches `<think>.*?</think>\\s*<answer>.*?</answer>` (re.fullmatch, DOTALL; no
    stripping, docs/algorithm.md §4), the content of its first `<answer>` block (unstripped); else None. Linear: the
    full match holds iff the text starts with <think>, ends with </answer>, and `</think>\\s*<answer>`
    stands between them."""
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return None
    if _THINK_ANSWER.search(text, len("<think>"), len(text) - len("</answer>")) is None:
        return None
    return first_answer(text)


def literal_int_pair(text: str) -> Point | None:
    """`tuple(ast.literal_eval(text))` when that is exactly two ints (bools are ints, as in the official
    `isinstance(x, int)` check), else None. `ast.literal_eval` builds literals only — no names, calls or
    attribute access; it is not eval. The errors it raises on hostile input are all caught here."""
    try:
        value = tuple(ast.literal_eval(text))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    return None


def paren_int_pair(answer: str) -> bool:
    """Single-turn GUI format: the stripped answer starts with '(' and ends with ')' and
    `ast.literal_eval` of it is a tuple of two ints (official point_in_bbox `format_reward`)."""
    a = answer.strip()
    if not (a.startswith("(") and a.endswith(")")):
        return False
    try:
        value = ast.literal_eval(a)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)


def multiturn_paren_pair(answer: str) -> bool:
    """Multi-turn GUI format (point_in_bbox_multicrop step 4): the answer block is `\\s*\\(([^)]*)\\)\\s*`
    and `ast.literal_eval("(" + group.strip() + ")")` is a tuple of two ints."""
    m = _PAREN_PAIR.fullmatch(answer)
    if m is None:
        return False
    try:
        value = ast.literal_eval("(" + m.group(1).strip() + ")")
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)


# ---- multi-turn --------------------------------------------------------------------------------------

def ends_with_answer(s: str) -> bool:
    """`re.search(r"</answer>\\s*(<\\|im_end\\|>)?\\s*$", s, re.DOTALL)` on the stripped output."""
    if s.endswith("</answer>"):
        return True
    return s.endswith("<|im_end|>") and s[: -len("<|im_end|>")].rstrip().endswith("</answer>")


# The official tag walk as a transition table: state -> {tag: next state}. Text between tags is ignored.
_WALK = {
    "think_open": {"<think>": "think_close"},
    "think_close": {"</think>": "post_think"},
    "post_think": {"<tool_call>": "tool_close", "<answer>": "answer_close"},
    "tool_close": {"</tool_call>": "obs_open"},
    "obs_open": {"<observation>": "obs_close"},
    "obs_close": {"</observation>": "think_open"},
    "answer_close": {"</answer>": "end"},
    "end": {},
}


def tag_walk(s: str) -> str:
    """Walk the structural tags (case-insensitive) through think -> /think -> (tool_call -> /tool_call ->
    observation -> /observation -> think -> /think)* -> answer -> /answer, nothing after. "" when the
    walk succeeds, else why it failed."""
    state = "think_open"
    for m in TAG_RE.finditer(s):
        tag = m.group(0).lower()
        nxt = _WALK[state].get(tag)
        if nxt is None:
            expected = " or ".join(_WALK[state]) or "no structural tag after </answer>"
            return f"unexpected {m.group(0)} at offset {m.start()} (expected {expected})"
        state = nxt
    return "" if state == "end" else "no complete <answer>...</answer> at the end of the tag sequence"


@dataclass(frozen=True)
class ToolCall:
    point: Point | None  # None when the call is malformed
    error: str = ""
    name: object = None  # the "name" field as written (not checked by the official reward)


def parse_tool_call(body: str) -> ToolCall:
    """A tool-call body as the official multi-turn format reads it: JSON whose `arguments.coordinate` is a
    list of exactly two ints (`isinstance(x, int)`: true/false count). The tool name is not checked."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError, MemoryError) as e:  # JSONDecodeError and over-long ints
        return ToolCall(None, f"tool call is not JSON: {type(e).__name__}")
    if not isinstance(obj, dict):
        return ToolCall(None, "tool call is not a JSON object")
    args = obj.get("arguments", {})
    if not isinstance(args, dict):  # the official `.get` on a non-dict raises, scored as format 0
        return ToolCall(None, "arguments must be an object", obj.get("name"))
    coord = args.get("coordinate")
    if not (isinstance(coord, list) and len(coord) == 2 and all(isinstance(c, int) for c in coord)):
        return ToolCall(None, "arguments.coordinate must be a list of two integers", obj.get("name"))
    return ToolCall((int(coord[0]), int(coord[1])), "", obj.get("name"))


def tool_calls(s: str) -> list[ToolCall]:
    """Every `<tool_call>{...}</tool_call>` JSON body of the output, in order (official step 3)."""
    return [parse_tool_call(m.group(1)) for m in TOOL_JSON_RE.finditer(s)]
