"""SFT examples from sharegpt rows: the loss mask covers assistant tokens (and their <|im_end|>) only, image
placeholders expand to the image's token count, bad rows are named."""

import json

import pytest
from PIL import Image

from learner.sft import BadRow, encode_row


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    from transformers import AutoProcessor

    from data_gen.tiny_model import make_tiny_model

    return AutoProcessor.from_pretrained(make_tiny_model(tmp_path_factory.mktemp("sft_model") / "m"))


def row(messages, images, size=None):
    return {"messages": messages, "images": images, "question_id": "q1", "image_size": size}


def test_single_turn_mask_and_image_tokens(tmp_path, proc):
    Image.new("RGB", (224, 112)).save(tmp_path / "a.png")  # above the processor's min_pixels
    r = row([{"role": "system", "content": "S."}, {"role": "user", "content": "<image>Where?"},
             {"role": "assistant", "content": "<think>\nat (10, 20)\n</think>\n<answer> red </answer>"}],
            ["a.png"], [224, 112])
    t = encode_row(r, tmp_path, proc.tokenizer, proc.image_processor)
    tok = proc.tokenizer
    trained = tok.decode([i for i, m in zip(t.token_ids, t.loss_mask) if m])
    assert trained == "<think>\nat (10, 20)\n</think>\n<answer> red </answer><|im_end|>"
    assert t.token_ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == (224 // 28) * (112 // 28)
    assert tok.decode(t.token_ids[:t.prompt_len]).endswith("<|im_start|>assistant\n")
    assert len(t.token_ids) == len(t.loss_mask) == len(t.logprobs) and t.images[0].source == "a.png"


def test_multi_turn_masks_observations(tmp_path, proc):
    for name in ("full.png", "crop.png"):
        Image.new("RGB", (56, 56)).save(tmp_path / name)
    call = json.dumps({"name": "search_coordinate", "arguments": {"coordinate": [5, 6]}})
    r = row([{"role": "system", "content": "S."}, {"role": "user", "content": "<image>Q?"},
             {"role": "assistant", "content": f"<think> a (5, 6) </think>\n<tool_call>\n{call}\n</tool_call>"},
             {"role": "user", "content": "<observation>\nHere is the crop:\n<image>\n</observation>"},
             {"role": "assistant", "content": "<think> done </think>\n<answer> red </answer>"}],
            ["full.png", "crop.png"])
    t = encode_row(r, tmp_path, proc.tokenizer, proc.image_processor)
    trained = proc.tokenizer.decode([i for i, m in zip(t.token_ids, t.loss_mask) if m])
    assert trained.count("<|im_end|>") == 2 == t.num_turns and "observation" not in trained
    assert "<tool_call>" in trained and trained.endswith("<answer> red </answer><|im_end|>")


@pytest.mark.parametrize("change,needle", [
    (lambda r: r.update(images=["missing.png"]), "image file not found"),
    (lambda r: r.update(images=[]), "1 <image> placeholders but 0 images"),
    (lambda r: r["messages"][2].update(content="<think> (500, 5) </think><answer> x </answer>"), "outside the"),
    (lambda r: r["messages"][2].update(content="x" * 40_000), "over cutoff_len"),
])
def test_bad_rows_are_named(tmp_path, proc, change, needle):
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    r = row([{"role": "system", "content": "S."}, {"role": "user", "content": "<image>Q?"},
             {"role": "assistant", "content": "<think> (5, 5) </think><answer> x </answer>"}], ["a.png"])
    change(r)
    with pytest.raises(BadRow, match=needle) as e:
        encode_row(r, tmp_path, proc.tokenizer, proc.image_processor, cutoff_len=4096, where="train.jsonl line 7")
    assert "train.jsonl line 7" in str(e.value)
