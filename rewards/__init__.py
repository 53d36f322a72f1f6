"""ViGoRL rewards (SPEC §4) as pure functions. Public entry point: `rewards.score`.

    score(response, gold, *, task, mode, image_size=None) -> Score

`task` names a registered task (rewards.tasks: spatial, visual_search, gui_grounding, web_action);
`mode` names a registered mode (single_turn, single_turn_vanilla, multi_turn). `image_size` is (W, H) of
the image the model saw; when given, points outside it fail the coordinate check. Any response text yields
a valid Score; a malformed gold raises ValueError (that is a data error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from rewards.parse import (Point, blocks, first_block, last_answer, parse_tool_call, points_in,
                           single_turn_structure, strip_end)
from rewards.tasks import TASKS, Task, get_task, register_task

__all__ = ["Score", "ScoreConfig", "score", "MODES", "TASKS", "register_task", "register_mode"]


@dataclass(frozen=True)
class ScoreConfig:
    """Knobs where the paper, its code and vigorl differ (SPEC §4); defaults are vigorl's."""

    min_points: int = 1  # coordinate check: integer (x, y) pairs required in the first think block
    require_in_image: bool = True  # every point must lie in [0, W) x [0, H) when image_size is given
    diversity_bonus: float = 0.2  # multi-turn: per additional distinct tool-call coordinate
    diversity_min_dist: float = 10.0  # px; a coordinate is distinct if this far from all kept ones
    max_tool_calls: int = 4  # multi-turn image budget: full image + 4 crops


DEFAULT = ScoreConfig()


@dataclass
class Score:
    overall: float = 0.0  # the episode's scalar reward
    format: float = 0.0  # multi-turn: 1.0 + diversity bonus (<= 1.6); single-turn: 0 or 1
    accuracy: float = 0.0
    coordinate: float = 0.0  # single-turn grounding check (1 when the mode does not use it)
    diversity: float = 0.0  # the bonus part of a multi-turn format score
    answer: str | None = None  # final answer text, stripped
    points: list[Point] = field(default_factory=list)  # think-step points (single) / tool calls (multi)
    error: str = ""  # why format failed, for logs


def _inside(p: Point, image_size: tuple[int, int] | None) -> bool:
    return image_size is None or (0 <= p[0] < image_size[0] and 0 <= p[1] < image_size[1])


def _single(response: str, gold: str, task: Task, image_size, cfg: ScoreConfig, *, grounded: bool) -> Score:
    s = Score()
    answer = single_turn_structure(response)
    think = first_block(response, "think") or ""
    s.points = points_in(think)
    s.answer = (answer if answer is not None else last_answer(response) or "").strip() or None
    if answer is None:
        s.error = "output is not <think>...</think> <answer>...</answer>"
    elif not task.answer_ok(answer):
        s.error = f"answer not well formed for task {task.name}"
    else:
        s.format = 1.0
    s.accuracy = task.accuracy(s.answer, gold) if s.answer is not None else 0.0
    if grounded:
        ok = len(s.points) >= cfg.min_points and (
            not cfg.require_in_image or all(_inside(p, image_size) for p in s.points))
        s.coordinate = float(ok)
        # overall = 0.5 accuracy + 0.5 format * coordinate (SPEC §4)
        s.overall = 0.5 * s.accuracy + 0.5 * s.format * s.coordinate
    else:
        s.coordinate = 1.0
        s.overall = 0.5 * s.accuracy + 0.5 * s.format  # vanilla GRPO baseline
    return s


def distinct_points(points: list[Point], min_dist: float) -> list[Point]:
    """Greedy in order: keep a point if it is >= min_dist (Euclidean) from every kept one."""
    kept: list[Point] = []
    for p in points:
        if all(math.dist(p, q) >= min_dist for q in kept):
            kept.append(p)
    return kept


def _multi(response: str, gold: str, task: Task, image_size, cfg: ScoreConfig) -> Score:
    """Multi-turn format: tags follow think -> (tool_call -> observation -> think)* -> answer, the output
    ends with </answer> (optionally <|im_end|>), every tool call is valid JSON with an int pair.
    format = 1.0 + bonus * (distinct coordinates - 1); overall = 0.6 accuracy + 0.4 format (SPEC §4)."""
    s = Score()
    bl, err = blocks(response)
    calls = [parse_tool_call(b.content) for b in bl if b.tag == "tool_call"]
    s.points = [c.point for c in calls if c.point is not None]
    final = bl[-1] if bl and bl[-1].tag == "answer" else None
    s.answer = final.content.strip() if final is not None else None
    tags = [b.tag for b in bl]
    expected_tags = ["think"] + ["tool_call", "observation", "think"] * len(calls) + ["answer"]
    if err:
        s.error = err
    elif not strip_end(response).endswith("</answer>"):
        s.error = "output does not end with </answer>"
    elif tags != expected_tags:
        s.error = f"tag sequence {tags[:12]} is not think -> (tool_call -> observation -> think)* -> answer"
    elif any(c.point is None for c in calls):
        s.error = next(c.error for c in calls if c.point is None)
    elif len(calls) > cfg.max_tool_calls:
        s.error = f"{len(calls)} tool calls, budget is {cfg.max_tool_calls}"
    else:
        # Points outside the image earn no bonus: their crop is clipped to (near) nothing.
        usable = [p for p in s.points if not cfg.require_in_image or _inside(p, image_size)]
        kept = distinct_points(usable, cfg.diversity_min_dist)
        s.diversity = cfg.diversity_bonus * max(0, len(kept) - 1)
        s.format = 1.0 + s.diversity
    s.accuracy = task.accuracy(s.answer, gold) if s.answer is not None else 0.0
    s.coordinate = 1.0
    s.overall = 0.6 * s.accuracy + 0.4 * s.format
    return s


ModeFn = Callable[[str, str, Task, "tuple[int, int] | None", ScoreConfig], Score]
MODES: dict[str, ModeFn] = {
    "single_turn": lambda r, g, t, size, cfg: _single(r, g, t, size, cfg, grounded=True),
    "single_turn_vanilla": lambda r, g, t, size, cfg: _single(r, g, t, size, cfg, grounded=False),
    "multi_turn": _multi,
}


def register_mode(name: str, fn: ModeFn) -> None:
    if name in MODES:
        raise ValueError(f"mode {name!r} is already registered")
    MODES[name] = fn


def score(response: str, gold: str, *, task: str, mode: str,
          image_size: tuple[int, int] | None = None, config: ScoreConfig = DEFAULT) -> Score:
    """Score one response. See the module docstring."""
    t = get_task(task)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; registered modes: {sorted(MODES)}")
    t.check_gold(gold)
    if image_size is not None:
        w, h = image_size
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise ValueError(f"image_size must be (width, height) positive ints, got {image_size!r}")
    if not isinstance(response, str):
        return Score(error=f"response is {type(response).__name__}, not text")
    return MODES[mode](response, gold, t, image_size, config)
