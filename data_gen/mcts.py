"""Teacher-guided Monte Carlo tree search over grounded reasoning steps (docs/algorithm.md §6), after the released
`vlmsearch/tree_search/mcts_search.py` (Gabesarch/grounded-rl @e7970c0).

A node is one teacher output: think text naming a point (a teacher without stop strings may write several
steps in one output: still one node), or a terminal answer (the answer only: reasoning the same output wrote
before <answer> is dropped, as released; `answer_keeps_reasoning` keeps it). One simulation:

    select   from the root, stop at a terminal node, a leaf, or a node with an unvisited child; else go to
             the child maximising  value + c·sqrt(ln(N_parent + 1) / (n_child + 1)),  c = 2.0
    expand   `children` teacher samples; a non-terminal child repeating a coordinate string already used
             on its path is rejected; at depth >= max_depth the answer is forced
    rollout  `rollouts_per_child` rollouts per new child: <= `rollout_steps` more steps, the answer forced
             on the last; stored on the child, not added to the tree; reward from the task judge
    backup   visits += 1 and value += (reward - value) / visits along the path (incremental mean)

A terminal leaf reached by selection is judged once, then its value is backed up again. Selection,
expansion bookkeeping and backup are pure functions of the tree; the search loop calls the teacher and
the judge. The tree serialises to the `trees.jsonl` line format (`Tree.to_json`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

# The released `_parse_coords`: coordinate strings as written ("(1,2)" and "(1, 2)" differ).
COORD_RE = re.compile(r"\(\s*\d+\s*,\s*\d+\s*\)")


@dataclass(frozen=True)
class TeacherOutput:
    """One teacher sample: a grounded think step, or a final answer (`answer` set, without tags; `text` is
    then whatever reasoning came before the answer, possibly empty)."""

    text: str
    answer: str | None = None


class Teacher(Protocol):
    def generate(self, question: str, image, steps: list[str], n: int, force_final: bool) -> list[TeacherOutput]:
        """n candidate next outputs given the previous step texts; with force_final, answers only."""


Judge = Callable[[str], float]  # final answer text -> reward in [0, 1]


@dataclass
class MCTSConfig:
    simulations: int = 8  # MCTS simulations per question (released code: 8; paper: 20)
    c: float = 2.0  # UCT exploration constant
    children: int = 3  # teacher samples per expansion
    rollouts_per_child: int = 2  # stored rollouts per new child
    rollout_steps: int = 5  # at most this many more steps per rollout, the answer forced on the last
    max_depth: int = 10  # the answer is forced at this depth
    avoid_repeat_coords: bool = True  # reject non-terminal children that repeat a coordinate on their path
    # vigorl option: a terminal child keeps the reasoning its teacher output wrote before <answer> as its text
    # (a step on the path of its rollouts); released (False): a terminal node holds the answer only
    answer_keeps_reasoning: bool = False  # see above


@dataclass
class Node:
    id: int
    parent: int | None
    depth: int
    text: str  # the step text ("" for the root)
    coord: str | None  # the coordinate string the step names (its first), None for the root / answers
    terminal: bool
    answer: str | None
    visits: int = 0
    value: float = 0.0  # running mean of the rewards backed up through this node
    rollouts: list[dict] = field(default_factory=list)  # {"steps": [...], "answer": str, "reward": float}
    children: list[int] = field(default_factory=list)
    used: frozenset[str] = frozenset()  # coordinate strings on the path from the root, this node's included

    def to_json(self) -> dict:
        return {"id": self.id, "parent": self.parent, "depth": self.depth, "text": self.text, "coord": self.coord,
                "terminal": self.terminal, "answer": self.answer, "visits": self.visits, "value": self.value,
                "rollouts": self.rollouts}


@dataclass
class Tree:
    nodes: list[Node] = field(default_factory=lambda: [Node(0, None, 0, "", None, False, None)])

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root to `node_id`."""
        out = []
        while node_id is not None:
            out.append(node_id)
            node_id = self.nodes[node_id].parent
        return out[::-1]

    def steps(self, node_id: int) -> list[str]:
        """The step texts on the path after the root; a terminal node contributes its reasoning text, if any."""
        return [self.nodes[i].text for i in self.path(node_id)[1:] if self.nodes[i].text]

    def add(self, parent: int, out: TeacherOutput) -> Node:
        p = self.nodes[parent]
        coords = COORD_RE.findall(out.text)
        node = Node(len(self.nodes), parent, p.depth + 1, out.text, None if out.answer is not None else
                    (coords[0] if coords else None), out.answer is not None, out.answer,
                    used=p.used | frozenset(coords))
        self.nodes.append(node)
        p.children.append(node.id)
        return node

    def to_json(self) -> list[dict]:
        return [n.to_json() for n in self.nodes]


def ask(teacher: Teacher, question: str, image, steps: list[str], n: int, force_final: bool) -> list[TeacherOutput]:
    """The teacher's n outputs, checked: anything else (garbage) raises, naming what came back, and the job
    records the question as failed."""
    outs = teacher.generate(question, image, list(steps), n, force_final)
    well_formed = isinstance(outs, list) and len(outs) == n and all(
        isinstance(o, TeacherOutput) and isinstance(o.text, str) for o in outs)
    if not well_formed:
        raise ValueError(f"teacher returned {type(outs).__name__} {str(outs)[:200]!r}, not {n} TeacherOutput(s)")
    return outs


def uct(value: float, visits: int, parent_visits: int, c: float) -> float:
    """value + c·sqrt(ln(N_parent + 1) / (n + 1)) (the released `_ucb_score`; +1 keeps it finite)."""
    return value + c * math.sqrt(math.log(parent_visits + 1) / (visits + 1))


def select(tree: Tree, c: float) -> list[int]:
    """The path from the root to the node to expand (or to a terminal node to re-evaluate): stop at a
    terminal node, a leaf, or a node with any unvisited child; else descend to the child of highest UCT
    (the first one on ties)."""
    path = [0]
    while True:
        node = tree.nodes[path[-1]]
        if node.terminal or not node.children or any(tree.nodes[k].visits == 0 for k in node.children):
            return path
        path.append(max(node.children, key=lambda k: uct(tree.nodes[k].value, tree.nodes[k].visits,
                                                         node.visits, c)))


def repeats_coord(out: TeacherOutput, used: frozenset[str]) -> bool:
    """A non-terminal output naming a coordinate string already used on the path (released `_is_coord_repeat`)."""
    return out.answer is None and any(cs in used for cs in COORD_RE.findall(out.text))


def expand(tree: Tree, leaf: int, outputs: list[TeacherOutput], avoid_repeat_coords: bool = True,
           answer_keeps_reasoning: bool = False) -> list[int]:
    """Add the accepted outputs as children of `leaf`; returns their ids. An output holding an answer is
    one terminal child; as the released `_expand` builds it (Gabesarch/grounded-rl@e7970c0:
    src/vlmsearch/tree_search/mcts_search.py) the node keeps only the answer, any reasoning written before
    it in the same output is dropped, unless `answer_keeps_reasoning`."""
    used = tree.nodes[leaf].used
    kept = [o for o in outputs if not (avoid_repeat_coords and repeats_coord(o, used))]
    if not answer_keeps_reasoning:
        kept = [o if o.answer is None else TeacherOutput("", o.answer) for o in kept]
    return [tree.add(leaf, o).id for o in kept]


def backup(tree: Tree, path: list[int], reward: float) -> None:
    """visits += 1; value += (reward - value) / visits for every node on the path."""
    for i in path:
        n = tree.nodes[i]
        n.visits += 1
        n.value += (reward - n.value) / n.visits


def rollout(tree: Tree, child: int, teacher: Teacher, judge: Judge, question: str, image,
            cfg: MCTSConfig) -> float:
    """Play on from `child` (not added to the tree): up to `rollout_steps` more steps, the answer forced on
    the last one (or just before max_depth); without an answer the last step's text is judged, a leading
    "A. " dropped (as the released `_rollout` does). An output with reasoning and an answer adds its reasoning
    to the steps. The rollout is stored on the child; returns its reward."""
    node = tree.nodes[child]
    steps = tree.steps(child)
    answer = node.answer
    depth, k = node.depth, 0
    while answer is None and k < cfg.rollout_steps and depth < cfg.max_depth:
        force = k == cfg.rollout_steps - 1 or depth == cfg.max_depth - 1
        out = ask(teacher, question, image, steps, 1, force)[0]
        if out.text:
            steps.append(out.text)
        answer = out.answer
        depth, k = depth + 1, k + 1
    if answer is None:
        answer = re.sub(r"^[A-Z]\. ", "", steps[-1]) if steps else ""
    reward = float(judge(answer))
    node.rollouts.append({"steps": steps, "answer": answer, "reward": reward})
    return reward


def search(question: str, image, teacher: Teacher, judge: Judge, cfg: MCTSConfig) -> Tree:
    """Run `cfg.simulations` simulations for one question and return the tree."""
    tree = Tree()
    for _ in range(cfg.simulations):
        path = select(tree, cfg.c)
        leaf = tree.nodes[path[-1]]
        if leaf.terminal:
            if leaf.visits == 0:  # judged once, then its value is what is backed up
                leaf.visits, leaf.value = 1, float(judge(leaf.answer or ""))
            backup(tree, path, leaf.value)
            continue
        outputs = ask(teacher, question, image, tree.steps(leaf.id), cfg.children, leaf.depth >= cfg.max_depth)
        for child in expand(tree, leaf.id, outputs, cfg.avoid_repeat_coords, cfg.answer_keeps_reasoning):
            for _ in range(cfg.rollouts_per_child):
                backup(tree, path + [child], rollout(tree, child, teacher, judge, question, image, cfg))
    return tree
