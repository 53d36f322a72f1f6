"""Parsing of model outputs: think/answer blocks, integer points, tool calls. Linear-time, never eval.

Every function here accepts any text (huge, empty, truncated, adversarial) and returns a value; nothing
raises on malformed model output. Numbers longer than 9 digits are not read as coordinates (they would be
absurd, and Python refuses to parse ints over 4,300 digits).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# An integer point "(x, y)" as written in think steps (SPEC §2). 9 digits max: no absurd ints.
POINT_RE = re.compile(r"\(\s*(-?\d{1,9})\s*,\s*(-?\d{1,9})\s*\)")
# The whole answer being exactly one integer point (GUI grounding answers, SPEC §4).
POINT_ONLY_RE = re.compile(r"\s*\(\s*(-?\d{1,9})\s*,\s*(-?\d{1,9})\s*\)\s*")
TAG_RE = re.compile(r"<(/?)(think|answer|tool_call|observation)>")
# Chat-template markup that may stand between blocks of a decoded multi-turn episode.
TEMPLATE_RE = re.compile(r"<\|im_end\|>|<\|endoftext\|>|<\|im_start\|>(?:user|assistant|system)?")
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
TOOL_NAME = "search_coordinate"

Point = tuple[int, int]


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


def points_in(text: str) -> list[Point]:
    """All integer `(x, y)` pairs in order of appearance."""
    return [(int(a), int(b)) for a, b in POINT_RE.findall(text)]


def parse_point_answer(answer: str) -> Point | None:
    """The answer read as exactly one `(int, int)` literal (no eval), else None."""
    m = POINT_ONLY_RE.fullmatch(answer)
    return (int(m.group(1)), int(m.group(2))) if m else None


def first_block(text: str, tag: str) -> str | None:
    """Content of the first complete `<tag>...</tag>` block."""
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    start += len(tag) + 2
    end = text.find(f"</{tag}>", start)
    return None if end < 0 else text[start:end]


def last_answer(text: str) -> str | None:
    """Content of the last complete `<answer>...</answer>` block (the final answer of an episode)."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    return None if start < 0 else text[start + len("<answer>"): end]


def single_turn_structure(text: str) -> str | None:
    """If the output matches `<think>.*?</think>\\s*<answer>.*?</answer>` in whole (dot matches newline,
    SPEC §4), return the answer text; else None. Linear: the full match holds iff the text starts with
    <think>, ends with </answer>, and a `</think>\\s*<answer>` stands between them."""
    text = strip_end(text)
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return None
    inner = text[len("<think>"): len(text) - len("</answer>")]
    m = re.search(r"</think>\s*<answer>", inner)
    if m is None:
        return None
    # The answer is what follows the last `<answer>` (a lazy regex group would take the first; the
    # difference only shows on outputs with several answers, which the task check then rejects).
    return inner[inner.rfind("<answer>") + len("<answer>"):]


@dataclass(frozen=True)
class ToolCall:
    point: Point | None  # None when the call is malformed
    error: str = ""


def parse_tool_call(body: str) -> ToolCall:
    """`{"name": "search_coordinate", "arguments": {"coordinate": [x, y]}}` with int x, y — JSON only."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and over-long ints are ValueErrors
        return ToolCall(None, f"tool call is not JSON: {type(e).__name__}")
    if not isinstance(obj, dict) or obj.get("name") != TOOL_NAME:
        return ToolCall(None, f"tool call name must be {TOOL_NAME!r}")
    args = obj.get("arguments")
    coord = args.get("coordinate") if isinstance(args, dict) else None
    if (not isinstance(coord, list) or len(coord) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in coord)):
        return ToolCall(None, "arguments.coordinate must be a list of two integers")
    if not all(abs(c) < 10**9 for c in coord):
        return ToolCall(None, "coordinate out of range")
    return ToolCall((coord[0], coord[1]))


@dataclass(frozen=True)
class Block:
    tag: str
    content: str


def blocks(text: str) -> tuple[list[Block], str]:
    """Split a (multi-turn) output into its tagged blocks, in order.

    Returns (blocks, error). The error is non-empty when tags nest, do not close, or when anything but
    whitespace and chat-template markup stands between blocks. Observation blocks are opaque (they hold
    the template's image placeholders)."""
    out: list[Block] = []
    pos = 0
    open_tag: str | None = None
    open_end = 0
    for m in TAG_RE.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if open_tag is None:
            if closing:
                return out, f"unexpected </{tag}>"
            gap = TEMPLATE_RE.sub("", text[pos: m.start()])
            if gap.strip():
                return out, f"text outside tags before <{tag}>"
            open_tag, open_end = tag, m.end()
        elif closing and tag == open_tag:
            out.append(Block(tag, text[open_end: m.start()]))
            open_tag, pos = None, m.end()
        elif open_tag == "observation":
            continue  # an observation may quote anything
        else:
            return out, f"<{'/' if closing else ''}{tag}> inside <{open_tag}>"
    if open_tag is not None:
        return out, f"<{open_tag}> not closed"
    if TEMPLATE_RE.sub("", text[pos:]).strip():
        return out, "text after the last block"
    return out, ""
