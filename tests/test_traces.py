"""Trees -> SFT data (SPEC §6): linearisation texts, dedupe, cap and split; multi-turn conversion with crops;
bad lines named; hand-written trees with known rollouts."""

import json
import random

import pytest
from PIL import Image

from data_gen.traces import (BACKTRACK, LinearizeConfig, MultiTurnConfig, dialogue, linearize, node_chains,
                             read_trees, to_multiturn)


def rollout(steps, answer, reward):
    return {"steps": steps, "answer": answer, "reward": reward}


def tree(qid, nodes, image, task="visual_search", gold="red", size=(200, 100)):
    return {"question_id": qid, "task": task, "image": str(image), "question": "What colour?", "gold": gold,
            "image_size": list(size), "nodes": nodes}


def node(i, rollouts):
    return {"id": i, "parent": None if i == 0 else 0, "depth": min(i, 1), "text": "", "coord": None,
            "terminal": False, "answer": None, "visits": 1, "value": 0.0, "rollouts": rollouts}


def test_chain_texts_exact():
    n = node(1, [rollout(["<think> look (1, 2) </think>", "then (3, 4)."], "red", 1.0),
                 rollout(["<think>wrong (5, 6)</think>"], "blue", 0.0)])
    corrected, direct = node_chains(n)
    assert direct == "<think>\nlook (1, 2) then (3, 4).\n</think>\n<answer> red </answer>"
    assert corrected == (f"<think>\nwrong (5, 6)\n{BACKTRACK}\nlook (1, 2) then (3, 4).\n</think>\n"
                         "<answer> red </answer>")
    assert BACKTRACK == "Wait, this seems off. Let's try something else."
    assert node_chains(node(2, [rollout(["a (1, 1)"], "blue", 0.0)])) == []  # no correct rollout, no chain
    assert len(node_chains(node(3, [rollout(["a"], "red", 1.0)] * 2 + [rollout(["b"], "x", 0.5)] * 3))) == 2 * 3 + 2


def write_trees(path, trees):
    path.write_text("".join(json.dumps(t) + "\n" for t in trees))


def test_linearize_dedupe_cap_split(tmp_path):
    img = tmp_path / "img.png"
    Image.new("RGB", (200, 100)).save(img)
    same = [rollout(["s (1, 1)"], "red", 1.0)] * 3  # three identical chains -> one
    trees = [tree(f"q{i}", [node(0, []), node(1, same + [rollout([f"t{k} (2, {k})"], "red", 1.0)
                                                          for k in range(5)])], img) for i in range(20)]
    trees.append(tree("none", [node(0, []), node(1, [rollout(["x"], "blue", 0.0)])], img))
    write_trees(tmp_path / "trees.jsonl", trees)
    counts = linearize(tmp_path / "trees.jsonl", tmp_path / "sft", LinearizeConfig(max_per_question=4, seed=1))
    assert counts["questions"] == 21 and counts["no_correct_rollout"] == 1
    assert counts["duplicates"] == 20 * 2 and counts["capped"] == 20 * 2 and counts["chains"] == 20 * 4
    train = [json.loads(x) for x in (tmp_path / "sft" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "sft" / "val.jsonl").read_text().splitlines()]
    assert len(val) == 4 and len(train) == 76  # 1 of 21 questions (5 %) in val, all of its chains
    assert not {r["question_id"] for r in train} & {r["question_id"] for r in val}
    r = train[0]
    assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
    assert r["messages"][1]["content"] == "<image>What colour?" and r["images"][0].startswith("images/")
    assert (tmp_path / "sft" / r["images"][0]).read_bytes() == img.read_bytes()  # stored once by content hash
    assert r["gt_answer"] == "red" and "exact text of the chosen option" in r["messages"][0]["content"]


def test_read_trees_bad_lines(tmp_path):
    p = tmp_path / "trees.jsonl"
    p.write_text('{"question_id": "a", "nodes": []}\n{"question_id": "b", "no')
    with pytest.warns(UserWarning, match="line 2: dropping a half-written last line"):
        assert [t["question_id"] for t in read_trees(p)] == ["a"]
    p.write_text('{"question_id": "a", "nodes": []}\n[1, 2]\n{"question_id": "b", "nodes": []}\n')
    with pytest.raises(ValueError, match=f"{p} line 2: not a tree line"):
        read_trees(p)


def test_dialogue_turns_hand_worked():
    chain = ("<think>\nFirst I see a box (10, 20). It is grey. Then the cup (30, 40) is red! Again (10, 20). "
             "Done.\n</think>\n<answer> red </answer>")
    cfg = MultiTurnConfig(shuffle_prob=0.0)
    turns, points = dialogue(chain, (100, 100), (200, 50), cfg, random.Random(0))  # x * 2, y / 2
    assert points == [(20, 10), (60, 20)]
    call = lambda x, y: json.dumps({"name": "search_coordinate", "arguments": {"coordinate": [x, y]}})  # noqa: E731
    assert turns[0] == {"role": "assistant", "content": f"<think> First I see a box (20, 10). </think>\n"
                                                        f"<tool_call>\n{call(20, 10)}\n</tool_call>"}
    assert turns[1] == {"role": "user", "content": "<observation>\nHere is the crop of the image centered on the "
                                                   "coordinate:\n<image>\n</observation>"}
    assert turns[2]["content"].startswith("<think> It is grey. Then the cup (60, 20) is red! </think>")
    # the repeated point adds no call; the fixed final turn answers
    assert turns[-1]["content"] == ("<think> Based on all the information I've gathered, I'll now provide my final "
                                    "answer. </think>\n<answer> red </answer>")
    assert len(turns) == 5
    assert dialogue("no tags", (10, 10), (10, 10), cfg, random.Random(0)) is None


def test_dialogue_caps_calls_and_moves_the_first_pair():
    body = " ".join(f"Look ({10 * k}, {10 * k})." for k in range(1, 8))
    chain = f"<think>\n{body}\n</think>\n<answer> (15, 15) </answer>"
    turns, points = dialogue(chain, (100, 100), (100, 100), MultiTurnConfig(shuffle_prob=0.0), random.Random(0))
    assert points == [(10, 10), (20, 20), (30, 30), (40, 40), (50, 50)] and turns[-1]["content"].endswith(
        "<answer> (15, 15) </answer>")
    moved = set()
    for seed in range(40):
        _, pts = dialogue(chain, (100, 100), (100, 100), MultiTurnConfig(shuffle_prob=1.0), random.Random(seed))
        assert sorted(pts) == sorted(points) and pts[1:] != points[1:] or pts == points
        moved.add(pts.index((10, 10)))
    assert moved == {0, 1, 2, 3}  # after 0 .. k-2 of the other pairs, never last (the released converter)


def test_to_multiturn_saves_crops_and_drops_outside_points(tmp_path):
    img = tmp_path / "img.png"
    Image.new("RGB", (200, 100), (0, 128, 0)).save(img)
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>Q?"},
                          {"role": "assistant", "content": c}], "images": ["img.png"], "gt_answer": "red",
             "question_id": f"q{i}", "task": "visual_search", "image_size": [200, 100]}
            for i, c in enumerate(["<think> a (10, 20). b (150, 60). </think>\n<answer> red </answer>",
                                   "<think> far (250, 20). </think>\n<answer> red </answer>"])]
    (tmp_path / "lin").mkdir()
    img.rename(tmp_path / "lin" / "img.png")
    (tmp_path / "lin" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "lin" / "val.jsonl").write_text("")
    counts = to_multiturn(tmp_path / "lin", tmp_path / "mt", MultiTurnConfig(half_size=50, out_size=112,
                                                                              min_pixels=3136, max_pixels=10**6))
    assert counts == {"rows": 2, "written": 1, "outside_image": 1, "no_answer": 0}
    out = json.loads((tmp_path / "mt" / "train.jsonl").read_text())
    assert len(out["images"]) == 3 and out["image_size"] == [196, 112]  # smart_resize of 200 x 100
    crops = [Image.open(tmp_path / "mt" / p) for p in out["images"][1:]]
    assert all(c.size == (112, 112) for c in crops)
    assert [m["content"].count("<image>") for m in out["messages"]] == [0, 1, 0, 1, 0, 1, 0]
    assert "multi" not in out["messages"][0]["content"] and "zoom tool" in out["messages"][0]["content"]
