"""ViGoRL rewards (docs/algorithm.md §4) as pure functions. Public entry point: `rewards.score`.

    score(response, gold, *, task, mode, image_size=None, config=ScoreConfig()) -> Score

`task` names a registered task (rewards.tasks: spatial, visual_search, gui_grounding, web_action);
`mode` names a registered mode (single_turn, single_turn_vanilla, multi_turn). With the default config the
result equals the released reward function of that task and mode (Gabesarch/grounded-rl @e7970c0):

    spatial, visual_search   single_turn: string_match_grounded_thinking   vanilla: string_match
                             multi_turn: string_match_multiturn
    gui_grounding            single_turn: point_in_bbox_grounded_thinking  vanilla: point_in_bbox
                             multi_turn: point_in_bbox_multicrop
    web_action               single_turn: web_action_grounded_thinking     vanilla: web_action

`response` is the decoded response as the official trainer scores it (special tokens skipped). Stricter
checks vigorl offers are `ScoreConfig` options, all off by default. `image_size` is (W, H) of the image
the model saw; only those options read it. Any response text yields a valid Score; a malformed gold
raises ValueError (that is a data error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rewards.parse import (TOOL_NAME, Point, answer_for_accuracy, answer_for_accuracy_multiturn, ends_with_answer,
                           first_answer, first_think, single_turn_answer, tag_walk, think_points, tool_calls)
from rewards.tasks import TASKS, Task, get_task, register_task

__all__ = ["Score", "ScoreConfig", "score", "MODES", "TASKS", "register_task", "register_mode"]


@dataclass(frozen=True)
class ScoreConfig:
    """Knobs of the rewards. Defaults reproduce the released code; every stricter vigorl check is off."""

    min_points: int = 1  # coordinate check: distinct integer (x, y) pairs required in the first think block
    points_in_image: bool = False  # vigorl option: every think-step point must lie inside the image
    diversity_bonus: float = 0.2  # multi-turn: per additional distinct tool-call coordinate
    diversity_min_dist: float = 10.0  # px; a coordinate is distinct if this far from all kept ones
    diversity_in_image: bool = False  # vigorl option: tool-call points outside the image earn no bonus
    check_tool_name: bool = False  # vigorl option: a tool call must name search_coordinate
    max_tool_calls: int = 0  # vigorl option: more tool calls than this fail the format (0: no limit)


DEFAULT = ScoreConfig()


@dataclass
class Score:
    overall: float = 0.0  # the episode's scalar reward
    # The official "format" value: single-turn grounded = format x coordinate (0 or 1); vanilla = format;
    # multi-turn = 1.0 + diversity bonus (<= 1.6 with 4 crops), or 0.
    format: float = 0.0
    accuracy: float = 0.0
    coordinate: float = 0.0  # single-turn grounding check (1 when the mode does not use it)
    diversity: float = 0.0  # the bonus part of a multi-turn format score
    answer: str | None = None  # the answer text the accuracy read, stripped
    points: list[Point] = field(default_factory=list)  # think-step points (single) / tool calls (multi)
    error: str = ""  # why format failed, for logs


def _inside(p: Point, image_size: tuple[int, int] | None) -> bool:
    return image_size is None or (0 <= p[0] < image_size[0] and 0 <= p[1] < image_size[1])


def _single(response: str, gold: str, task: Task, image_size, cfg: ScoreConfig, *, grounded: bool) -> Score:
    """format: the whole output matches `<think>.*?</think>\\s*<answer>.*?</answer>` and the task accepts the
    first answer block; coordinate: >= 1 distinct (x, y) in the first think block.
    overall = 0.5·accuracy + 0.5·(format·coordinate) (vanilla: 0.5·accuracy + 0.5·format)."""
    s = Score(answer=answer_for_accuracy(response))
    answer = single_turn_answer(response)
    fmt = 0.0
    if answer is None:
        s.error = "output is not <think>...</think> <answer>...</answer>"
    elif not task.answer_ok(answer):
        s.error = f"answer not well formed for task {task.name}"
    else:
        fmt = 1.0
    s.accuracy = task.accuracy(response, gold)
    if not grounded:
        s.coordinate, s.format = 1.0, fmt
        s.overall = 0.5 * s.accuracy + 0.5 * fmt
        return s
    s.points = think_points(response)
    ok = first_think(response) is not None and len(set(s.points)) >= cfg.min_points
    if cfg.points_in_image and image_size is not None:
        ok = ok and all(_inside(p, image_size) for p in s.points)
    s.coordinate = float(ok)
    s.format = fmt * s.coordinate
    s.overall = 0.5 * s.accuracy + 0.5 * (fmt * s.coordinate)
    return s


def distinct_points(points: list[Point], min_dist: float) -> list[Point]:
    """Greedy in order: keep a point if it is >= min_dist (Euclidean) from every kept one. Compared as
    squared integer distances (exact, and no float overflow on absurd coordinates)."""
    kept: list[Point] = []
    for p in points:
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist ** 2 for q in kept):
            kept.append(p)
    return kept


def _multi(response: str, gold: str, task: Task, image_size, cfg: ScoreConfig) -> Score:
    """Multi-turn format (official tag walk): the stripped output ends with </answer> (optionally
    <|im_end|>), its structural tags walk think -> (tool_call -> observation -> think)* -> answer, every
    tool call's JSON has `arguments.coordinate` = two ints, the answer passes the task's check.
    format = 1.0 + bonus·(distinct coordinates − 1); overall = 0.6·accuracy + 0.4·format. Accuracy is
    scored whatever the format."""
    s = Score(coordinate=1.0, answer=answer_for_accuracy_multiturn(response))
    s.accuracy = task.multi_accuracy(response, gold)
    st = response.strip()
    fmt = 0.0
    if not ends_with_answer(st):
        s.error = "output does not end with </answer>"
    elif err := tag_walk(st):
        s.error = err
    else:
        calls = tool_calls(st)
        s.points = [c.point for c in calls if c.point is not None]
        answer = first_answer(st)
        if any(c.point is None for c in calls):
            s.error = next(c.error for c in calls if c.point is None)
        elif cfg.check_tool_name and any(c.name != TOOL_NAME for c in calls):
            s.error = f"tool call name must be {TOOL_NAME!r}"
        elif cfg.max_tool_calls and len(calls) > cfg.max_tool_calls:
            s.error = f"{len(calls)} tool calls, budget is {cfg.max_tool_calls}"
        elif answer is None or not task.multi_answer_ok(answer):
            s.error = f"final answer empty or not well formed for task {task.name}"
        else:
            usable = [p for p in s.points if not cfg.diversity_in_image or _inside(p, image_size)]
            n = len(distinct_points(usable, cfg.diversity_min_dist))
            fmt = 1.0
            if n > 1:
                fmt += cfg.diversity_bonus * (n - 1)
            s.diversity = fmt - 1.0
    s.format = fmt
    s.overall = 0.6 * s.accuracy + 0.4 * s.format
    return s


ModeFn = Callable[[str, str, Task, "tuple[int, int] | None", ScoreConfig], Score]
MODES: dict[str, ModeFn] = {
    "single_turn": lambda r, g, t, size, cfg: _single(r, g, t, size, cfg, grounded=True),
    "single_turn_vanilla": lambda r, g, t, size, cfg: _single(r, g, t, size, cfg, grounded=False),
    "multi_turn": _multi,
}


MULTI_TURN_MODES = {"multi_turn"}  # modes whose episodes use the zoom tool (several assistant turns)


def register_mode(name: str, fn: ModeFn, *, multi_turn: bool = False) -> None:
    if name in MODES:
        raise ValueError(f"mode {name!r} is already registered")
    MODES[name] = fn
    if multi_turn:
        MULTI_TURN_MODES.add(name)


def is_multi_turn(mode: str) -> bool:
    """Whether episodes of `mode` are multi-turn zoom episodes (else one single-turn response)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; registered modes: {sorted(MODES)}")
    return mode in MULTI_TURN_MODES


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
