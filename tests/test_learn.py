"""The learning proof's own pieces (bench/learn.py): base-model captions, the zoom statistics.
`make learn` itself is a benchmark, never a test."""

import json
import re

import pytest

from bench.learn import SEEDS, caption_rows, kept_record, mean_over_seeds, rl_sampling, seed_data, zoom_stats
from data_gen.synthetic import COLORS, SHAPES
from data_gen.teachers import Scene
from data_gen.tiny_model import build_tokenizer
from learner.sft import encode_row


def test_captions_say_what_and_where_each_object_is(tmp_path):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    caption_rows(60, seed=5, out=tmp_path)
    rows = [json.loads(x) for s in ("train", "val") for x in (tmp_path / f"{s}.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and len((tmp_path / "val.jsonl").read_text().splitlines()) == 2
    tok, _ = build_tokenizer("small")
    for row in rows[:10]:
        text = row["messages"][1]["content"]
        img = Image.open(tmp_path / row["images"][0]).convert("RGB")
        for sentence in text.split(" The "):  # "The circle at (61, 50) is red."
            shape, x, y, colour = re.fullmatch(r"(?:The )?(\w+) at \((\d+), (\d+)\) is (\w+)\.", sentence).groups()
            assert shape in SHAPES and colour in COLORS
            assert img.getpixel((int(x), int(y) + 4)) != (235, 232, 225)  # an object, not the wall
        assert "answer" not in text and "think" not in text  # nothing of the task's format
        ex = encode_row(row, tmp_path, tok, Qwen2VLImageProcessorPil(), where="caption")
        assert sum(ex.loss_mask) > 0 and ex.token_ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == 16


def test_zoom_stats_split_accuracy_by_a_zoom_on_the_asked_object():
    scene = Scene((112, 112), [("circle", (10, 10, 30, 30))], "red", lambda rng: "blue")
    scenes = {"a": scene, "b": scene, "c": scene}
    items = [{"item_id": "a", "tool_calls": [[90, 90], [20, 20]], "correct": 1.0},  # 2nd zoom on it, right
             {"item_id": "b", "tool_calls": [[30, 31]], "correct": 1.0},  # just off the box, right
             {"item_id": "c", "tool_calls": [], "correct": 0.0}]  # no zoom, wrong
    assert zoom_stats(items, scenes) == {"zoomed_on_target": 1 / 3, "accuracy_zoomed": 1.0,
                                         "accuracy_not_zoomed": 0.5}
    assert zoom_stats([items[2]], scenes, multi_turn=False) == {}  # single-turn: no zooms, nothing to say
    # a multi-turn model that never zooms (a policy GRPO taught to stop): on target in none of the items
    assert zoom_stats([items[2]], scenes) == {"zoomed_on_target": 0.0, "accuracy_zoomed": None,
                                              "accuracy_not_zoomed": 0.0}


def test_each_seed_has_its_own_training_data_and_the_same_heldout_set():
    seeds = [seed_data(k) for k in range(5)]
    assert seeds[0] == {"mcts": 1, "rl": 2, "heldout": 3}  # seed 0: the historical data
    training = [s[name] for s in seeds for name in ("mcts", "rl")]
    assert len(set(training)) == len(training) and SEEDS["heldout"] not in training
    assert {s["heldout"] for s in seeds} == {SEEDS["heldout"]}


def test_results_average_the_models_over_the_seeds():
    def rec(base, sft, grpo):
        return {m: {"accuracy": a, "format_rate": 1.0, "n": 400, "zoomed_on_target": 0.3}
                for m, a in (("base", base), ("sft", sft), ("grpo", grpo))}

    means = mean_over_seeds([rec(0.0, 0.4, 0.5), rec(0.0, 0.42, 0.47), rec(0.0, 0.38, 0.53)])
    assert means["sft"]["accuracy"] == pytest.approx(0.4) and means["base"]["accuracy"] == 0
    assert means["grpo"] == {"accuracy": pytest.approx(0.5), "format_rate": 1.0, "n": 400}


def test_resume_keeps_a_finished_seed_only_with_the_same_settings(tmp_path):
    setup = {"n_mcts": 400, "grpo_steps": 40, "multi_turn": True, "sft_epochs": "recipe"}
    path = tmp_path / "seed-0" / "record.json"
    assert kept_record(path, setup) is None  # never ran
    path.parent.mkdir()
    path.write_text(json.dumps({"seed": 0, "sft": {"accuracy": 0.4}, "setup": setup}))
    assert kept_record(path, dict(setup))["sft"] == {"accuracy": 0.4}
    assert kept_record(path, setup | {"grpo_steps": 20}) is None  # other settings: the seed runs again
    path.write_text(json.dumps({"seed": 0, "sft": {"accuracy": 0.4}}))  # a record from before records had settings
    assert kept_record(path, setup) is None


def test_the_well_formed_check_samples_as_the_grpo_recipe_does():
    # the evaluation's own default top-p is 1.0; GRPO's is the released 0.99, whose cut tail held most of the
    # broken tool calls of the measured SFT policies at temperature 1.0 (docs/results/learning-proof.md)
    assert rl_sampling("learn_grpo_mt") == {"sampling.temperature": 1.0, "sampling.top_p": 0.99,
                                            "rollout.forced_answer_temperature": 1.0}
