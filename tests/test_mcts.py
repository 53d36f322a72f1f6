"""Teacher-guided MCTS (docs/algorithm.md §6): selection, expansion, rollouts and backup as pure functions, with
hand-worked numbers on a deterministic teacher; the scripted teacher on the synthetic families; judges."""

import math

import pytest

from data_gen.mcts import MCTSConfig, TeacherOutput, Tree, backup, expand, search, select, uct
from rewards.judges import get_judge


class Queue:
    """Returns pre-written outputs in order, n at a time; records what it was asked."""

    def __init__(self, outputs):
        self.outputs, self.asked = list(outputs), []

    def generate(self, question, image, steps, n, force_final):
        self.asked.append((list(steps), n, force_final))
        out, self.outputs = self.outputs[:n], self.outputs[n:]
        return out


def step(text):
    return TeacherOutput(text)


def answer(text, reasoning=""):
    return TeacherOutput(reasoning, text)


def test_uct_hand_worked():
    # 0.5 + 2 * sqrt(ln(3 + 1) / (1 + 1)) = 0.5 + 2 * sqrt(1.386294 / 2) = 0.5 + 2 * 0.832555
    assert uct(0.5, 1, 3, 2.0) == pytest.approx(0.5 + 2 * math.sqrt(math.log(4) / 2))
    assert uct(0.5, 1, 3, 2.0) == pytest.approx(2.16511, abs=1e-5)


def test_backup_is_an_incremental_mean():
    tree = Tree()
    tree.add(0, step("a (1, 2)"))
    for r in (1.0, 0.0, 1.0):
        backup(tree, [0, 1], r)
    assert [n.visits for n in tree.nodes] == [3, 3]
    assert tree.nodes[1].value == pytest.approx(2 / 3)


def test_select_stops_at_unvisited_and_follows_uct():
    tree = Tree()
    a, b = tree.add(0, step("a (1, 1)")), tree.add(0, step("b (2, 2)"))
    assert select(tree, 2.0) == [0]  # both children unvisited: expand here
    tree.nodes[0].visits = 4
    a.visits, a.value, b.visits, b.value = 3, 0.5, 1, 0.4
    # a: 0.5 + 2 sqrt(ln 5 / 4) = 1.7686; b: 0.4 + 2 sqrt(ln 5 / 2) = 2.1942 -> b, a leaf: stop there
    assert select(tree, 2.0) == [0, b.id]
    a.visits, a.value, b.visits, b.value = 2, 1.0, 2, 0.0
    assert select(tree, 2.0) == [0, a.id]  # 2.467 vs 1.467


def test_expand_rejects_repeated_coordinate_strings():
    tree = Tree()
    first = tree.add(0, step("look at (10, 20)"))
    kept = expand(tree, first.id, [step("again (10, 20)"), step("again (10,20)"), answer("red", "at (10, 20)"),
                                   step("new (30, 40)")])
    texts = [tree.nodes[k].text for k in kept]
    # the exact string repeats; "(10,20)" is another string (the released code compares strings); answers pass,
    # and a terminal node keeps the answer only (the released _expand drops the reasoning before <answer>)
    assert texts == ["again (10,20)", "", "new (30, 40)"]
    assert tree.nodes[kept[2]].coord == "(30, 40)" and tree.nodes[kept[2]].used == {"(10, 20)", "(30, 40)"}
    assert tree.nodes[kept[1]].terminal and tree.nodes[kept[1]].coord is None and tree.nodes[kept[1]].answer == "red"
    assert len(expand(tree, first.id, [step("again (10, 20)")], avoid_repeat_coords=False)) == 1
    # vigorl option: the terminal child keeps its reasoning
    [k] = expand(tree, first.id, [answer("red", "at (10, 20)")], answer_keeps_reasoning=True)
    assert (tree.nodes[k].text, tree.nodes[k].answer, tree.nodes[k].terminal) == ("at (10, 20)", "red", True)


def test_teacher_sampling_params_have_no_stop_strings_by_default():
    """Released teacher (qwen_vllm.py generate_single_thought): no stop strings; vigorl's stop_at_tags option
    stops at </think> / </answer>."""
    import inspect

    from configs.jobs import TeacherConfig
    from actors.teacher import VLLMTeacher
    from data_gen.teachers import sampling_kwargs

    assert sampling_kwargs(3, 1.0, 1.0, 512) == {"n": 3, "temperature": 1.0, "top_p": 1.0, "max_tokens": 512}
    assert sampling_kwargs(1, 0.7, 0.9, 64, stop_at_tags=True) == {
        "n": 1, "temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "stop": ["</think>", "</answer>"],
        "include_stop_str_in_output": True}
    assert TeacherConfig().stop_at_tags is False
    assert inspect.signature(VLLMTeacher).parameters["stop_at_tags"].default is False


def test_one_output_with_steps_and_an_answer_is_one_node():
    """Without stop strings one output may hold think steps and an answer. As the released mcts_search.py:
    in expansion it is ONE terminal node holding the answer only (text after <answer>, "A. " dropped); in a
    rollout its reasoning is a step of the rollout; an output of several think steps is one non-terminal node
    whose coordinates all count as used."""
    from data_gen.teachers import parse_output

    both = "<think> It is red (2, 2). </think>\n<answer> A. red </answer> trailing"
    assert parse_output(both) == TeacherOutput("<think> It is red (2, 2). </think>", "red")
    assert parse_output("<think> x </think><answer> blue") == TeacherOutput("<think> x </think>", "blue")
    two = "<think> a (4, 4) </think>\n<think> b (5, 5) </think>"
    teacher = Queue([parse_output(t) for t in ("<think> look (1, 1) </think>", both, two,
                                               "<think> more (3, 3) </think> <answer> blue </answer>",
                                               "<answer>red</answer>")])
    tree = search("q?", None, teacher, lambda a: float(a == "red"),
                  MCTSConfig(simulations=1, children=3, rollouts_per_child=1))
    root, a, t, m = tree.nodes
    assert (t.terminal, t.text, t.answer, t.visits, t.value) == (True, "", "red", 1, 1.0)
    assert t.rollouts == [{"steps": [], "answer": "red", "reward": 1.0}]
    assert a.rollouts == [{"steps": ["<think> look (1, 1) </think>", "<think> more (3, 3) </think>"],
                           "answer": "blue", "reward": 0.0}]
    assert (m.terminal, m.text, m.coord, m.used) == (False, two, "(4, 4)", {"(4, 4)", "(5, 5)"})
    assert m.rollouts[0]["steps"] == [two] and m.rollouts[0]["reward"] == 1.0


def test_a_rollout_without_an_answer_judges_its_last_step_less_a_choice_letter():
    teacher = Queue([step("A (1, 1)"), step("B. red (2, 2)")])  # the forced answer never comes
    tree = search("q?", None, teacher, lambda a: float(a == "red (2, 2)"),
                  MCTSConfig(simulations=1, children=1, rollouts_per_child=1, rollout_steps=1))
    assert tree.nodes[1].rollouts == [{"steps": ["A (1, 1)", "B. red (2, 2)"], "answer": "red (2, 2)", "reward": 1.0}]


def test_teacher_prompt_file_is_the_system_message_byte_for_byte(tmp_path):
    """teacher.prompt_file is read verbatim (a literal backslash-n, CRLF, spaces and the final newline kept;
    no Jinja rendering) and is what the teacher sends as its system message, followed by the released
    "at least N thoughts" line; teacher.prompt_unescape turns each literal backslash-n into a newline."""
    from configs.jobs import MCTSJobConfig
    from actors.teacher import RemoteTeacher
    from cluster.mcts_job import SearchWorker
    from data_gen.teachers import read_prompt_file

    raw = "You help.\\n<think> {step} (x, y) </think>\r\n  {{ not_jinja }} caf\u00e9 \n".encode()
    path = tmp_path / "prompt.jinja"
    path.write_bytes(raw)
    cfg = MCTSJobConfig()
    cfg.teacher.kind, cfg.teacher.prompt_file = "vllm", str(path)
    worker = SearchWorker(cfg)
    assert worker.system == raw.decode("utf-8")

    class Server:
        def __init__(self):
            self.requests = []

        def generate_batch(self, requests):
            self.requests += requests
            return [[TeacherOutput("x (1, 1)")] * r["n"] for r in requests]

    server = Server()
    RemoteTeacher(server, "visual_search", None, worker.system, 4).generate("q?", None, [], 2, False)
    system = server.requests[0]["messages"][0]
    assert system["role"] == "system"
    assert system["content"].encode("utf-8") == raw + (b"\n- There should be at least 4 thoughts before providing "
                                                       b"the final answer.")
    assert read_prompt_file(str(path), unescape=True) == raw.decode().replace("\\n", "\n")
    assert read_prompt_file(str(path), unescape=True).startswith("You help.\n<think>")
    with pytest.raises(FileNotFoundError, match="teacher.prompt_file"):
        read_prompt_file(str(tmp_path / "missing.txt"))


def test_search_hand_worked_two_simulations():
    """Simulation 1 expands the root into A, B and a terminal T, two rollouts each; simulation 2 selects T
    (highest UCT) and backs its value up again."""
    teacher = Queue([step("A (1, 1)"), step("B (2, 2)"), answer("red"),  # expansion of the root
                     answer("red"), answer("blue"),  # A's rollouts: right, wrong
                     step("C (3, 3)"), answer("red"), answer("blue", "D (4, 4)")])  # B's: 2 steps; 1 step
    judge = lambda a: float(a == "red")  # noqa: E731
    tree = search("q?", None, teacher, judge, MCTSConfig(simulations=2))
    root, a, b, t = tree.nodes
    assert (a.text, b.text, t.answer, t.terminal) == ("A (1, 1)", "B (2, 2)", "red", True)
    assert [r["reward"] for r in a.rollouts] == [1.0, 0.0] and a.visits == 2 and a.value == 0.5
    assert b.rollouts == [{"steps": ["B (2, 2)", "C (3, 3)"], "answer": "red", "reward": 1.0},
                          {"steps": ["B (2, 2)", "D (4, 4)"], "answer": "blue", "reward": 0.0}]
    assert t.rollouts == [{"steps": [], "answer": "red", "reward": 1.0}] * 2
    # simulation 2: UCT(T) = 1 + 2 sqrt(ln 7 / 3) beats A and B (0.5 + the same): T again, no teacher call
    assert (t.visits, t.value) == (3, 1.0)
    assert root.visits == 7 and root.value == pytest.approx(5 / 7)
    assert len(teacher.asked) == 6 and teacher.asked[0] == ([], 3, False)
    # rollout steps see the path so far; the answer is forced only on the last allowed step
    assert teacher.asked[3] == (["B (2, 2)"], 1, False)
    assert teacher.asked[4] == (["B (2, 2)", "C (3, 3)"], 1, False)


def test_answer_is_forced_at_max_depth_and_on_the_last_rollout_step():
    teacher = Queue([step("A (1, 1)")] + [step(f"S ({i}, {i})") for i in range(2, 20)])
    search("q?", None, teacher, lambda a: 0.0, MCTSConfig(simulations=1, children=1, rollouts_per_child=1,
                                                          rollout_steps=3))
    assert [f for _, _, f in teacher.asked] == [False, False, False, True]
    teacher = Queue([step(f"S ({i}, {i})") for i in range(1, 20)])
    search("q?", None, teacher, lambda a: 0.0, MCTSConfig(simulations=1, children=1, rollouts_per_child=1,
                                                          rollout_steps=5, max_depth=3))
    assert [f for _, _, f in teacher.asked] == [False, False, True]  # depth 1 -> steps at depth 2, then 3 forced


def test_tree_json_line_format():
    tree = Tree()
    tree.add(0, step("look (1, 2)"))
    tree.add(1, answer("red"))
    nodes = tree.to_json()
    assert nodes[0] == {"id": 0, "parent": None, "depth": 0, "text": "", "coord": None, "terminal": False,
                        "answer": None, "visits": 0, "value": 0.0, "rollouts": []}
    assert (nodes[1]["coord"], nodes[2]["terminal"], nodes[2]["answer"], nodes[2]["depth"]) == ("(1, 2)", True,
                                                                                              "red", 2)


# Hand-worked from the released Judge (reward_funcs/judge.py): string match (gold lower-cased; both stripped,
# ASCII punctuation and ' ' removed, lower-cased; equal or gold inside the answer), point in bbox, _web_action.
@pytest.mark.parametrize("task,gold,answer,reward", [
    ("visual_search", "Red", "red", 1.0),  # the gold is lower-cased
    ("visual_search", "red", "It is RED.", 1.0),  # "itisred" holds "red"
    ("visual_search", "red", "reddish", 1.0),  # a substring counts
    ("visual_search", "red car", "Red car!", 1.0),
    ("visual_search", "red car", "red\tcar", 0.0),  # only ' ' is removed, not tabs
    ("visual_search", "Yes", "  yes!\n", 1.0),
    ("spatial", "left of", "A. Left of", 1.0),  # "aleftof" holds "leftof"
    ("spatial", "2", "12", 1.0),  # the released judge's known false positive
    ("spatial", "12", "2", 0.0),
    ("spatial", "left of", "right of", 0.0),
    ("spatial", "left of", "", 0.0),
    ("web_qa", "$1,299.99", "1299.99", 1.0),  # punctuation gone on both sides
    ("web_qa", "(e) none", "E: None", 1.0),
    ("gui_grounding", "(10, 20, 30, 40)", "(25, 30)", 1.0),
    ("gui_grounding", "(10, 20, 30, 40)", "(10, 40)", 1.0),  # borders inside
    ("gui_grounding", "(10, 20, 30, 40)", "[25, 30]", 1.0),  # any literal of 2 ints
    ("gui_grounding", "(10, 20, 30, 40)", "25, 30", 1.0),
    ("gui_grounding", "(10, 20, 30, 40)", "(5, 30)", 0.0),
    ("gui_grounding", "(10, 20, 30, 40)", "(25.0, 30)", 0.0),  # ints only
    ("gui_grounding", "(10, 20, 30, 40)", "(25, 30, 1)", 0.0),
    ("gui_grounding", "(10, 20, 30, 40)", "point (25, 30)", 0.0),  # not a literal
    ("gui_grounding", "(10, 20, 30, 40)", "__import__('os').getcwd()", 0.0),  # never eval
    ("gui_grounding", "(10.5, 20, 30, 40)", "(25, 30)", 0.0),  # gold must be 4 ints
    ("web_action", "click [12]", "click [12]", 1.0),
    ("web_action", "click [12]", "Click [12]", 1.0),  # lower-cased
    ("web_action", "click [12]", "click [13]", 0.0),
    ("web_action", "click [12]", "click [1]", 0.0),  # "[1]" is not in "click [12]"
    ("web_action", "click [12]", "click on [12]", 0.0),  # not exactly 2 parts
    ("web_action", "type [3] [hello]", "type [3] [hello]", 1.0),
    ("web_action", "type [3] [hello]", "type [3] [bye]", 1.0),  # the text is not compared
    ("web_action", "type [3] [hello world]", "type [3] [hello world]", 0.0),  # 4 parts
    ("web_action", "type [3] [hello]", "type [3]", 0.0),
    ("web_action", "scroll [down]", "scroll [up]", 1.0),  # no direction check
    ("web_action", "stop [42]", "stop [7]", 1.0),
    ("web_action", "go_back", "GO_BACK", 1.0),
    ("web_action", "click [12]", "scroll [down]", 0.0),
    ("web_action", "click [12]", "press [12]", 0.0),
])
def test_judges(task, gold, answer, reward):
    score = get_judge(task)(answer, gold)
    assert score == reward and type(score) is float


@pytest.mark.parametrize("task,gold,answer,reward", [
    ("visual_search", "red", "It is red.", 1.0),
    ("visual_search", "red", "reddish", 0.0),  # whole words
    ("spatial", "2", "12", 0.0),
    ("spatial", "left of", "A. Left of", 1.0),
    ("gui_grounding", "(10, 20, 30, 40)", "(25, 30)", 1.0),
    ("web_action", "click [3]", "click [4]", 0.5),  # the RL accuracy's partial credit
    ("web_action", "scroll [down]", "scroll [up]", 0.0),
])
def test_vigorl_judges(task, gold, answer, reward):
    assert get_judge(task, "vigorl")(answer, gold) == reward


def test_released_judge_functions_are_pure_and_shared():
    from rewards.judges import released_point_in_bbox, released_string_match

    assert released_string_match("anything", "") == 1.0  # an empty gold is inside every answer (released)
    assert released_string_match(" A. Red (the umbrella) ", "red") == 1.0
    assert released_point_in_bbox("(True, 1)", "(0, 0, 5, 5)") == 1.0  # bools are ints to isinstance (released)
    assert released_point_in_bbox("(1, 1)", "[0, 0, 5, 5]") == 1.0
    assert released_point_in_bbox("((1, 1)", "(0, 0, 5, 5)") == 0.0
    with pytest.raises(ValueError, match="judge kind"):
        get_judge("spatial", "lenient")


def test_question_timeout_default_is_the_released_3600_s():
    from pathlib import Path

    import yaml

    from configs.jobs import MCTSJobConfig

    assert MCTSJobConfig().question_timeout_s == 3600.0 and MCTSJobConfig().judge == "released"
    for task in ("spatial", "visual_search", "web_action", "web_grounding"):
        recipe = yaml.safe_load((Path(__file__).parent.parent / "configs" / f"mcts_{task}.yaml").read_text())
        assert recipe.get("question_timeout_s", 3600) == 3600, task


def test_scripted_teacher_search_beats_its_top1(tmp_path):
    """On synthetic visual search, MCTS over the fallible scripted teacher finds a correct chain for more
    questions than the teacher's own first chain gets right (deterministic: fixed seeds)."""
    from data_gen.images import load_rgb
    from data_gen.synthetic import make_dataset
    from data_gen.teachers import ScriptedTeacher, scene_of

    rows = make_dataset("visual_search", 12, seed=3, out=tmp_path, progress=False)
    found, top1 = 0, 0
    for k, row in enumerate(rows):
        size = load_rgb(tmp_path / row.image).size
        judge = lambda a, g=row.gold, task=row.task: get_judge(task)(a, g)  # noqa: E731
        tree = search(row.question, None, ScriptedTeacher(scene_of(row, size), 0.5, seed=k), judge, MCTSConfig())
        found += any(r["reward"] >= 1.0 for n in tree.nodes for r in n.rollouts)
        greedy, steps = ScriptedTeacher(scene_of(row, size), 0.5, seed=100 + k), []
        for d in range(10):
            out = greedy.generate(row.question, None, steps, 1, d == 9)[0]
            if out.answer is not None:
                top1 += judge(out.answer) >= 1.0
                break
            steps.append(out.text)
    assert found > top1 and found >= 9, (found, top1)


def test_a_question_past_its_time_budget_is_recorded_as_failed(tmp_path):
    import dataclasses
    import json

    from configs.jobs import MCTSJobConfig
    from configs.released import official_defaults
    from cluster.mcts_job import SearchWorker
    from data_gen.synthetic import make_dataset

    row = make_dataset("visual_search", 1, seed=0, out=tmp_path, progress=False)[0]
    cfg = official_defaults(MCTSJobConfig())
    cfg.data.path, cfg.question_timeout_s = str(tmp_path), 0.0
    res = SearchWorker(cfg).search(json.dumps(dataclasses.asdict(row)))
    assert res["question_id"] == row.prompt_id and res["failed"].startswith("TimeoutError: search ran past")
    cfg.question_timeout_s = 600.0
    res = SearchWorker(cfg).search(json.dumps(dataclasses.asdict(row)))
    assert "line" in res and res["line"]["image_size"] == [1008, 756] and res["teacher_calls"] > 0


def test_a_teacher_returning_garbage_raises_naming_it():
    class Garbage:
        def generate(self, *args):
            return ["not an output"]

    with pytest.raises(ValueError, match="teacher returned list .*not 3 TeacherOutput"):
        search("q?", None, Garbage(), lambda a: 0.0, MCTSConfig(simulations=1))


def test_scripted_teacher_can_describe_what_is_at_its_points():
    """teacher.describe: steps say what the scene shows at their point (object_colour knows every object)."""
    import json
    import random
    import re

    from data_gen.rows import PromptRow
    from data_gen.synthetic import object_colour
    from data_gen.teachers import ScriptedTeacher, scene_of

    _, m = object_colour(random.Random(5), "q")
    row = PromptRow("q", m["task"], "a.png", 112, 112, m["question"], m["gold"], m["options"], meta=json.dumps(m["meta"]))
    boxes = dict(zip(m["meta"]["objects"], m["meta"]["boxes"]))
    texts = [o.text for k in range(20) for o in ScriptedTeacher(scene_of(row, (112, 112)), 0.5, seed=k, describe=True)
             .generate(row.question, None, [], 3, False)]
    assert any(t.startswith("There is nothing at") for t in texts)
    for t in texts:
        x, y = (int(v) for v in re.search(r"\((\d+), (\d+)\)", t).groups())
        named = re.fullmatch(r"The (\w+) at \(\d+, \d+\) is (\w+)\.", t)
        if named:  # the named object is there
            x1, y1, x2, y2 = boxes[f"{named.group(2)} {named.group(1)}"]
            assert x1 <= x <= x2 and y1 <= y <= y2
        else:
            assert not any(a <= x <= c and b <= y <= d for a, b, c, d in boxes.values())
    plain = ScriptedTeacher(scene_of(row, (112, 112)), 0.5, seed=0).generate(row.question, None, [], 3, False)
    assert all("should be here" in o.text or "check this region" in o.text for o in plain)
