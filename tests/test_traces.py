"""Trees -> SFT data (docs/algorithm.md §6): linearisation texts, dedupe, cap and split; multi-turn conversion with crops;
bad lines named; hand-written trees with known rollouts."""

import json
import random

import pytest
from PIL import Image

from data_gen.geometry import FORCED_ANSWER_PREFIX
from data_gen.traces import (BACKTRACK, LinearizeConfig, MultiTurnConfig, _OutsideImage, dialogue, linearize,
                             node_chains, read_trees, to_multiturn)


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


def test_chain_edge_cases_as_released():
    """The released `process_text_chain`: the last text of a rollout is its answer, the others its steps."""
    # a rollout judged correct that never answered: its last step (stored as the judged answer) is the answer
    # only; a wrong one that never answered loses its last step too
    never = rollout(["<think> look (1, 2). </think>", "<think> The cup (3, 4) is red. </think>"],
                    "<think> The cup (3, 4) is red. </think>", 1.0)
    wrong = rollout(["w (5, 6).", "v (7, 8)."], "v (7, 8).", 0.0)
    corrected, direct = node_chains(node(1, [never, wrong]))
    assert direct == "<think>\nlook (1, 2).\n</think>\n<answer> The cup (3, 4) is red. </answer>"
    assert corrected == (f"<think>\nw (5, 6).\n{BACKTRACK}\nlook (1, 2).\n</think>\n"
                         "<answer> The cup (3, 4) is red. </answer>")
    # the search stores that answer with a leading option letter dropped: still recognised as the last step
    assert node_chains(node(1, [rollout(["s (1, 1).", "A. red"], "red", 1.0)])) == [
        "<think>\ns (1, 1).\n</think>\n<answer> red </answer>"]
    # an option-letter prefix is dropped from the answer (the released search's ^[A-Z]\. before judging)
    assert node_chains(node(1, [rollout(["s (1, 1)."], "A. red", 1.0)])) == [
        "<think>\ns (1, 1).\n</think>\n<answer> red </answer>"]
    assert node_chains(node(1, [rollout(["s (1, 1)."], "AB. red", 1.0)]))[0].endswith("<answer> AB. red </answer>")
    # reasoning written before the answer (stored as the last step) stays in the think; the answer is only
    # the judged answer
    assert node_chains(node(1, [rollout(["s (1, 1).", "<think> So the cup (3, 4) is red. </think>"], "red",
                                        1.0)])) == [
        "<think>\ns (1, 1). So the cup (3, 4) is red.\n</think>\n<answer> red </answer>"]
    # an empty step is kept in the join (two spaces), as the released join does; nothing to answer, no chain
    assert node_chains(node(1, [rollout(["a", "<think></think>", "b"], "red", 1.0)])) == [
        "<think>\na  b\n</think>\n<answer> red </answer>"]
    assert node_chains(node(1, [rollout([], "", 1.0)])) == []


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


def call(x, y):
    return json.dumps({"name": "search_coordinate", "arguments": {"coordinate": [x, y]}})


OBS = "<observation>\nHere is the crop of the image centered on the coordinate:\n<image>\n</observation>"
OBS_DOT = ("<observation>\nHere is the crop of the image centered on the coordinate, with a red dot at the "
           "coordinate location:\n<image>\n</observation>")


def test_dialogue_scales_every_coordinate_of_the_text():
    """Each (x, y) is scaled per axis and truncated (x * 1.5, y * 0.5), the second of a sentence too; a point
    inside a sentence already taken gets the rest of that sentence again (the released converter)."""
    chain = ("<think>\nThe box (11, 21) is left of the cup (31, 41). Then (51, 61) is red.\n</think>\n"
             "<answer> red </answer>")
    turns, points = dialogue(chain, (100, 100), (150, 50), MultiTurnConfig(shuffle_prob=0.0), random.Random(0))
    assert points == [(16, 10), (46, 20), (76, 30)]
    assert [t["content"] for t in turns] == [
        f"<think> The box (16, 10) is left of the cup (46, 20). </think>\n<tool_call>\n{call(16, 10)}\n</tool_call>",
        OBS,
        f"<think> (46, 20). </think>\n<tool_call>\n{call(46, 20)}\n</tool_call>",
        OBS,
        f"<think> Then (76, 30) is red. </think>\n<tool_call>\n{call(76, 30)}\n</tool_call>",
        OBS,
        f"{FORCED_ANSWER_PREFIX} red </answer>"]
    # scale 1 on both axes: the text is left as written, the call reads the point (decimals truncated)
    turns, points = dialogue("<think> Look ( 10.7 ,20 ). </think><answer> red </answer>", (50, 50), (50, 50),
                             MultiTurnConfig(), random.Random(0))
    assert points == [(10, 20)] and turns[0]["content"].startswith("<think> Look ( 10.7 ,20 ). </think>")


def test_dialogue_zooms_on_a_gui_answer_point():
    """A coordinate answer is a zoom before answering: its think turn holds the think text left after the
    last sentence with a point, then the point; the answer is written scaled."""
    cfg = MultiTurnConfig(half_size=100, out_size=512, dot=True, shuffle_prob=0.0)
    chain = ("<think>\nThe search box (10, 20) is at the top. The button sits below it.\n</think>\n"
             "<answer> (30, 41) </answer>")
    turns, points = dialogue(chain, (100, 100), (150, 50), cfg, random.Random(0))
    assert points == [(15, 10), (45, 20)]
    assert [t["content"] for t in turns] == [
        f"<think> The search box (15, 10) is at the top. </think>\n<tool_call>\n{call(15, 10)}\n</tool_call>",
        OBS_DOT,
        f"<think> The button sits below it.\n\n(45, 20) </think>\n<tool_call>\n{call(45, 20)}\n</tool_call>",
        OBS_DOT,
        f"{FORCED_ANSWER_PREFIX} (45, 20) </answer>"]
    # nothing left in the think text: the point alone; an answer on a point already seen: no second zoom
    turns, points = dialogue("<think> Look (10, 20). </think> <answer>(30,41)</answer>", (100, 100), (150, 50),
                             cfg, random.Random(0))
    assert points == [(15, 10), (45, 20)] and turns[2]["content"].startswith("<think> (45, 20) </think>")
    turns, points = dialogue("<think> Look (10, 20). </think> <answer> (10, 20) </answer>", (100, 100),
                             (150, 50), cfg, random.Random(0))
    assert points == [(15, 10)] and turns[-1]["content"] == f"{FORCED_ANSWER_PREFIX} (15, 10) </answer>"
    # the image border (x = W, y = H) is inside; beyond it the row is dropped
    assert dialogue("<think> a </think><answer> (100, 100) </answer>", (100, 100), (150, 50), cfg,
                    random.Random(0))[1] == [(150, 50)]
    with pytest.raises(_OutsideImage):
        dialogue("<think> a </think><answer> (101, 50) </answer>", (100, 100), (150, 50), cfg, random.Random(0))


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


def test_to_multiturn_upscales_as_released(tmp_path):
    """Default bounds: the released converter's fetch_image(min_pixels=2,700,000, max_pixels=2,850,000):
    200 x 100 -> 2324 x 1176 (smart_resize, bicubic), coordinates scaled to it."""
    (tmp_path / "lin").mkdir()
    img = Image.new("RGB", (200, 100))
    img.putpixel((3, 4), (255, 0, 0))
    img.save(tmp_path / "lin" / "img.png")
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>Q?"},
                        {"role": "assistant", "content": "<think> a (10, 20). </think>\n<answer> red </answer>"}],
           "images": ["img.png"], "gt_answer": "red", "question_id": "q", "task": "visual_search",
           "image_size": [200, 100]}
    (tmp_path / "lin" / "train.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "lin" / "val.jsonl").write_text("")
    assert to_multiturn(tmp_path / "lin", tmp_path / "mt")["written"] == 1
    out = json.loads((tmp_path / "mt" / "train.jsonl").read_text())
    assert out["image_size"] == [2324, 1176]
    assert out["messages"][2]["content"].startswith("<think> a (116, 235). </think>")  # 10 * 11.62, 20 * 11.76
    full = Image.open(tmp_path / "mt" / out["images"][0])
    assert full.tobytes() == img.resize((2324, 1176), Image.Resampling.BICUBIC).tobytes()
