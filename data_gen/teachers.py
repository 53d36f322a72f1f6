"""MCTS teachers: given a question, its image and the previous steps, return n candidate next outputs, each
one grounded think step or a final answer (`data_gen.mcts.Teacher`).

`ScriptedTeacher` knows the truth of the four synthetic families (`data_gen.synthetic` writes it into each
row's `meta`) and plays a fallible teacher: it points at the scene's target objects or, with probability
`error_rate`, somewhere wrong; it answers correctly once its steps have looked at every target (wrong with
probability `error_rate`), and otherwise guesses. So search has real work to do on CPU without a large
model: the correct chains are the ones that look at the right places. Scenes plug in by task name.

A VLM teacher is sent `mcts_messages` and read by `parse_output`; its vLLM engine is `actors.teacher`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from data_gen.mcts import COORD_RE, TeacherOutput
from data_gen.rows import PromptRow
from data_gen.synthetic import object_sentence

Box = tuple[int, int, int, int]


@dataclass
class Scene:
    """What a scripted teacher knows of one question."""

    size: tuple[int, int]  # (W, H) of the image as the model sees it
    targets: list[tuple[str, Box]]  # what must be looked at (name, box) before the answer is known
    gold: str  # the correct answer text
    wrong: Callable[[random.Random], str]  # a wrong (or random) answer
    # what is visible where, (description, box), when the scene says (object_colour: every object, named by
    # colour and shape): a step then says what it sees at its point, as the MCTS prompt asks a VLM teacher
    visible: list[tuple[str, Box]] = field(default_factory=list)

    def hit(self, point: tuple[int, int]) -> set[int]:
        """Indices of the targets whose box (edges included) holds `point`."""
        return _inside(point, self.targets)

    def seen_at(self, point: tuple[int, int]) -> str | None:
        """The description of what is visible at `point`, if anything."""
        inside = _inside(point, self.visible)
        return self.visible[min(inside)][0] if inside else None


def _inside(point: tuple[int, int], boxes: list[tuple[str, Box]]) -> set[int]:
    x, y = point
    return {i for i, (_, (x1, y1, x2, y2)) in enumerate(boxes) if x1 <= x <= x2 and y1 <= y <= y2}


def _inflate(box, pad: int, size) -> Box:
    x1, y1, x2, y2 = box
    return max(0, x1 - pad), max(0, y1 - pad), min(size[0] - 1, x2 + pad), min(size[1] - 1, y2 + pad)


def _other(options: list[str], gold: str) -> Callable[[random.Random], str]:
    wrong = [o for o in options if o != gold] or [gold]
    return lambda rng: rng.choice(wrong)


def _visual_search(row: PromptRow, meta: dict, size) -> Scene:
    visible = [(name, tuple(box)) for name, box in zip(meta.get("objects", []), meta.get("boxes", []))]
    return Scene(size, [(f"small {meta['target']}", _inflate(meta["box"], 4, size))], row.gold,
                 _other(row.options, row.gold), visible)


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

    def __init__(self, scene: Scene, error_rate: float = 0.3, answer_rate: float = 0.6, seed: int = 0,
                 describe: bool = False):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.scene, self.error_rate, self.answer_rate, self.describe = scene, error_rate, answer_rate, describe
        self.rng = random.Random(seed)
        self.calls = 0

    def _looked_at(self, steps: list[str]) -> set[int]:
        seen = set()
        for s in steps:
            for cs in COORD_RE.findall(s):
                x, y = (int(v) for v in re.findall(r"\d+", cs))
                seen |= self.scene.hit((x, y))
        return seen

    def _step(self, todo: list[int]) -> TeacherOutput:
        rng, (w, h) = self.rng, self.scene.size
        if todo and rng.random() >= self.error_rate:
            name, (x1, y1, x2, y2) = self.scene.targets[rng.choice(todo)]
            x, y = rng.randint(x1, x2), rng.randint(y1, y2)
            text = f"The {name} should be here: ({x}, {y})."
        else:
            x, y = rng.randrange(w), rng.randrange(h)
            text = f"Let me check this region ({x}, {y})."
        if self.describe and self.scene.visible:  # say what is there (the truth at that point, right or wrong)
            seen = self.scene.seen_at((x, y))
            text = object_sentence(seen, (x, y)) if seen else f"There is nothing at ({x}, {y})."
        return TeacherOutput(text)

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
            # answer when forced; after every target was seen, at `answer_rate`; before that, rarely (a guess)
            rate = (self.answer_rate if not todo else 0.1) if steps else 0.0
            answer_now = force_final or self.rng.random() < rate
            out.append(self._answer(not todo) if answer_now else self._step(todo))
        return out


# ---- a VLM teacher: its prompts and how its outputs are read (its vLLM engine: actors.teacher) -----------

# vigorl's MCTS system prompts, by task (the released ones differ per domain the same way): one grounded
# step or the final answer per response; "at least N thoughts" is appended per question (docs/algorithm.md §6).
_STEP_RULES = (
    "Reason step by step about the image, grounding every step in one specific (x, y) point of the image.\n"
    "Each response is EITHER one reasoning step OR the final answer, never both:\n"
    "<think> {one reasoning step about one region} (x, y). </think>\n"
    "<answer> {ANSWER} </answer>\n"
    "- Describe the region at the point and judge how it bears on the question and on previous steps.\n"
    "- Never reuse a coordinate from a previous step; explore different regions before deciding.\n"
    "- Coordinates are integer pixels of the image: (x, y).")
MCTS_SYSTEM_PROMPTS = {
    "visual_search": "You answer questions about small details in an image. " + _STEP_RULES.replace(
        "{ANSWER}", "the text of the correct option"),
    "spatial": "You answer questions about spatial relations between objects in an image. " + _STEP_RULES.replace(
        "{ANSWER}", "the text of the correct option"),
    "gui_grounding": "You locate the screen element a user describes. " + _STEP_RULES.replace(
        "{ANSWER}", "(x, y) of the element"),
    "web_action": "You choose the next web-browser action for an objective. " + _STEP_RULES.replace(
        "{ANSWER}", "one action: click [id], type [id] [text], scroll [down|up], go_back or stop [answer]"),
}
FORCE_FINAL = ("\nYour turn! Max thoughts reached. You should now provide the final answer in the format "
               "<answer> ... </answer>")
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)


# Appended to the system prompt of every question, N drawn per question (the released search's
# `add_thought_number_system_prompt`, on in the MCTS run script: Gabesarch/grounded-rl@e7970c0:
# src/vlmsearch/tree_search/mcts_search.py, N = randint(3, 8) i.e. 3..7).
MIN_THOUGHTS_SUFFIX = "\n- There should be at least {n} thoughts before providing the final answer."


def read_prompt_file(path: str, unescape: bool = False) -> str:
    """`teacher.prompt_file`: a text or Jinja file, as the MCTS run script's per-domain prompts are, used
    verbatim as the system prompt: the exact bytes decoded as UTF-8, nothing stripped, no newline
    translation, no Jinja rendering. With `unescape` (teacher.prompt_unescape), each literal backslash-n
    becomes a newline (the run script's prompts hold literal "\\n": its shell string passes them as-is)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"teacher.prompt_file: {p} does not exist")
    text = p.read_bytes().decode("utf-8")
    if not text.strip():
        raise ValueError(f"teacher.prompt_file: {p} is empty")
    return text.replace("\\n", "\n") if unescape else text


def mcts_messages(system: str, min_thoughts: int, question: str, steps: list[str], force_final: bool) -> list[dict]:
    """The teacher's chat (docs/algorithm.md §6), as the released `generate_single_thought` builds it
    (Gabesarch/grounded-rl@e7970c0:src/vlmsearch/models/qwen_vllm.py): the system prompt as given, then
    `MIN_THOUGHTS_SUFFIX` ("at least N thoughts"); the question with the image, the previous steps appended
    to the user text as `Previous thought k: ...` (think tags removed, stripped); with force_final, a user
    turn asking for the final answer now."""
    text = question
    for k, s in enumerate(steps, 1):
        text += f"\n\nPrevious thought {k}: " + s.replace("<think>", "").replace("</think>", "").strip()
    msgs = [{"role": "system", "content": system + MIN_THOUGHTS_SUFFIX.format(n=min_thoughts)},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if force_final:
        msgs.append({"role": "user", "content": FORCE_FINAL})
    return msgs


def sampling_kwargs(n: int, temperature: float, top_p: float, max_tokens: int, stop_at_tags: bool = False) -> dict:
    """vLLM SamplingParams of one teacher request. Released (default): no stop strings, as the released
    teacher calls its server (Gabesarch/grounded-rl@e7970c0:src/vlmsearch/models/qwen_vllm.py), so one
    output may hold several think steps and an answer, and it is one node. `stop_at_tags` (vigorl): stop
    at the first </think> or </answer> (kept in the text), one step or one answer per output."""
    kw = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    if stop_at_tags:
        kw |= {"stop": ["</think>", "</answer>"], "include_stop_str_in_output": True}
    return kw


def parse_output(text: str) -> TeacherOutput:
    """A teacher completion -> a step (the whole text, stripped), or, if it holds `<answer>`, an answer: the
    text after the first <answer> up to </answer> (or the end), stripped, a leading "A. " dropped, with the
    reasoning written before it, as the released expansion and rollout split it
    (Gabesarch/grounded-rl@e7970c0:src/vlmsearch/tree_search/mcts_search.py). The search decides what a
    terminal node keeps of that reasoning (`MCTSConfig.answer_keeps_reasoning`)."""
    m = _ANSWER.search(text)
    if m is None:
        return TeacherOutput(text.strip())
    answer = re.sub(r"^[A-Z]\. ", "", m.group(1).strip())
    return TeacherOutput(text[: m.start()].strip(), answer)
