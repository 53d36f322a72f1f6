"""Rewards on hand-written responses of every task and mode, with hand-worked expected values (SPEC §4)."""

import json

import pytest

import rewards
from rewards import score

SIZE = (200, 100)


def call(x, y):
    return ('<tool_call>\n{"name": "search_coordinate", "arguments": {"coordinate": [%d, %d]}}\n</tool_call>'
            % (x, y))


OBS = ("<|im_end|>\n<|im_start|>user\n<observation>\nHere is the crop of the image centered on the coordinate:\n"
       "<|vision_start|><|image_pad|><|vision_end|>\n</observation><|im_end|>\n<|im_start|>assistant\n")


def episode(points, answer, think="look"):
    turns = [f"<think> {think} ({x}, {y}) </think>\n{call(x, y)}" for x, y in points]
    turns.append(f"<think> done </think>\n<answer> {answer} </answer>")
    return OBS.join(turns) + "<|im_end|>"


# ---- single turn ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task,gold,answer,acc", [
    ("spatial", "left of", "left of", 1.0),
    ("spatial", "left of", "A. Left of", 1.0),  # choice prefix stripped, case folded
    ("spatial", "left of", "(B) right of", 0.0),
    ("visual_search", "red", " RED ", 1.0),
    ("visual_search", "red", "dark red", 0.0),
    ("gui_grounding", "(10, 20, 30, 40)", "(30, 40)", 1.0),  # inclusive corner
    ("gui_grounding", "(10, 20, 30, 40)", "(31, 40)", 0.0),
    ("web_action", "click [12]", "click [12]", 1.0),
    ("web_action", "click [12]", "click [13]", 0.5),
    ("web_action", "type [4] [red bike]", "type [4] [blue car]", 1.0),  # typed text not compared
    ("web_action", "type [4] [red bike]", "type [5] [red bike]", 0.5),
    ("web_action", "scroll [down]", "scroll [down]", 1.0),
    ("web_action", "scroll [down]", "scroll [up]", 0.0),
    ("web_action", "go_back", "go_back", 1.0),
    ("web_action", "stop [42]", "stop [7]", 1.0),  # stop: keyword only
    ("web_action", "click [12]", "go_back", 0.0),
])
def test_single_turn_grounded(task, gold, answer, acc):
    r = f"<think>The thing is at (50, 60), next to (120, 30).</think>\n<answer> {answer} </answer>"
    s = score(r, gold, task=task, mode="single_turn", image_size=SIZE)
    assert s.accuracy == acc
    assert s.format == 1.0 and s.coordinate == 1.0
    assert s.overall == pytest.approx(0.5 * acc + 0.5)
    assert s.points == [(50, 60), (120, 30)]


def test_single_turn_coordinate_check():
    gold = "red"
    no_points = "<think>It is red.</think><answer>red</answer>"
    s = score(no_points, gold, task="visual_search", mode="single_turn", image_size=SIZE)
    assert (s.format, s.coordinate, s.accuracy, s.overall) == (1.0, 0.0, 1.0, 0.5)
    outside = "<think>At (250, 10).</think><answer>red</answer>"  # x >= W
    assert score(outside, gold, task="visual_search", mode="single_turn", image_size=SIZE).coordinate == 0.0
    # without image_size the pair counts; points only in the first think block count
    assert score(outside, gold, task="visual_search", mode="single_turn").coordinate == 1.0
    later = "<think>hmm</think><think>(5, 5)</think><answer>red</answer>"
    assert score(later, gold, task="visual_search", mode="single_turn").coordinate == 0.0
    floats = "<think>At (5.5, 6).</think><answer>red</answer>"
    assert score(floats, gold, task="visual_search", mode="single_turn").coordinate == 0.0
    cfg = rewards.ScoreConfig(min_points=2)  # the docstring's >= 2 variant
    one = "<think>At (5, 6).</think><answer>red</answer>"
    assert score(one, gold, task="visual_search", mode="single_turn", config=cfg).coordinate == 0.0


def test_single_turn_vanilla_ignores_coordinates():
    s = score("<think>red</think><answer>red</answer>", "red", task="visual_search", mode="single_turn_vanilla")
    assert (s.format, s.accuracy, s.overall) == (1.0, 1.0, 1.0)
    s = score("<answer>red</answer>", "red", task="visual_search", mode="single_turn_vanilla")
    assert (s.format, s.accuracy, s.overall) == (0.0, 1.0, 0.5)  # accuracy still read from the answer


@pytest.mark.parametrize("response", [
    "<think>(1, 2)</think> trailing <answer>red</answer>",
    "prefix <think>(1, 2)</think><answer>red</answer>",
    "<think>(1, 2)</think><answer>red</answer> suffix",
    "<think>(1, 2)<answer>red</answer>",
    "<think>(1, 2)</think><answer>red",
    "<answer>red</answer>",
    "",
])
def test_single_turn_format_failures(response):
    s = score(response, "red", task="visual_search", mode="single_turn")
    assert s.format == 0.0
    assert s.overall == 0.5 * s.accuracy


def test_single_turn_format_allows_im_end_and_newlines():
    r = "<think>\nline one (3, 4)\nline two\n</think>\n\n<answer>\nred\n</answer><|im_end|>\n"
    s = score(r, "red", task="visual_search", mode="single_turn")
    assert (s.format, s.accuracy, s.overall) == (1.0, 1.0, 1.0)


def test_gui_grounding_answer_must_be_int_pair():
    for bad in ["(10.5, 20)", "10, 20", "(10, 20, 30)", "click (10, 20)", "[10, 20]"]:
        s = score(f"<think>(1, 1)</think><answer>{bad}</answer>", "(0, 0, 50, 50)", task="gui_grounding",
                  mode="single_turn")
        assert s.format == 0.0 and s.accuracy == 0.0, bad


def test_web_action_answer_must_be_an_action():
    s = score("<think>(1, 1)</think><answer>press the button</answer>", "click [3]", task="web_action",
              mode="single_turn")
    assert s.format == 0.0 and s.accuracy == 0.0


# ---- multi turn ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("points,bonus", [
    ([], 0.0),
    ([(10, 10)], 0.0),
    ([(10, 10), (50, 50)], 0.2),
    ([(10, 10), (15, 15)], 0.0),  # 7.07 px apart: not distinct
    ([(10, 10), (20, 10)], 0.2),  # exactly 10 px: distinct
    ([(10, 10), (50, 50), (90, 90), (130, 90)], 0.6),  # 4 crops: format 1.6
    ([(10, 10), (50, 50), (12, 12), (90, 90)], 0.4),
])
def test_multi_turn_diversity_bonus(points, bonus):
    s = score(episode(points, "red"), "red", task="visual_search", mode="multi_turn", image_size=SIZE)
    assert s.error == ""
    assert s.diversity == pytest.approx(bonus)
    assert s.format == pytest.approx(1.0 + bonus)
    assert s.overall == pytest.approx(0.6 * 1.0 + 0.4 * (1.0 + bonus))
    assert s.points == points


def test_multi_turn_wrong_answer_and_outside_points():
    s = score(episode([(10, 10), (500, 50)], "blue"), "red", task="visual_search", mode="multi_turn",
              image_size=SIZE)
    assert s.accuracy == 0.0
    assert s.diversity == 0.0  # (500, 50) is outside the 200x100 image: no bonus
    assert s.overall == pytest.approx(0.4)


def test_multi_turn_forced_answer():
    turns = [f"<think> a ({x}, 5) </think>\n{call(x, 5)}" for x in (10, 40, 80, 120)]
    forced = ("<think> Based on all the information I've gathered, I'll now provide my final answer. </think>\n"
              "<answer> red </answer>")
    s = score(OBS.join(turns + [forced]), "red", task="visual_search", mode="multi_turn", image_size=SIZE)
    assert s.error == "" and s.format == pytest.approx(1.6) and s.overall == pytest.approx(0.6 + 0.64)


@pytest.mark.parametrize("response,why", [
    ("<think>a</think>" + call(1, 2), "does not end with </answer>"),
    ("<think>a</think><answer>red</answer>" + OBS + "<think>b</think><answer>red</answer>", "tag sequence"),
    ("<think>a</think>\n<tool_call>\n{\"name\": \"search_coordinate\", \"arguments\": {\"coordinate\": [1.5, 2]}}"
     "\n</tool_call>" + OBS + "<think>b</think><answer>red</answer>", "two integers"),
    ("<think>a</think>\n<tool_call>\nnot json\n</tool_call>" + OBS + "<think>b</think><answer>red</answer>",
     "not JSON"),
    ("<think>a</think>\n<tool_call>\n{\"name\": \"zoom\", \"arguments\": {\"coordinate\": [1, 2]}}\n</tool_call>"
     + OBS + "<think>b</think><answer>red</answer>", "name"),
    ("<answer>red</answer>", "tag sequence"),
    ("<think>a</think>" + call(1, 2) + "<think>b</think><answer>red</answer>", "tag sequence"),
    ("<think>a</think> chatter <answer>red</answer>", "outside tags"),
    ("<think>a<answer>red</answer></think>", "inside"),
])
def test_multi_turn_format_failures(response, why):
    s = score(response, "red", task="visual_search", mode="multi_turn", image_size=SIZE)
    assert s.format == 0.0 and why in s.error
    assert s.overall == pytest.approx(0.6 * s.accuracy)


def test_multi_turn_over_budget():
    s = score(episode([(10 * i, 5) for i in range(1, 6)], "red"), "red", task="visual_search", mode="multi_turn")
    assert s.format == 0.0 and "budget" in s.error


def test_multi_turn_grounding_answer():
    s = score(episode([(20, 30)], "(22, 33)"), "(10, 20, 30, 40)", task="gui_grounding", mode="multi_turn",
              image_size=SIZE)
    assert (s.accuracy, s.format) == (1.0, 1.0)


# ---- bad gold, unknown names -----------------------------------------------------------------------------

@pytest.mark.parametrize("task,gold", [
    ("gui_grounding", "(10, 20)"), ("gui_grounding", "(30, 40, 10, 20)"), ("gui_grounding", "[x, y]"),
    ("web_action", "press enter"), ("spatial", ""), ("visual_search", "  "),
])
def test_bad_gold_raises_naming_it(task, gold):
    with pytest.raises(ValueError, match="gold"):
        score("<think>(1, 1)</think><answer>x</answer>", gold, task=task, mode="single_turn")


def test_unknown_task_and_mode():
    with pytest.raises(ValueError, match="registered tasks"):
        score("", "x", task="nope", mode="single_turn")
    with pytest.raises(ValueError, match="registered modes"):
        score("", "x", task="spatial", mode="nope")


def test_registry_plugs_in_a_new_task():
    rewards.register_task("count_test", accuracy=lambda a, g: float(a.strip() == g), answer_ok=str.isdigit)
    try:
        s = score("<think>(1, 2)</think><answer>3</answer>", "3", task="count_test", mode="single_turn")
        assert s.overall == 1.0
    finally:
        del rewards.TASKS["count_test"]


def test_non_text_response_scores_zero():
    s = score(None, "red", task="visual_search", mode="multi_turn")  # type: ignore[arg-type]
    assert s.overall == 0.0 and "not text" in s.error


def test_huge_numbers_are_not_coordinates():
    big = "9" * 5000
    s = score(f"<think>({big}, 1)</think><answer>({big}, 1)</answer>", "(0, 0, 9, 9)", task="gui_grounding",
              mode="single_turn")
    assert s.points == [] and s.accuracy == 0.0 and s.format == 0.0
    body = json.dumps({"name": "search_coordinate", "arguments": {"coordinate": [int("9" * 40), 1]}})
    s = score(f"<think>a</think><tool_call>{body}</tool_call>{OBS}<think>b</think><answer>red</answer>", "red",
              task="visual_search", mode="multi_turn")
    assert s.format == 0.0


def test_huge_outputs_are_scored_in_linear_time():
    """Megabytes of tags and points (a runaway generation) still score; the parsers are linear."""
    junk = "<think>" + "(1, 2) </think> <answer> " * 100_000 + "</answer>"
    for mode in ("single_turn", "multi_turn"):
        s = score(junk, "red", task="visual_search", mode=mode, image_size=SIZE)
        assert 0.0 <= s.overall <= 1.24
    tool = "<think>a</think>" + (call(5, 5) + OBS + "<think>b</think>") * 20_000 + "<answer>red</answer>"
    s = score(tool, "red", task="visual_search", mode="multi_turn", image_size=SIZE)
    assert s.format == 0.0 and "budget" in s.error
