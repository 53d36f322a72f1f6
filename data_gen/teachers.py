"""MCTS teachers: given a question, its image and the previous steps, return n candidate next outputs, each
one grounded think step or a final answer (`data_gen.mcts.Teacher`).

`ScriptedTeacher` knows the truth of the four synthetic families (`data_gen.synthetic` writes it into each
row's `meta`) and plays a fallible teacher: it points at the scene's target objects or, with probability
`error_rate`, somewhere wrong; it answers correctly once its steps have looked at every target (wrong with
probability `error_rate`), and otherwise guesses. So search has real work to do on CPU without a large
model: the correct chains are the ones that look at the right places. Scenes plug in by task name.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Callable

from data_gen.mcts import COORD_RE, TeacherOutput
from data_gen.rows import PromptRow

Box = tuple[int, int, int, int]


@dataclass
class Scene:
    """What a scripted teacher knows of one question."""

    size: tuple[int, int]  # (W, H) of the image as the model sees it
    targets: list[tuple[str, Box]]  # what must be looked at (name, box) before the answer is known
    gold: str  # the correct answer text
    wrong: Callable[[random.Random], str]  # a wrong (or random) answer


def _inflate(box, pad: int, size) -> Box:
    x1, y1, x2, y2 = box
    return max(0, x1 - pad), max(0, y1 - pad), min(size[0] - 1, x2 + pad), min(size[1] - 1, y2 + pad)


def _other(options: list[str], gold: str) -> Callable[[random.Random], str]:
    wrong = [o for o in options if o != gold] or [gold]
    return lambda rng: rng.choice(wrong)


def _visual_search(row: PromptRow, meta: dict, size) -> Scene:
    return Scene(size, [(f"small {meta['target']}", _inflate(meta["box"], 4, size))], row.gold,
                 _other(row.options, row.gold))


def _spatial(row: PromptRow, meta: dict, size) -> Scene:
    targets = [(name, _inflate((cx, cy, cx, cy), 18, size)) for name, (cx, cy) in
               zip(meta["objects"][:2], meta["centres"][:2])]
    return Scene(size, targets, row.gold, _other(row.options, row.gold))


def _gui(row: PromptRow, meta: dict, size) -> Scene:
    x1, y1, x2, y2 = (int(v) for v in re.findall(r"-?\d+", row.gold))
    gold = f"({(x1 + x2) // 2}, {(y1 + y2) // 2})"
    return Scene(size, [(f"'{meta['label']}' button", (x1, y1, x2, y2))], gold,
                 lambda rng: f"({rng.randrange(size[0])}, {rng.randrange(size[1])})")


def _web_action(row: PromptRow, meta: dict, size) -> Scene:
    ids = [e[0] for e in meta["elements"]]
    m = re.search(r"\[(\d+)\]", row.gold)
    targets = [(f"element [{e[0]}] '{e[2]}'", tuple(e[3])) for e in meta["elements"] if m and e[0] == int(m.group(1))]
    actions = [f"click [{i}]" for i in ids] + ["scroll [down]", "go_back"]
    return Scene(size, targets, row.gold, lambda rng: rng.choice([a for a in actions if a != row.gold]))


SCENES: dict[str, Callable[[PromptRow, dict, tuple[int, int]], Scene]] = {
    "visual_search": _visual_search, "spatial": _spatial, "gui_grounding": _gui, "web_action": _web_action}


def scene_of(row: PromptRow, size: tuple[int, int]) -> Scene:
    """The scripted teacher's knowledge of a synthetic row (original pixels = model pixels: synthetic images
    are generated at sizes the model sees unresized)."""
    if row.task not in SCENES:
        raise ValueError(f"the scripted teacher knows no scenes of task {row.task!r}; known: {sorted(SCENES)}")
    try:
        meta = json.loads(row.meta)
        return SCENES[row.task](row, meta, size)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"row {row.prompt_id!r}: meta does not describe a synthetic {row.task} scene: {e}") from None


class ScriptedTeacher:
    """A fallible teacher over a known scene; deterministic given its seed."""

    def __init__(self, scene: Scene, error_rate: float = 0.3, answer_rate: float = 0.6, seed: int = 0):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.scene, self.error_rate, self.answer_rate = scene, error_rate, answer_rate
        self.rng = random.Random(seed)
        self.calls = 0

    def _looked_at(self, steps: list[str]) -> set[int]:
        seen = set()
        for s in steps:
            for cs in COORD_RE.findall(s):
                x, y = (int(v) for v in re.findall(r"\d+", cs))
                seen |= {i for i, (_, (x1, y1, x2, y2)) in enumerate(self.scene.targets)
                         if x1 <= x <= x2 and y1 <= y <= y2}
        return seen

    def _step(self, todo: list[int]) -> TeacherOutput:
        rng, (w, h) = self.rng, self.scene.size
        if todo and rng.random() >= self.error_rate:
            name, (x1, y1, x2, y2) = self.scene.targets[rng.choice(todo)]
            x, y = rng.randint(x1, x2), rng.randint(y1, y2)
            return TeacherOutput(f"The {name} should be here: ({x}, {y}).")
        x, y = rng.randrange(w), rng.randrange(h)
        return TeacherOutput(f"Let me check this region ({x}, {y}).")

    def _answer(self, found: bool) -> TeacherOutput:
        right = found and self.rng.random() >= self.error_rate
        text = self.scene.gold if right else self.scene.wrong(self.rng)
        return TeacherOutput("", text)

    def generate(self, question: str, image, steps: list[str], n: int, force_final: bool) -> list[TeacherOutput]:
        self.calls += 1
        seen = self._looked_at(steps)
        todo = [i for i in range(len(self.scene.targets)) if i not in seen]
        out = []
        for _ in range(n):
            answer_now = force_final or (steps and (not todo and self.rng.random() < self.answer_rate
                                                    or todo and self.rng.random() < 0.1))
            out.append(self._answer(not todo) if answer_now else self._step(todo))
        return out
