"""`vigorl eval`'s pure parts: the interval, the summary over hand-made item lines, resume reading."""

import json
from collections import Counter

import pytest

from cluster.eval_job import read_items
from cluster.eval_summary import summarize, wilson


def test_wilson_interval_hand_worked():
    # 50/100: centre (0.5 + 1.96^2/200) / (1 + 1.96^2/100) = 0.5; half-width 1.96 sqrt(0.0025 + 0.00009604)
    # / 1.0384 = 0.0962
    assert wilson(0.5, 100) == (0.4038, 0.5962)
    lo, hi = wilson(0.0, 10)
    assert lo == 0.0 and hi == 0.2775  # z^2/n / (1 + z^2/n) = 0.38416 / 1.38416
    assert wilson(0.0, 0) == (0.0, 0.0)


def line(item, correct, group="a", fmt=1.0, overall=None, zooms=0, answer="x"):
    return {"item_id": item, "subgroup": group, "correct": correct, "answer": answer, "tool_calls": [[1, 2]] * zooms,
            "reward": {"overall": overall if overall is not None else float(correct), "format": fmt}}


def test_summary_overall_per_subgroup_and_pass_at_k():
    lines = [line("1", True, "a", zooms=2), line("1", False, "a", fmt=0.0, answer=None),
             line("2", False, "b", zooms=1), line("2", False, "b")]
    s = summarize(lines, k=2, skipped=Counter({"image: missing": 1}))
    o = s["overall"]
    assert (o["n"], o["samples"], o["accuracy"], o["format_rate"], o["zooms"], o["unparsed"]) == (2, 4, 0.25, 0.75,
                                                                                                 0.75, 1)
    assert o["reward"] == 0.25 and o["accuracy_ci95"] == wilson(0.25, 4)
    assert o["pass@2"] == 0.5 and o["pass@2_ci95"] == wilson(0.5, 2)
    assert s["subgroups"]["a"]["accuracy"] == 0.5 and s["subgroups"]["b"]["pass@2"] == 0.0
    assert s["skipped"] == {"image: missing": 1}
    assert "pass@1" not in summarize(lines[:1], k=1, skipped=Counter())["overall"]


def test_resume_reader_drops_a_half_written_line_and_an_incomplete_item(tmp_path):
    p = tmp_path / "items.jsonl"
    whole = [line("1", True), line("1", False), line("2", True)]
    p.write_text("".join(json.dumps(x) + "\n" for x in whole) + '{"item_id": "2", "corr')
    with pytest.warns(UserWarning, match="line 4: dropping a half-written last line"):
        kept = read_items(p, k=2)
    assert [x["item_id"] for x in kept] == ["1", "1"]  # item 2 has 1 of its 2 samples: scored again
    assert [json.loads(x)["item_id"] for x in p.read_text().splitlines()] == ["1", "1"]
    p.write_text(json.dumps(whole[0]) + "\nnot json\n" + json.dumps(whole[1]) + "\n")
    with pytest.raises(ValueError, match=f"{p} line 2: not an item line"):
        read_items(p, k=1)


def test_released_checkpoint_system_prompt_comes_from_its_chat_template(tmp_path):
    """`rollout.prompt=from_chat_template` sends no system message, so a released ViGoRL checkpoint's own
    training system prompt (kept in its chat template) is what the model sees; a vigorl prompt replaces it."""
    from transformers import AutoProcessor

    from actors.rollout import Rollout
    from actors.zoom import ZoomSettings
    from data_gen.rows import PromptRow
    from data_gen.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "m", vocab="small", size="tiny")
    template = model / "chat_template.jinja"
    template.write_text(template.read_text().replace("You are a helpful assistant.", "You are ViGoRL, think in points."))
    proc = AutoProcessor.from_pretrained(model)
    row = PromptRow("q1", "visual_search", "a.png", 64, 64, "What colour?", "red", ["red", "blue"])
    texts = {}
    for prompt in ("from_chat_template", "vigorl_single_turn"):
        r = Rollout(None, proc, ZoomSettings(), group_size=1, prompt=prompt, mode="single_turn")
        texts[prompt] = proc.apply_chat_template(r.messages(row), add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>system\nYou are ViGoRL, think in points.<|im_end|>" in texts["from_chat_template"]
    assert "ViGoRL" not in texts["vigorl_single_turn"] and "grounded steps" in texts["vigorl_single_turn"]


def test_eval_judges_items_with_the_released_judge_by_default(tmp_path):
    """`vigorl eval`'s per-episode verdict (`cluster.eval_job.judged`): judge=official reads what the model
    wrote with `rewards.eval_judge` (a capitalised, punctuated answer is right; a multi-turn episode is its
    assistant turns), judge=reward keeps the RL reward's strict accuracy."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    import rewards
    from cluster.eval_job import judged
    from configs.jobs import EvalConfig
    from configs.load import load
    from data_gen.rows import PromptRow
    from data_gen.tiny_model import make_tiny_model

    tok = AutoTokenizer.from_pretrained(make_tiny_model(tmp_path / "m", vocab="qwen", size="tiny"))
    row = PromptRow("q1", "visual_search", "a.png", 64, 64, "What colour?", "red", ["red", "blue"])
    prompt = tok.encode("<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\n")
    single = "<think>The ball at (3, 4).</think>\n<answer>Red.</answer>"
    call = '<think>Zoom.</think>\n<tool_call>\n{"name": "search_coordinate", "arguments": {"coordinate": [3, 4]}}\n</tool_call>'
    multi = (f"{call}<|im_end|>\n<|im_start|>user\n<observation>\nHere is the crop:\n<|vision_start|><|image_pad|>"
             f"<|vision_end|>\n</observation><|im_end|>\n<|im_start|>assistant\n{single}<|im_end|>")
    for mode, text in (("single_turn", single), ("multi_turn", multi)):
        t = SimpleNamespace(token_ids=prompt + tok.encode(text), prompt_len=len(prompt))
        reward = rewards.score(tok.decode(t.token_ids[t.prompt_len:], skip_special_tokens=True), "red",
                               task="visual_search", mode=mode)
        assert reward.accuracy == 0.0  # the RL reward compares 'red.' with 'red'
        official = load(EvalConfig, None, [f"data.mode={mode}", "benchmark=vstar"])
        assert judged(tok, t, row, (64, 64), official, reward) == (True, "Red.", "")
        strict = load(EvalConfig, None, [f"data.mode={mode}", "judge=reward"])
        assert judged(tok, t, row, (64, 64), strict, reward)[0] is False


def test_the_forced_answer_turn_is_sampled_at_its_own_temperature(tmp_path):
    """The released evaluation generates the forced final answer greedily (qwen_vllm.py: no_sample when
    force_final); `rollout.forced_answer_temperature` (eval default 0) applies to that turn only."""
    from types import SimpleNamespace

    from transformers import AutoProcessor

    from actors.rollout import Rollout
    from actors.zoom import ZoomSettings
    from data_gen.tiny_model import make_tiny_model

    proc = AutoProcessor.from_pretrained(make_tiny_model(tmp_path / "m", vocab="small", size="tiny"))
    for forced, want in ((0.0, 0.0), (None, 0.5)):
        r = Rollout(None, proc, ZoomSettings(), group_size=1, mode="multi_turn", temperature=0.5, top_p=1.0,
                    forced_answer_temperature=forced)
        turn, answer = SimpleNamespace(prefix=""), SimpleNamespace(prefix="<think> Based on")
        assert r._params(turn, 64).temperature == 0.5 and r._params(answer, 64).temperature == want
