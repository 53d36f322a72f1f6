"""The learner's forward inputs (`learner.inputs.batch_inputs`) give a Qwen2.5-VL the positions it was
built for: M-RoPE, image tokens at (t, h, w) and the text after an image at max + 1, as vLLM generates with.

The model here is the tiny random one with its attention sharpened (q/k weights x 8), so that positions
change the log-probs visibly; the random model's near-uniform attention hid a 1-D-positions bug (a trained
model's log-probs differed from vLLM's by 0.3 nats per token with them)."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from actors.trajectory import Trajectory
from learner.inputs import batch_inputs
from learner.logprobs import token_logprobs


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from data_gen.tiny_model import make_tiny_model

    torch.manual_seed(0)
    path = make_tiny_model(tmp_path_factory.mktemp("sharp") / "model", vocab="small", size="tiny")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    return model, AutoProcessor.from_pretrained(path)


def episode(proc, images: list[Image.Image], extra: int, seed: int) -> tuple[Trajectory, dict]:
    """A prompt with `images` (the first in the user turn, the rest as crop observations), then `extra`
    random response tokens: token ids exactly as the processor expands them. Also the reference inputs of
    that sequence alone: the processor's own (its mm_token_type_ids), the extra tokens appended as text."""
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                     "text": "Where is the red square?"}]}], add_generation_prompt=True)
    text += "<think>(3, 4)</think>" + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n" * (
        len(images) - 1)
    ref = dict(proc(text=[text], images=images, return_tensors="pt"))
    rng = random.Random(seed)
    more = torch.tensor([[rng.randrange(300) for _ in range(extra)]])
    for key, tail in (("input_ids", more), ("attention_mask", torch.ones_like(more)),
                      ("mm_token_type_ids", torch.zeros_like(more))):
        ref[key] = torch.cat([ref[key], tail.to(ref[key].dtype)], dim=1)
    ids = ref["input_ids"][0].tolist()
    return Trajectory(episode_id=str(seed), group_id="g", prompt_id="p", weight_version=0, token_ids=ids,
                      loss_mask=[1] * len(ids), logprobs=[0.0] * len(ids), prompt_len=len(ids), reward=0.0,
                      reward_format=0.0, reward_accuracy=0.0, reward_coordinate=0.0, reward_diversity=0.0,
                      advantage=0.0, num_turns=1), ref


def test_batched_learner_inputs_use_mrope_positions(sharp):
    model, proc = sharp
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    red, blue = Image.new("RGB", (224, 168), (200, 30, 30)), Image.new("RGB", (112, 112), (20, 40, 220))
    images = [[red], [blue, red]]
    (t0, ref0), (t1, ref1) = episode(proc, images[0], 30, 0), episode(proc, images[1], 7, 1)
    trajs, refs = [t0, t1], [ref0, ref1]  # different lengths: padding
    inputs = batch_inputs(trajs, images, proc.image_processor, image_id)
    assert inputs["mm_token_type_ids"].sum().item() == sum(t.token_ids.count(image_id) for t in trajs)
    with torch.no_grad():
        batched = token_logprobs(model, inputs)
        flat = token_logprobs(model, {k: v for k, v in inputs.items() if k != "mm_token_type_ids"})
        for i, t in enumerate(trajs):
            ref = token_logprobs(model, refs[i])[0]
            n = len(t.token_ids)
            assert (batched[i, :n] - ref).abs().max().item() < 1e-4
            assert batched[i, n:].abs().sum().item() == 0.0  # padding reads 0
    # the check is sharp: 1-D positions (no token types) move the tokens after the images visibly
    assert (flat - batched).abs().max().item() > 0.05


def two_episodes(proc) -> tuple[list[Trajectory], dict]:
    """Two episodes of different lengths (one image; two images) and their right-padded batch inputs."""
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    red, blue = Image.new("RGB", (224, 168), (200, 30, 30)), Image.new("RGB", (112, 112), (20, 40, 220))
    images = [[red], [blue, red]]
    trajs = [episode(proc, images[0], 30, 0)[0], episode(proc, images[1], 7, 1)[0]]
    return trajs, batch_inputs(trajs, images, proc.image_processor, image_id)


def test_masked_columns_give_the_full_forwards_logprobs_and_entropy(sharp):
    """`mask=` computes the LM head only on the columns some row trains on: the log-probs and entropies
    there equal the full forward's, every other column reads 0, and the gradient flows."""
    model, proc = sharp
    trajs, inputs = two_episodes(proc)
    n0, n1 = len(trajs[0].token_ids), len(trajs[1].token_ids)
    mask = torch.zeros(2, inputs["input_ids"].shape[1])
    mask[0, n0 - 20:n0 - 5], mask[1, n1 - 7:n1] = 1, 1  # inside each row's own tokens, not its padding
    with torch.no_grad():
        full, full_ent = token_logprobs(model, inputs, with_entropy=True)
        part, part_ent = token_logprobs(model, inputs, with_entropy=True, mask=mask)
    on = mask.bool()
    assert (part[on] - full[on]).abs().max().item() < 1e-5
    assert (part_ent[on] - full_ent[on]).abs().max().item() < 1e-4
    computed = mask.bool().any(0)
    assert part[:, ~computed].abs().sum().item() == 0.0 and part_ent[:, ~computed].abs().sum().item() == 0.0
    model.zero_grad()
    (token_logprobs(model, inputs, mask=mask) * mask).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum().item() > 0
    model.zero_grad()


def test_right_padded_rows_run_without_the_attention_mask(sharp):
    """`causal_only`: right-padded rows need no attention mask under causal attention (a real token never
    sees the padding after it), so the forward runs `is_causal` and skips the blocks above the diagonal;
    the log-probs of the real tokens equal a forward with the mask. Any other padding keeps the mask."""
    from learner.logprobs import causal_only

    model, proc = sharp
    trajs, inputs = two_episodes(proc)
    assert "attention_mask" not in causal_only(inputs)
    left = dict(inputs, attention_mask=inputs["attention_mask"].flip(1))
    assert causal_only(left) is left  # left padding: the mask stays
    with torch.no_grad():
        logits = model(**inputs).logits.float()  # with the mask
        masked = torch.log_softmax(logits[:, :-1], -1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]
        fast = token_logprobs(model, inputs)
    for i, t in enumerate(trajs):
        n = len(t.token_ids)
        assert (fast[i, 1:n] - masked[i, :n - 1]).abs().max().item() < 1e-5
