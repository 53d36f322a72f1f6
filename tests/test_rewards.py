"""Rewards on hand-written responses of every task and mode, with hand-worked expected values (docs/algorithm.md §4, which
states the released reward functions' behaviour; vigorl's stricter checks are options, off by default)."""

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
    assert (s.format, s.coordinate, s.accuracy, s.overall) == (0.0, 0.0, 1.0, 0.5)  # format = format x coordinate
    outside = "<think>At (250, 10).</think><answer>red</answer>"  # x >= W: counts, as in the released code
    assert score(outside, gold, task="visual_search", mode="single_turn", image_size=SIZE).coordinate == 1.0
    strict = rewards.ScoreConfig(points_in_image=True)  # the vigorl option
    assert score(outside, gold, task="visual_search", mode="single_turn", image_size=SIZE,
                 config=strict).coordinate == 0.0
    # negative and spaced pairs are not the official `\((\d+)\s*,\s*(\d+)\)`; only the first think block counts
    for no in ("<think>At (-5, 6).</think><answer>red</answer>", "<think>At ( 5, 6).</think><answer>red</answer>"):
        assert score(no, gold, task="visual_search", mode="single_turn").coordinate == 0.0
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
    s = score("red", "red", task="visual_search", mode="single_turn_vanilla")
    assert (s.format, s.accuracy) == (0.0, 1.0)  # no answer block: the whole text is the answer


def test_single_turn_grounded_format_is_format_times_coordinate():
    s = score("<think>no point</think><answer>red</answer>", "red", task="visual_search", mode="single_turn")
    assert (s.format, s.coordinate, s.accuracy, s.overall) == (0.0, 0.0, 1.0, 0.5)


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


def test_single_turn_format_is_a_whole_match():
    """Newlines inside blocks are fine; anything after </answer> (a trailing newline, an <|im_end|> left
    in the text) fails: the trainer scores text decoded with special tokens skipped."""
    r = "<think>\nline one (3, 4)\nline two\n</think>\n\n<answer> red </answer>"
    s = score(r, "red", task="visual_search", mode="single_turn")
    assert (s.format, s.accuracy, s.overall) == (1.0, 1.0, 1.0)
    for tail in ("\n", "<|im_end|>"):
        assert score(r + tail, "red", task="visual_search", mode="single_turn").format == 0.0
    # an answer spanning lines passes the format but the accuracy reads one-line answers only
    s = score("<think>(3, 4)</think><answer>\nred\n</answer>", "red", task="visual_search", mode="single_turn")
    assert (s.format, s.accuracy) == (1.0, 0.0)
    # the format needs a non-empty answer for string tasks
    assert score("<think>(3, 4)</think><answer> </answer>", "red", task="spatial", mode="single_turn").format == 0.0


@pytest.mark.parametrize("answer,acc", [
    ("a) left of", 1.0),  # any letter then '.' or ')' is a choice prefix
    ("B. left of", 1.0),
    ("(B) left of", 0.0),  # a parenthesised letter is not
    ("LEFT OF", 1.0),  # the answer is lower-cased ...
])
def test_spatial_choice_prefix(answer, acc):
    r = f"<think>(1, 1)</think><answer>{answer}</answer>"
    assert score(r, "left of", task="spatial", mode="single_turn").accuracy == acc


def test_spatial_gold_is_not_lower_cased():
    """... but the gold is only stripped (released code): a gold with capitals never matches."""
    assert score("<think>(1, 1)</think><answer>Left of</answer>", "Left of", task="spatial",
                 mode="single_turn").accuracy == 0.0


@pytest.mark.parametrize("answer,fmt,acc", [
    ("(10, 20)", 1.0, 1.0),
    ("( 10 , 20 )", 1.0, 1.0),
    ("(10.5, 20)", 0.0, 0.0),
    ("(10, 20, 30)", 0.0, 0.0),
    ("click (10, 20)", 0.0, 0.0),
    ("10, 20", 0.0, 1.0),  # not parenthesised: format 0, yet a Python literal pair for the accuracy
    ("[10, 20]", 0.0, 1.0),
    ("(60, 20)", 1.0, 0.0),  # outside the box
])
def test_gui_grounding_answers(answer, fmt, acc):
    s = score(f"<think>(1, 1)</think><answer>{answer}</answer>", "(0, 0, 50, 50)", task="gui_grounding",
              mode="single_turn")
    assert (s.format, s.accuracy) == (fmt, acc), answer


def test_gui_grounding_never_evaluates_code():
    s = score("<think>(1, 1)</think><answer>(__import__('os').getpid(), 1)</answer>", "(0, 0, 50, 50)",
              task="gui_grounding", mode="single_turn")
    assert (s.format, s.accuracy) == (0.0, 0.0)


def test_web_action_single_turn_format_is_the_regex_alone():
    s = score("<think>(1, 1)</think><answer>press the button</answer>", "click [3]", task="web_action",
              mode="single_turn")
    assert s.format == 1.0 and s.accuracy == 0.0


@pytest.mark.parametrize("gold,answer,acc", [
    ("click [12]", "type [12] [x]", 0.5),  # docs/algorithm.md §4: the id matches, the action does not
    ("click [12]", "click the button", 0.0),  # click with no [id]
    ("click [12]", "I will click [12] now", 1.0),  # substring tests, not a parse
    ("type [4] [red]", "type into the box", 0.0),  # type with no [...]
    ("go_back", "stop and go_back", 1.0),  # go_back is tested before stop
    ("stop [a]", "scroll [down] then stop", 1.0),  # stop before scroll
    ("scroll [up]", "Scroll [up]", 0.0),  # case-sensitive
])
def test_web_action_keyword_order(gold, answer, acc):
    r = f"<think>(1, 1)</think><answer>{answer}</answer>"
    assert score(r, gold, task="web_action", mode="single_turn").accuracy == acc


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
    assert s.diversity == pytest.approx(0.2)  # (500, 50) is outside the 200x100 image and still counts
    assert s.overall == pytest.approx(0.4 * 1.2)
    strict = rewards.ScoreConfig(diversity_in_image=True)  # the vigorl option: no bonus for it
    s = score(episode([(10, 10), (500, 50)], "blue"), "red", task="visual_search", mode="multi_turn",
              image_size=SIZE, config=strict)
    assert s.diversity == 0.0 and s.overall == pytest.approx(0.4)


def test_multi_turn_text_between_tags_is_ignored():
    r = "<think>a (1, 2)</think>\nSo the answer is:\n<answer>red</answer>"
    s = score(r, "red", task="visual_search", mode="multi_turn")
    assert (s.format, s.accuracy, s.error) == (1.0, 1.0, "")


def test_multi_turn_accuracy_is_independent_of_format():
    s = score("<answer> RED </answer>", "red", task="visual_search", mode="multi_turn")
    assert (s.format, s.accuracy) == (0.0, 1.0) and s.overall == pytest.approx(0.6)
    s = score("red", "red", task="visual_search", mode="multi_turn")  # no answer block: the whole text
    assert s.accuracy == 1.0
    s = score("<think>a</think><ANSWER>Red</Answer>", "red", task="visual_search", mode="multi_turn")
    assert s.accuracy == 1.0  # tags matched case-insensitively by the accuracy ...
    assert s.format == 0.0  # ... but the output must end with a lower-case </answer>


def test_multi_turn_tool_call_without_braces_is_not_validated():
    """The released reward validates only `<tool_call>\\s*{...}\\s*</tool_call>` bodies; others pass."""
    r = f"<think>a</think><tool_call>not json</tool_call>{OBS}<think>b</think><answer>red</answer>"
    s = score(r, "red", task="visual_search", mode="multi_turn")
    assert (s.format, s.points) == (1.0, [])


def test_multi_turn_tool_name_not_checked():
    body = '{"name": "zoom", "arguments": {"coordinate": [1, 2]}}'
    r = f"<think>a</think><tool_call>{body}</tool_call>{OBS}<think>b</think><answer>red</answer>"
    assert score(r, "red", task="visual_search", mode="multi_turn").format == 1.0
    strict = rewards.ScoreConfig(check_tool_name=True)  # the vigorl option
    s = score(r, "red", task="visual_search", mode="multi_turn", config=strict)
    assert s.format == 0.0 and "name" in s.error


def test_multi_turn_answer_must_be_nonempty():
    s = score(episode([(10, 10)], " "), "red", task="visual_search", mode="multi_turn")
    assert s.format == 0.0 and "answer" in s.error


def test_multi_turn_forced_answer():
    turns = [f"<think> a ({x}, 5) </think>\n{call(x, 5)}" for x in (10, 40, 80, 120)]
    forced = ("<think> Based on all the information I've gathered, I'll now provide my final answer. </think>\n"
              "<answer> red </answer>")
    s = score(OBS.join(turns + [forced]), "red", task="visual_search", mode="multi_turn", image_size=SIZE)
    assert s.error == "" and s.format == pytest.approx(1.6) and s.overall == pytest.approx(0.6 + 0.64)


@pytest.mark.parametrize("response,why", [
    ("<think>a</think>" + call(1, 2), "does not end with </answer>"),
    ("<think>a</think><answer>red</answer>" + OBS + "<think>b</think><answer>red</answer>", "unexpected"),
    ("<think>a</think>\n<tool_call>\n{\"name\": \"search_coordinate\", \"arguments\": {\"coordinate\": [1.5, 2]}}"
     "\n</tool_call>" + OBS + "<think>b</think><answer>red</answer>", "two integers"),
    ("<think>a</think>\n<tool_call>\n{not json}\n</tool_call>" + OBS + "<think>b</think><answer>red</answer>",
     "not JSON"),
    ("<think>a</think>\n<tool_call>\n{\"arguments\": [1, 2]}\n</tool_call>" + OBS
     + "<think>b</think><answer>red</answer>", "arguments"),
    ("<answer>red</answer>", "unexpected"),
    ("<think>a</think>" + call(1, 2) + "<think>b</think><answer>red</answer>", "unexpected"),
    ("<think>a<answer>red</think></answer>", "unexpected"),
    ("<think>a</think><answer>red</answer><think>", "does not end"),
])
def test_multi_turn_format_failures(response, why):
    s = score(response, "red", task="visual_search", mode="multi_turn", image_size=SIZE)
    assert s.format == 0.0 and why in s.error
    assert s.overall == pytest.approx(0.6 * s.accuracy)


def test_multi_turn_tool_calls_are_not_counted_against_a_budget():
    five = episode([(10 * i, 5) for i in range(1, 6)], "red")  # released code: no limit in the reward
    assert score(five, "red", task="visual_search", mode="multi_turn").format == pytest.approx(1.8)
    s = score(five, "red", task="visual_search", mode="multi_turn", config=rewards.ScoreConfig(max_tool_calls=4))
    assert s.format == 0.0 and "budget" in s.error


@pytest.mark.parametrize("answer,fmt,acc", [
    ("(22, 33)", 1.0, 1.0),
    (" ( 22 , 33 ) ", 1.0, 1.0),
    ("(22, 33,)", 1.0, 1.0),
    ("((22, 33))", 0.0, 1.0),  # single-turn accepts nested parentheses, the multi-turn format does not
    ("22, 33", 0.0, 1.0),
    ("(22.5, 33)", 0.0, 0.0),
    ("(50, 33)", 1.0, 0.0),
])
def test_multi_turn_grounding_answer(answer, fmt, acc):
    s = score(episode([(20, 30)], answer), "(10, 20, 30, 40)", task="gui_grounding", mode="multi_turn",
              image_size=SIZE)
    assert (s.format, s.accuracy) == (fmt, acc)


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
    from rewards.tasks import on_answer

    rewards.register_task("count_test", accuracy=on_answer(lambda a, g: float(a == g)), answer_ok=str.isdigit)
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
    # JSON ints of any length are ints to the released reward; past Python's 4,300-digit limit they fail
    for digits, fmt in ((40, 1.0), (5000, 0.0)):
        body = json.dumps({"name": "search_coordinate", "arguments": {"coordinate": [1, 1]}}).replace(
            "[1, 1]", "[" + "9" * digits + ", 1]")
        s = score(f"<think>a</think><tool_call>{body}</tool_call>{OBS}<think>b</think><answer>red</answer>", "red",
                  task="visual_search", mode="multi_turn")
        assert s.format == fmt


def test_huge_outputs_are_scored_in_linear_time():
    """Megabytes of tags and points (a runaway generation) still score; the parsers are linear."""
    junk = "<think>" + "(1, 2) </think> <answer> " * 100_000 + "</answer>"
    for mode in ("single_turn", "multi_turn"):
        s = score(junk, "red", task="visual_search", mode=mode, image_size=SIZE)
        assert 0.0 <= s.overall <= 1.24
    tool = "<think>a</think>" + (call(5, 5) + OBS + "<think>b</think>") * 20_000 + "<answer>red</answer>"
    s = score(tool, "red", task="visual_search", mode="multi_turn", image_size=SIZE)
    assert s.format == 1.0  # 20,000 calls at one point: no bonus
    for junk in ("<answer>" * 200_000, "type " + "[" * 200_000, "<think>" * 200_000 + "</answer>"):
        for task, gold in (("web_action", "type [1] [x]"), ("gui_grounding", "(0, 0, 9, 9)")):
            for mode in ("single_turn", "multi_turn"):
                assert score(junk, gold, task=task, mode=mode).overall == 0.0
