"""Property-based fuzz of the parser and rewards: >= 10,000 generated outputs per run, built from the
grammar's own pieces (tags, tool-call JSON, points, template tokens) mixed with arbitrary text. No
exception, every score in its range."""

import math

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.zoom import ZoomEpisode, ZoomSettings
from rewards import score
from rewards.parse import parse_tool_call, single_turn_answer, tag_walk

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "<observation>",
          "</observation>", "<|im_end|>", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|image_pad|>", "\n",
          " ", "(12, 34)", "(-5, 7)", "(1.5, 2)", "(99999999999, 1)", "red", "click [3]", "type [2] [x]",
          "scroll [down]", "go_back", "stop [a]", "(10, 20)",
          '{"name": "search_coordinate", "arguments": {"coordinate": [10, 20]}}',
          '{"name": "search_coordinate", "arguments": {"coordinate": [true, 2]}}',
          '{"name": "search_coordinate", "arguments": {"coordinate": [1e400, 2]}}',
          '{"name": "search_coordinate", "arguments": {"coordinate": ' + "[" * 3000 + "]" * 3000 + "}}",
          '{"name": "search_coordinate"', "A. ", "(B) "]
TEXT = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=40).map("".join)
CASES = [("spatial", "left of"), ("visual_search", "red"), ("gui_grounding", "(10, 20, 30, 40)"),
         ("web_action", "click [3]"), ("web_action", "type [2] [x]")]
MODES = ["single_turn", "single_turn_vanilla", "multi_turn"]
SIZES = [None, (200, 100), (1, 1)]


@settings(max_examples=10_000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=TEXT, case=st.sampled_from(CASES), mode=st.sampled_from(MODES), size=st.sampled_from(SIZES))
def test_score_never_raises_and_stays_in_range(text, case, mode, size):
    task, gold = case
    s = score(text, gold, task=task, mode=mode, image_size=size)
    for v in (s.overall, s.format, s.accuracy, s.coordinate, s.diversity):
        assert isinstance(v, float) and math.isfinite(v)
    assert 0.0 <= s.accuracy <= 1.0
    # multi-turn format: 1 + 0.2 per further distinct tool call (the reward itself has no call limit)
    assert 0.0 <= s.format <= (1.0 + 0.2 * max(0, len(s.points) - 1) if mode == "multi_turn" else 1.0) + 1e-9
    assert s.overall == pytest.approx(0.6 * s.accuracy + 0.4 * s.format if mode == "multi_turn"
                                      else 0.5 * s.accuracy + 0.5 * s.format)
    # the parsers themselves
    single_turn_answer(text)
    tag_walk(text)
    parse_tool_call(text)


@settings(max_examples=1_000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(turns=st.lists(TEXT, min_size=1, max_size=7))
def test_episode_state_machine_never_raises(turns):
    from PIL import Image

    ep = ZoomEpisode(Image.new("RGB", (56, 28)), ZoomSettings(half_size=10, out_size=28))
    for t in turns:
        if ep.done:
            break
        step = ep.step(t)
        assert step.done or step.crop is not None
    assert ep.n_images <= ep.settings.max_images
