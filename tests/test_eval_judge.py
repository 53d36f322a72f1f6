"""`rewards.eval_judge`: the released evaluation's judges (docs/algorithm.md §8; Gabesarch/grounded-rl@e7970c0
src/vlmsearch/reward_funcs/judge.py driven by src/vlmsearch/tree_search/single_path_rollouts.py). Every
expected value below is worked by hand from those two files."""

import pytest

from rewards.eval_judge import eval_judge, eval_verdict

T = "<think>The umbrella at (120, 88) is red.</think>\n"
CALL = '<think>Look closer.</think>\n<tool_call>\n{"name": "search_coordinate", "arguments": {"coordinate": [1, 2]}}\n</tool_call>'
FORCED = "<think> Based on all the information I've gathered, I'll now provide my final answer. </think>\n<answer>"


@pytest.mark.parametrize("benchmark", ["sat", "blink", "vstar"])
@pytest.mark.parametrize("response, gold, right", [
    (T + "<answer>Left</answer>", "Left", 1.0),  # a capitalised gold: the RL reward's compare scored this 0
    (T + "<answer> left </answer>", "Left", 1.0),
    (T + "<answer>Left.</answer>", "left", 1.0),  # punctuation
    (T + "<answer>A. red</answer>", "red", 1.0),  # an option-letter prefix: the gold occurs inside
    (T + "<answer>red (the umbrella)</answer>", "red", 1.0),  # extra words
    (T + "<answer>r-e d!</answer>", "red", 1.0),  # every ASCII punctuation mark and space goes
    (T + "<answer>12</answer>", "2", 1.0),  # substring: the released judge's known false positive
    (T + "<answer>A</answer>", "red", 0.0),  # a bare option letter is not the option text
    (T + "<answer>B</answer>", "(B)", 1.0),  # a letter gold: '(b)' -> 'b'
    (T + "<answer>red\tcar</answer>", "red car", 0.0),  # only ' ' is removed, not a tab
    (T + "<answer>blue</answer>", "red", 0.0),
    (T + "<answer></answer>", "red", 0.0),
    (T + "<answer>red", "red", 1.0),  # no </answer>: the whole response is read again, still scores
    ("<answer>red</answer>", "red", 1.0),  # no thought node, nothing for the format gate to check
    ("red", "red", 0.0),  # a bare untagged answer never answers
    (T + "red", "red", 0.0),
    ("<think>unclosed <answer>red</answer>", "red", 1.0),  # the answer block alone is a node
    ("Sure. " + T + "then <answer>red</answer> done", "red", 1.0),  # text outside the blocks is ignored
    (T + "<answer>blue</answer><answer>red</answer>", "red", 0.0),  # the first answer counts
    ("<answer>red<think>x</think>", "red", 1.0),  # answer 'red<think>x</think>': the gold occurs in it
    ("<think>I see <answer>red</answer></think>", "red", 1.0),  # the answering node's own text is never gated
    ("<answer><think>x</think>red</answer>", "red", 1.0),
    (T * 10 + "<answer>red</answer>", "red", 1.0),  # 10 thoughts: max_depth 10
    (T * 11 + "<answer>red</answer>", "red", 0.0),  # 11: the rollout ends unanswered
])
def test_string_match_single_turn(benchmark, response, gold, right):
    assert eval_judge(response, gold, benchmark=benchmark, mode="single_turn") == right


@pytest.mark.parametrize("turns, gold, right", [
    ([CALL, "<think>It is red.</think>\n<answer> Red </answer>"], "red", 1.0),
    (['<tool_call>{"arguments": {"coordinate": [1, 2]}}</tool_call>', T + "<answer>red</answer>"], "red", 0.0),
    ([CALL, "<think>no close <answer>red</answer>"], "red", 1.0),  # the answering turn is never gated
    (["<answer>red</answer><think>ok</think>"], "red", 1.0),
    ([CALL] * 4 + [" red <think>"], "red", 1.0),  # forced: '<answer> red <think>' -> 'red <think>'
    ([CALL] * 4 + [" red </answer>"], "red", 1.0),  # the forced turn: <answer> prepended as released
    ([CALL] * 4 + [FORCED + " red </answer>"], "red", 1.0),  # vigorl's transcript holds the prefix
    ([CALL] * 3 + [" red </answer>"], "red", 0.0),  # not forced yet: no answer tag, a thought without tags
    ([CALL, CALL], "red", 0.0),  # never answered
    ([CALL, "<answer>red</answer>", "<answer>blue</answer>"], "red", 1.0),  # turns after the answer: unread
    ("<think>x</think><answer>red</answer>", "red", 1.0),  # a string is one turn
])
def test_string_match_multi_turn(turns, gold, right):
    assert eval_judge(turns, gold, benchmark="vstar", mode="multi_turn") == right


@pytest.mark.parametrize("benchmark", ["screenspot_v2", "screenspot_pro"])
@pytest.mark.parametrize("answer, right", [
    ("(15, 25)", 1.0), ("(10, 20)", 1.0), ("(30, 40)", 1.0),  # borders are inside
    ("(31, 40)", 0.0), ("(9, 25)", 0.0), ("(15, 41)", 0.0),
    ("[15, 25]", 1.0), ("15, 25", 1.0),  # tuple(ast.literal_eval(...)) takes a list or a bare pair
    ("(15.0, 25)", 0.0), ("(15, 25, 1)", 0.0), ("click (15, 25)", 0.0), ("", 0.0),
])
def test_point_in_box(benchmark, answer, right):
    gold = (10, 20, 30, 40)
    assert eval_judge(T + f"<answer>{answer}</answer>", gold, benchmark=benchmark, mode="single_turn") == right
    assert eval_judge(T + f"<answer>{answer}</answer>", "(10, 20, 30, 40)", benchmark=benchmark,
                      mode="single_turn") == right
    assert eval_judge([CALL, T + f"<answer>{answer}</answer>"], gold, benchmark=benchmark,
                      mode="multi_turn") == right


def test_verdict_says_what_it_read_and_why():
    v = eval_verdict(T + "<answer> A. red </answer>", "red", benchmark="sat", mode="single_turn")
    assert (v.score, v.answer, v.judge, v.error) == (1.0, "A. red", "string_match", "")
    v = eval_verdict(["<tool_call>{}</tool_call>", T + "<answer>red</answer>"], "red", benchmark="vstar",
                     mode="multi_turn")
    assert v.score == 0.0 and v.answer == "red" and "lacks <think>" in v.error
    v = eval_verdict(T, "red", benchmark="blink", mode="single_turn")
    assert (v.score, v.answer, v.error) == (0.0, None, "never answered")
    # --rollout_no_thinking (base models): the whole output is the answer
    assert eval_verdict("Red.", "red", benchmark="sat", mode="single_turn", thinking=False).score == 1.0


def test_visualwebarena_uses_its_reference_answers_behind_the_same_gate():
    gold = '{"must_include": ["$25"]}'
    assert eval_judge(T + "<answer>It costs $25.</answer>", gold, benchmark="visualwebarena", mode="single_turn") == 1.0
    assert eval_judge("It costs $25.", gold, benchmark="visualwebarena", mode="single_turn") == 0.0


def test_bad_inputs_name_themselves():
    with pytest.raises(ValueError, match="no evaluation judge for benchmark 'mmmu'"):
        eval_judge("x", "y", benchmark="mmmu", mode="single_turn")
    with pytest.raises(ValueError, match="mode must be"):
        eval_judge("x", "y", benchmark="sat", mode="two_turn")
    with pytest.raises(ValueError, match="gold box must be 4 ints"):
        eval_judge("x", (1, 2, 3), benchmark="screenspot_v2", mode="single_turn")
    assert eval_judge(None, "red", benchmark="sat", mode="single_turn") == 0.0  # a response never raises
