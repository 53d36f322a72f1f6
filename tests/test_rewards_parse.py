"""The linear-time parsers equal the regular expressions of the released reward functions they stand in
for (quoted in rewards/parse.py), on generated text rich in the pieces those regexes look for."""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import parse

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", "</Answer>", "<|im_end|>", "\n", " ", "\t",
          "[", "]", "x", "(1, 2)", "<tool_call>", "</tool_call>"]
TEXT = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=30).map("".join)
FAST = settings(max_examples=1_500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _group(m, i=1):
    return m.group(i) if m else None


@FAST
@given(text=TEXT)
def test_blocks_equal_the_official_searches(text):
    assert parse.first_think(text) == _group(re.search(r"<think>(.*?)</think>", text, re.DOTALL))
    assert parse.first_answer(text) == _group(re.search(r"<answer>(.*?)</answer>", text, re.DOTALL))
    one_line = _group(re.search(r"<answer>(.*?)</answer>", text))
    assert parse.answer_for_accuracy(text) == (one_line if one_line is not None else text).strip()
    assert parse._lazy_block(text, "[", "]", dotall=False) == _group(re.search(r"\[(.*?)\]", text))
    m = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL | re.IGNORECASE)
    assert parse.answer_for_accuracy_multiturn(text) == (m.group(1) if m else text).strip().lower()


@FAST
@given(text=TEXT)
def test_whole_match_and_end_check_equal_the_official_regexes(text):
    full = re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL)
    assert (parse.single_turn_answer(text) is not None) == (full is not None)
    s = text.strip()
    assert parse.ends_with_answer(s) == bool(re.search(r"</answer>\s*(<\|im_end\|>)?\s*$", s, re.DOTALL))
