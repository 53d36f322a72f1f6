"""SFT examples from sharegpt rows: the loss mask covers assistant tokens (and their <|im_end|>) only, image
placeholders expand to the image's token count, bad rows are named (and, with on_bad_row=skip, counted by
reason), and the paper recipes average the loss per example as the released SFT did."""

import json
from pathlib import Path

import pytest
from PIL import Image

from learner.sft import REASONS, BadRow, encode_row


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


@pytest.mark.parametrize("change,needle,reason", [
    (lambda r: r.update(images=["missing.png"]), "image file not found", "image_unreadable"),
    (lambda r: r.update(images=[]), "1 <image> placeholders but 0 images", "image_count"),
    (lambda r: r["messages"][2].update(content="<think> (500, 5) </think><answer> x </answer>"), "outside the",
     "point_outside"),
    (lambda r: r["messages"][2].update(content="<think> [56, 5] </think><answer> x </answer>"), "outside the 56x56",
     "point_outside"),  # on the far border: x == width is no pixel
    (lambda r: r["messages"][2].update(content="x" * 40_000), "over cutoff_len", "too_long"),
    (lambda r: r.pop("messages"), "needs 'messages' and 'images'", "not_sharegpt"),
])
def test_bad_rows_are_named(tmp_path, proc, change, needle, reason):
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    r = row([{"role": "system", "content": "S."}, {"role": "user", "content": "<image>Q?"},
             {"role": "assistant", "content": "<think> (5, 5) </think><answer> x </answer>"}], ["a.png"])
    change(r)
    with pytest.raises(BadRow, match=needle) as e:
        encode_row(r, tmp_path, proc.tokenizer, proc.image_processor, cutoff_len=4096, where="train.jsonl line 7")
    assert "train.jsonl line 7" in str(e.value) and e.value.reason == reason and reason in REASONS


def test_skip_counts_bad_rows_by_reason_and_raise_names_the_first(tmp_path, proc):
    """`on_bad_row=skip` (the paper recipes) trains on the good rows and counts the others by reason, for the
    console, MLflow and summary.json; `raise` (the default) stops at the first bad row, naming its line."""
    from cluster.sft_job import load_examples, skip_counts, skip_report
    from configs.jobs import SFTConfig

    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")

    def line(point="(5, 5)", images=("a.png",)):
        return json.dumps(row([{"role": "user", "content": "<image>Q?"},
                               {"role": "assistant", "content": f"<think> {point} </think><answer> x </answer>"}],
                              list(images)))

    lines = [line(), line("(56, 5)"), line("(5, 500)"), line(images=["gone.png"]), "", line(images=[]),
             json.dumps({"question_id": "q9"}), line("(55, 55)")]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    cfg = SFTConfig(data=str(tmp_path), on_bad_row="skip", cutoff_len=4096)
    examples, skipped = load_examples(cfg, "train", proc.tokenizer, proc.image_processor)
    assert len(examples) == 2 and {r: len(v) for r, v in skipped.items()} == {
        "point_outside": 2, "image_unreadable": 1, "image_count": 1, "not_sharegpt": 1}
    assert "train.jsonl line 2: point (56, 5)" in skipped["point_outside"][0]
    assert load_examples(cfg, "val", proc.tokenizer, proc.image_processor) == ([], {})  # no val.jsonl
    counts = skip_counts({"train": skipped, "val": {"too_long": ["val.jsonl line 1: ..."]}})
    assert counts == {"sft/skipped_rows": 6, "sft/skipped_rows_train": 5, "sft/skipped_rows_val": 1,
                      "sft/skipped_rows/point_outside": 2, "sft/skipped_rows/image_unreadable": 1,
                      "sft/skipped_rows/image_count": 1, "sft/skipped_rows/not_sharegpt": 1,
                      "sft/skipped_rows/too_long": 1}
    report = skip_report({"train": skipped})
    assert "[sft] skipped 2 train row(s): point_outside (first: " in report and len(report.splitlines()) == 4

    cfg.on_bad_row = "raise"
    with pytest.raises(BadRow, match=r"train.jsonl line 2: point \(56, 5\) .* outside the 56x56 image") as e:
        load_examples(cfg, "train", proc.tokenizer, proc.image_processor)
    assert e.value.reason == "point_outside"


PAPER_SFT = ["sft_spatial", "sft_web_action", "sft_web_grounding", "sft_mt_visual_search", "sft_mt_web_grounding"]


@pytest.mark.parametrize("name", PAPER_SFT)
def test_paper_sft_recipes_average_per_example_and_skip_bad_rows(name):
    """The released SFT (LLaMA-Factory: per-device batch 1, gradient accumulation 4, 8 GPUs) took each
    example's token mean, averaged over the 32: micro-batches of 1 do the same here. Bad rows are skipped and
    counted there (the released SFT trained on), raised in the local recipes."""
    from configs.jobs import SFTConfig
    from configs.load import load

    root = Path(__file__).resolve().parent.parent / "configs"
    cfg = load(SFTConfig, root / f"{name}.yaml")
    assert (cfg.learner.micro_batch_size, cfg.batch_size, cfg.on_bad_row) == (1, 32, "skip")
    assert "per-example" in (root / f"{name}.yaml").read_text()
    assert load(SFTConfig, root / "sft_local.yaml").on_bad_row == SFTConfig().on_bad_row == "raise"
    assert SFTConfig().learner.micro_batch_size == 1


@pytest.mark.parametrize("micro", [1, 2])
def test_sft_step_loss_is_a_per_example_mean_whatever_the_micro_batches(micro):
    """The learner's own `sft_step` / `_minibatch` on hand-made per-token losses: example A has one trained
    token with loss 4, example B three with loss 0: (4/1 + 0/3) / 2 = 2, the mean of the examples' token means
    (the released SFT's), with micro-batches of 1 or of 2 (one token mean over both would be 4/4 = 1)."""
    from types import SimpleNamespace

    import torch

    from configs.schema import LearnerConfig
    from learner.grpo import row_means
    from learner.trainer import Learner

    backward = []
    engine = SimpleNamespace(backward=lambda x, scale_wrt_gas: backward.append(float(x)), step=lambda: None,
                             get_global_grad_norm=lambda: 0.0)

    def nll(examples):  # Learner._nll's reduction on given per-token losses: the examples' token means, summed
        width = max(len(x) for x in examples)
        x = torch.tensor([x + [0.0] * (width - len(x)) for x in examples])
        mask = torch.tensor([[1.0] * len(x) + [0.0] * (width - len(x)) for x in examples])
        return row_means(x, mask).sum(), {"tokens": float(mask.sum())}

    stub = SimpleNamespace(cfg=LearnerConfig(micro_batch_size=micro), world_size=1, rank=0, version=0,
                           engine=engine, _set_lr=lambda: 1e-6, _lengths=lambda ex: None, _nll=nll)
    stub._minibatch = lambda *a, **k: Learner._minibatch(stub, *a, **k)
    m = Learner.sft_step(stub, [[4.0], [0.0, 0.0, 0.0]])
    assert sum(backward) == pytest.approx(2.0) and m["loss"] == pytest.approx(2.0) and m["tokens"] == 4
