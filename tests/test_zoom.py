"""The zoom environment core: smart_resize, crop geometry (docs/algorithm.md §3), observation text, episode machine."""

import pytest
from PIL import Image

from actors.zoom import PRESETS, End, ZoomEpisode, ZoomSettings
from data_gen.geometry import (FORCED_ANSWER_PREFIX, crop, crop_box, observation_text, resize_for_model,
                               smart_resize)

CALL = '<think> look at ({x}, {y}) </think>\n<tool_call>\n{{"name": "search_coordinate", "arguments": ' \
       '{{"coordinate": [{x}, {y}]}}}}\n</tool_call>'


@pytest.mark.parametrize("hw,expected", [
    ((512, 512), (504, 504)),
    ((1500, 2000), (1512, 1988)),
    ((1440, 2560), (1428, 2548)),  # ScreenSpot screenshot, under max_pixels
    ((10, 10), (56, 56)),  # below min_pixels (3136): scaled up
    ((28, 28), (56, 56)),
    ((8000, 8000), (3584, 3584)),  # above max_pixels (12,845,056): scaled down
])
def test_smart_resize_golden(hw, expected):
    assert smart_resize(*hw) == expected


def test_smart_resize_matches_transformers_reference():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    for h in range(30, 3000, 97):
        for w in range(30, 3000, 89):
            if max(h, w) / min(h, w) > 200:
                continue
            assert smart_resize(h, w) == ref(h, w, factor=28, min_pixels=4 * 28 * 28,
                                             max_pixels=16384 * 28 * 28), (h, w)


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


@pytest.mark.parametrize("point,box", [
    ((500, 300), (318, 118, 682, 482)),  # interior, o = 182
    ((10, 20), (0, 0, 192, 202)),  # clipped at the top-left, not shifted
    ((995, 750), (813, 568, 1000, 800)),  # clipped at the bottom-right
    ((1000, 800), (818, 618, 1000, 800)),  # at (W, H): the formula as written, then clipped
    ((-40, 900), (0, 718, 142, 800)),  # outside but the clipped box is not empty: the point is not moved
    ((1100, 300), (918, 118, 1000, 482)),
    ((-500, 300), (0, 118, 182, 482)),  # the clipped box would be empty: only then clamped, to (0, 300)
    ((5000, 5000), (817, 617, 1000, 800)),  # -> (999, 799)
])
def test_crop_box_borders(point, box):
    assert crop_box(point, (1000, 800), 182) == box


@pytest.mark.parametrize("out_size,side", [(512, 504), (384, 392), (672, 672)])
def test_crop_output_size(out_size, side):
    img = Image.new("RGB", (1000, 800), (0, 0, 0))
    assert crop(img, (10, 10), 100, out_size).size == (side, side)


def test_crop_point_only_moves_points_whose_box_is_empty():
    from data_gen.geometry import crop_point

    assert crop_point((1000, 800), (1000, 800), 50) == (1000, 800)
    assert crop_point((1049, 10), (1000, 800), 50) == (1049, 10)
    assert crop_point((1050, 10), (1000, 800), 50) == (999, 10)  # x - o = W: nothing left to crop


def test_crop_content_and_dot():
    img = Image.new("RGB", (400, 400), (0, 0, 0))
    img.paste((0, 255, 0), (100, 100, 300, 300))  # green square
    c = crop(img, (200, 200), 50, 100)  # box (150,150,250,250): all green, resized to 112
    assert c.size == (112, 112) and c.getpixel((56, 56)) == (0, 255, 0)
    d = crop(img, (200, 200), 50, 100, dot=True)
    r, g, b = d.getpixel((56, 56))
    assert r > 200 and g < 60 and b < 60  # red dot at the centre
    # the white outline ring (radius 7, width 2) sits at ~6-7 px in box units -> x ~ 56 + 7.5 px
    ring = [d.getpixel((56 + k, 56)) for k in range(5, 10)]
    assert any(min(p) > 200 for p in ring)
    assert crop(img, (200, 200), 50, 100).getpixel((56, 56)) == (0, 255, 0)  # the source image untouched


def test_observation_text_exact():
    assert observation_text(False) == (
        "<observation>\nHere is the crop of the image centered on the coordinate:\n", "\n</observation>")
    assert observation_text(True)[0] == ("<observation>\nHere is the crop of the image centered on the coordinate"
                                         ", with a red dot at the coordinate location:\n")


def test_presets_match_spec():
    assert (PRESETS["web_grounding_rl"].half_size, PRESETS["web_grounding_rl"].out_size) == (50, 384)
    assert (PRESETS["web_grounding_eval"].half_size, PRESETS["web_grounding_eval"].out_size) == (100, 512)
    assert (PRESETS["visual_search"].half_size, PRESETS["visual_search"].out_size) == (182, 672)
    assert PRESETS["web_grounding_rl"].dot and not PRESETS["visual_search"].dot


def test_resize_for_model_converts_modes():
    img = Image.new("RGBA", (500, 300), (10, 20, 30, 0))
    out = resize_for_model(img)
    assert out.mode == "RGB" and out.size == (504, 308)


def episode(**kw):
    return ZoomEpisode(Image.new("RGB", (1008, 756), (128, 128, 128)), ZoomSettings(**kw))


def test_episode_tool_calls_then_answer():
    ep = episode()
    s = ep.step(CALL.format(x=100, y=200))
    assert not s.done and s.point == (100, 200) and s.box == (0, 18, 282, 382) and s.crop.size == (672, 672)
    assert s.force_prefix == ""
    s = ep.step(CALL.format(x=600, y=300) + "<|im_end|>")
    assert not s.done and ep.n_images == 3
    s = ep.step("<think> it is red </think>\n<answer> red </answer>")
    assert s.done and s.end == End.ANSWER and ep.points == [(100, 200), (600, 300)]
    with pytest.raises(RuntimeError, match="already ended"):
        ep.step("more")


def test_episode_image_budget_forces_answer():
    ep = episode(max_images=3)
    assert ep.step(CALL.format(x=10, y=10)).force_prefix == ""
    s = ep.step(CALL.format(x=500, y=500))  # third image: budget reached
    assert not s.done and s.force_prefix == FORCED_ANSWER_PREFIX
    s = ep.step(FORCED_ANSWER_PREFIX + " red </answer>")
    assert s.done and s.end == End.ANSWER


def test_episode_forced_turn_without_answer_ends():
    ep = episode(max_images=2)
    ep.step(CALL.format(x=10, y=10))
    s = ep.step(FORCED_ANSWER_PREFIX + " red and then some")
    assert s.done and s.end == End.FORCED


@pytest.mark.parametrize("turn,end", [
    ('<think>a</think>\n<tool_call>\n{"name": "search_coordinate", "arguments": {"coordinate": [1]}}\n</tool_call>',
     End.MALFORMED_TOOL_CALL),
    ("<think>a</think>\n<tool_call>\n__import__('os').system('true')\n</tool_call>", End.MALFORMED_TOOL_CALL),
    ("<think>a</think>\n</tool_call>", End.MALFORMED_TOOL_CALL),
    ("<think>just thinking, ran out of tokens", End.NO_ACTION),
    ("", End.NO_ACTION),
])
def test_episode_bad_turns_end_it(turn, end):
    ep = episode()
    s = ep.step(turn)
    assert s.done and s.end == end and ep.points == []


def test_episode_text_scores_as_multi_turn():
    import rewards

    ep = episode()
    ep.step(CALL.format(x=100, y=200))
    ep.step(CALL.format(x=600, y=300))
    ep.step("<think> red </think>\n<answer> red </answer><|im_end|>")
    s = rewards.score(ep.text(), "red", task="visual_search", mode="multi_turn", image_size=ep.image.size)
    assert s.error == "" and s.format == pytest.approx(1.2) and s.overall == pytest.approx(0.6 + 0.48)


def test_points_a_policy_writes_fit_the_record_however_large():
    """A policy may write any integer (a 25-digit think-step coordinate crashed a real GRPO run): the record
    saturates such points to int32, and a crop is stored at the point `crop` takes, which gives the same
    pixels as the written one and always fits."""
    from PIL import Image

    from actors.rollout import storable
    from actors.trajectory import ImageRef, Trajectory, from_batch, to_batch
    from data_gen.geometry import crop, crop_point

    huge = (10**25, -(10**30))
    assert storable(huge) == (2**31 - 1, -(2**31)) and storable((5, -3)) == (5, -3)
    full = Image.effect_noise((200, 120), 50).convert("RGB")
    at = crop_point(huge, full.size, 50)
    assert at == (199, 0) and list(crop(full, at, 50, 112).getdata()) == list(crop(full, huge, 50, 112).getdata())
    assert crop_point((210, 60), full.size, 50) == (210, 60)  # outside but its box is not empty: kept as written
    t = Trajectory(episode_id="e", group_id="g", prompt_id="p", weight_version=0, token_ids=[1, 2], loss_mask=[0, 1],
                   logprobs=[0.0, -1.0], prompt_len=1, reward=0.0, reward_format=0.0, reward_accuracy=0.0,
                   reward_coordinate=0.0, reward_diversity=0.0, advantage=0.0, num_turns=1,
                   points=[storable(huge)], images=[ImageRef("a.png", 200, 120, point=at, half_size=50, out_size=112)])
    assert from_batch(to_batch([t]))[0].points == [(2**31 - 1, -(2**31))]
