"""Prompt templates, by name: a prompt row -> the chat messages of an episode's first turn.

`plain` (alias `from_chat_template`) sends the image and the question with no system message, so the
checkpoint's chat template supplies its own (a released ViGoRL checkpoint carries its training system
prompt there, docs/algorithm.md §2). `vigorl_multi_turn` / `vigorl_single_turn` spell the output
format out in a per-task system prompt (`system_prompt`, also the system message of the SFT data vigorl
builds), for base models. Register more with `register_prompt`.
`read_system_prompt` reads a recipe's own system prompt file instead (`rollout.system_prompt_file`; the
`system_prompt_file` of the SFT data builders, `data_gen.traces`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from data_gen.rows import PromptRow

MULTI_TURN_SYSTEM = (
    "You are a helpful assistant that reasons about images in grounded steps. In each turn, think inside "
    "<think> </think> and name the point (x, y) in the image that the step is about. To look closer, call "
    "the zoom tool:\n<tool_call>\n{\"name\": \"search_coordinate\", \"arguments\": {\"coordinate\": [x, y]}}"
    "\n</tool_call>\nYou will receive the crop centred on that point. When you know, give the final answer "
    "inside <answer> </answer>{answer}. Coordinates are integer pixels of the full image."
)
SINGLE_TURN_SYSTEM = (
    "You are a helpful assistant that reasons about images in grounded steps. Think inside <think> </think>, "
    "naming the point (x, y) in the image that each step is about, then give the final answer inside "
    "<answer> </answer>{answer}. Coordinates are integer pixels of the image."
)
# What goes in the answer, per task (the released prompts differ per domain the same way).
ANSWER_FORMATS = {
    "spatial": " as the exact text of the chosen option",
    "visual_search": " as the exact text of the chosen option",
    "gui_grounding": " as the point (x, y) of the element",
    "web_action": " as one action: click [id], type [id] [text], scroll [down|up], go_back or stop [answer]",
}


def system_prompt(task: str, multi_turn: bool) -> str:
    """vigorl's RL system prompt of a task (also the system message of the SFT data built for it)."""
    return (MULTI_TURN_SYSTEM if multi_turn else SINGLE_TURN_SYSTEM).replace("{answer}", ANSWER_FORMATS.get(task, ""))


def read_system_prompt(path: str, unescape: bool = False) -> str | None:
    """The system prompt file's text, stripped, as the released RL trainer reads its format prompt
    (Gabesarch/grounded-rl@e7970c0:src/trainer/rl/verl/utils/dataset.py: `f.read()`, then `.strip()` as the
    system message; not rendered as Jinja, so literal `\n` escapes stay as written). `unescape`: each literal
    `\n` becomes a newline. None when no file is configured."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"rollout.system_prompt_file: {p} does not exist")
    text = p.read_text(encoding="utf-8").strip()
    if unescape:
        text = text.replace("\\n", "\n")
    if not text:
        raise ValueError(f"rollout.system_prompt_file: {p} is empty")
    return text


PromptFn = Callable[[PromptRow], list[dict]]
PROMPTS: dict[str, PromptFn] = {}


def register_prompt(name: str, fn: PromptFn) -> None:
    if name in PROMPTS:
        raise ValueError(f"prompt {name!r} is already registered")
    PROMPTS[name] = fn


def get_prompt(name: str) -> PromptFn:
    if name not in PROMPTS:
        raise ValueError(f"unknown prompt {name!r}; registered prompts: {sorted(PROMPTS)}")
    return PROMPTS[name]


def _user(row: PromptRow) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row.question}]}


register_prompt("plain", lambda row: [_user(row)])
# The same, named for what it does: no system message, so the checkpoint's chat template supplies its own
# (the released ViGoRL checkpoints carry their training system prompt there, docs/algorithm.md §2).
register_prompt("from_chat_template", PROMPTS["plain"])
register_prompt("vigorl_multi_turn", lambda row: [{"role": "system", "content": system_prompt(row.task, True)},
                                                  _user(row)])
register_prompt("vigorl_single_turn", lambda row: [{"role": "system", "content": system_prompt(row.task, False)},
                                                   _user(row)])
