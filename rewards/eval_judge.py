"""The released evaluation's judges (docs/algorithm.md §8), as one pure function: `eval_judge`.

    eval_judge(response, gold, *, benchmark, mode, options=None) -> float   # 1.0 right, 0.0 wrong

This is how Gabesarch/grounded-rl@e7970c0 scores its benchmarks, not how its RL reward does: the driver is
`src/vlmsearch/tree_search/single_path_rollouts.py` (`search` / `_do_single_rollout`, one rollout per item),
the judges are `src/vlmsearch/reward_funcs/judge.py` (`Judge.judge`), and the settings are the scripts
`scripts/evaluation/eval_{spatial,web_grounding,multiturn}.sh`:

- V*Bench, SAT-2, BLINK: `string_match` (`rewards.judges.released_string_match`: lower-cased, stripped,
  ASCII punctuation and spaces removed; right if equal or the gold occurs inside the answer).
- ScreenSpot-V2 / -Pro (and v1): `point_in_bbox` (`rewards.judges.released_point_in_bbox`: the answer read
  as a Python literal `(x, y)` of ints, inside the gold box, borders included).
- VisualWebArena has no released evaluation: its own reference answers judge the extracted answer
  (`rewards.tasks.vwa_string_match`) behind the same extraction and format gate.

How the answer is found (the released rollout, reproduced step for step):

single_turn (`--generate_upfront`, `--max_depth` 10): the response is cut into its `<think>…</think>` and
`<answer>…</answer>` blocks (regex alternation, leftmost first, non-greedy, dot matches newline). Blocks are
taken one by one as nodes; once they run out the *whole response* is the next node, again and again. A node
that holds `<answer>` is terminal: if it also holds `<think>`, the text before the first `<answer>`
(stripped) is one more thought node, and the answer is the text after the first `<answer>`, up to the
next `<answer>` if any, cut at the first `</answer>`, stripped (a missing `</answer>` still scores). Every
other node is a thought; after more than 10 thoughts the rollout ends unanswered (wrong). The text before
`<answer>` in the answering node is never format-checked (so `<think>I see <answer>red</answer>` is right).
multi_turn (`--max_depth` 4, MAX_TURNS): each assistant turn is one node. The turn generated at depth 4 is
the forced one: the released eval sends the prefix `<think> Based on all the information I've gathered,
I'll now provide my final answer. </think>\\n<answer>` and prepends `<answer>` to its output when the output
lacks one; a turn list that holds the prefix (vigorl's transcripts do) reads the same.
Format gate (both modes): every thought node must hold both `<think>` and `</think>` (`Judge.format_check`),
else the item scores 0 whatever its answer. The root and the answering node are not checked, so a lone
`<answer>red</answer>` passes while a bare `red` never answers.
`thinking=False` is the released `--rollout_no_thinking` (base models): the whole response is the answer.

`options` (the item's choices) is accepted for judges that read them; the released ones do not, so a bare
option letter is not credited against an option-text gold, exactly as in the released evaluation.
`response`: a string (single-turn), the list of assistant turns in order (multi-turn; a string is one turn).
`gold`: as the loader gives it; for point-in-box a box `(x1, y1, x2, y2)` (tuple or text) in the frame of
the response's points. A gold in the wrong form is a data error (ValueError); responses never raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rewards.judges import released_point_in_bbox, released_string_match, released_web_action
from rewards.tasks import vwa_string_match

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
SINGLE_TURN_MAX_DEPTH = 10  # arguments.py --max_depth default; eval_spatial / eval_web_grounding pass none
MULTI_TURN_MAX_DEPTH = 4  # eval_multiturn.sh MAX_TURNS -> --max_depth
# single_path_rollouts.py `_do_single_rollout`: the generate_upfront node pattern
_BLOCKS = re.compile(r"(<think>.*?</think>|<answer>.*?</answer>)", re.DOTALL)

JudgeFn = Callable[[str, str], float]  # (extracted answer, gold text) -> 0.0 | 1.0


# judge by released name (`Judge.judge_type`)
JUDGES: dict[str, JudgeFn] = {"string_match": released_string_match, "point_in_bbox": released_point_in_bbox,
                              "web_action": released_web_action, "vwa_string_match": vwa_string_match}
# benchmark (loader) name -> released judge name (eval_*.sh JUDGE=...)
BENCHMARK_JUDGES: dict[str, str] = {
    "vstar": "string_match", "sat": "string_match", "blink": "string_match",
    "screenspot_v1": "point_in_bbox", "screenspot_v2": "point_in_bbox", "screenspot_v2_original": "point_in_bbox",
    "screenspot_pro": "point_in_bbox", "visualwebarena": "vwa_string_match",
}
# a dataset without a benchmark (prompts.parquet) is judged by each row's task, as MCTS judges it
TASK_JUDGES: dict[str, str] = {"spatial": "string_match", "visual_search": "string_match",
                               "gui_grounding": "point_in_bbox", "web_action": "web_action",
                               "web_qa": "vwa_string_match", "object_colour": "string_match"}


def register_eval_judge(benchmark: str, judge: str) -> None:
    """Judge a new benchmark (a `data_gen.benchmarks` loader name) with a judge of `JUDGES`."""
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}; judges: {sorted(JUDGES)}")
    if benchmark in BENCHMARK_JUDGES:
        raise ValueError(f"benchmark {benchmark!r} already has a judge ({BENCHMARK_JUDGES[benchmark]})")
    BENCHMARK_JUDGES[benchmark] = judge


def judge_name(benchmark: str) -> str:
    if benchmark not in BENCHMARK_JUDGES:
        raise ValueError(f"no evaluation judge for benchmark {benchmark!r}; known: {sorted(BENCHMARK_JUDGES)}")
    return BENCHMARK_JUDGES[benchmark]


@dataclass
class Verdict:
    score: float  # 1.0 right, 0.0 wrong
    answer: str | None  # the answer the judge read (None: the rollout never answered)
    judge: str  # the released judge's name
    error: str = ""  # why it scored 0 before the answer was compared (format gate, no answer)
    thoughts: list[str] = field(default_factory=list)  # the thought nodes the format gate checked


def _terminal(node: str) -> tuple[list[str], str]:
    """A node holding `<answer>`: the answer. The released rollout also makes the text before `<answer>` a
    thought node when the node holds `<think>`, but never appends it to the path the format gate walks
    (`_do_single_rollout` sets `current_node` to it, `path` gets only the leaf): it is not checked."""
    return [], node.split(ANSWER_OPEN)[1].strip().split(ANSWER_CLOSE)[0].strip()


def _walk_single(text: str) -> tuple[list[str], str | None]:
    blocks = _BLOCKS.findall(text)
    thoughts: list[str] = []
    while True:
        node = blocks.pop(0) if blocks else text
        if ANSWER_OPEN in node:
            extra, answer = _terminal(node)
            return thoughts + extra, answer
        thoughts.append(node)
        if len(thoughts) > SINGLE_TURN_MAX_DEPTH:
            return thoughts, None


def _walk_multi(turns: Sequence[str]) -> tuple[list[str], str | None]:
    thoughts: list[str] = []
    for turn in turns:
        if len(thoughts) >= MULTI_TURN_MAX_DEPTH and ANSWER_OPEN not in turn:
            turn = ANSWER_OPEN + turn  # the forced turn: qwen_vllm.py prepends the tag its prefix ended with
        if ANSWER_OPEN in turn:
            extra, answer = _terminal(turn)
            return thoughts + extra, answer
        thoughts.append(turn)
        if len(thoughts) > MULTI_TURN_MAX_DEPTH:
            break
    return thoughts, None


def _gold_text(gold, judge: str) -> str:
    if judge == "point_in_bbox" and isinstance(gold, (tuple, list)):
        if len(gold) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in gold):
            raise ValueError(f"gold box must be 4 ints (x1, y1, x2, y2), got {gold!r}")
        return str(tuple(gold))
    if not isinstance(gold, str):
        raise ValueError(f"gold must be text (or a box tuple for point_in_bbox), got {type(gold).__name__}")
    return gold


def eval_verdict(response: str | Sequence[str], gold, *, benchmark: str, mode: str,
                 options: Sequence[str] | None = None, thinking: bool = True, judge: str | None = None) -> Verdict:
    """`eval_judge` with what it read: the answer, the judge's name, why it failed. `judge` overrides the
    benchmark's judge by name (prompts.parquet rows are judged by their task: `TASK_JUDGES`)."""
    name = judge or judge_name(benchmark)
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; judges: {sorted(JUDGES)}")
    if mode not in ("single_turn", "single_turn_vanilla", "multi_turn"):
        raise ValueError(f"mode must be single_turn or multi_turn, got {mode!r}")
    gold_text = _gold_text(gold, name)
    multi = mode == "multi_turn"
    turns = [response] if isinstance(response, str) else list(response) if isinstance(response, (list, tuple)) else None
    if turns is None or not all(isinstance(t, str) for t in turns):
        return Verdict(0.0, None, name, error="response is not text or a list of turns")
    if not thinking:  # --rollout_no_thinking: one terminal node, the whole output
        thoughts, answer = [], "".join(turns)
    elif multi:
        thoughts, answer = _walk_multi(turns)
    else:
        thoughts, answer = _walk_single("".join(turns))
    bad = next((t for t in thoughts if not (THINK_OPEN in t and THINK_CLOSE in t)), None)
    if bad is not None:
        return Verdict(0.0, answer, name, error=f"a step lacks <think>...</think>: {bad[:80]!r}", thoughts=thoughts)
    if answer is None:
        return Verdict(0.0, None, name, error="never answered", thoughts=thoughts)
    return Verdict(float(JUDGES[name](answer, gold_text)), answer, name, thoughts=thoughts)


def eval_judge(response: str | Sequence[str], gold, *, benchmark: str, mode: str,
               options: Sequence[str] | None = None) -> float:
    """1.0 if the released evaluation scores `response` right against `gold` on `benchmark`, else 0.0.
    See the module docstring."""
    return eval_verdict(response, gold, benchmark=benchmark, mode=mode, options=options).score
