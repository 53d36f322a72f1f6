"""The SFT speed-ups change no number: micro-batches of several examples cut by length (`learner.length_buckets`)
and the frozen vision tower's outputs kept for the whole run (`learner.sft_vision_cache_mb`) give the losses and
the weights of the released way (one example per micro-batch, the tower run in every forward), step after step.
An in-process DeepSpeed learner (one rank, gloo) on the tiny model; multi-turn rows with a scene and its crops."""

import os

import pytest
import torch
from PIL import Image

from conftest import release_process_group
from configs import schema as config


def rows(root, n: int = 6) -> list[dict]:
    """`n` zoom dialogues of different lengths: a scene (shared by pairs of rows) and 1-2 crops each."""
    out = []
    for i in range(n):
        scene = f"scene{i // 2}.png"
        Image.new("RGB", (112, 112), (40 * (i // 2), 90, 200)).save(root / scene)
        crops = [f"crop{i}_{k}.png" for k in range(1 + i % 2)]
        for k, c in enumerate(crops):
            Image.new("RGB", (112, 112), (10 * i, 20 * k, 30)).save(root / c)
        messages = [{"role": "system", "content": "Zoom, then answer."},
                    {"role": "user", "content": "<image>What colour is the circle?" + " Look well." * i}]
        for k, _ in enumerate(crops):
            messages += [{"role": "assistant", "content": f"<think>the circle (5{k}, 6{i})</think>"
                                                          f"<tool_call>[5{k}, 6{i}]</tool_call>" + " hm" * (i * k)},
                         {"role": "user", "content": "<image>"}]
        messages.append({"role": "assistant", "content": f"<think>it is red{' indeed' * i}</think><answer>red</answer>"})
        out.append({"messages": messages, "images": [scene, *crops], "question_id": f"q{i}"})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoProcessor

    from data_gen.tiny_model import make_tiny_model
    from learner.sft import encode_row

    root = tmp_path_factory.mktemp("sft_speed")
    model = make_tiny_model(root / "model", vocab="small")
    proc = AutoProcessor.from_pretrained(model)
    examples = [encode_row(r, root, proc.tokenizer, proc.image_processor, where=f"row {k}")
                for k, r in enumerate(rows(root))]
    env = dict(os.environ)
    yield model, root, examples
    release_process_group(env)


def train(setup, steps: int = 2, **kw):
    """`steps` SFT steps of all the examples (reversed on the second: another order) from the same model."""
    from learner.trainer import Learner

    model, root, examples = setup
    cfg = config.LearnerConfig(lr=1e-3, grad_clip=1.0, warmup_ratio=0.0, mini_batch_size=0, kl_coef=0.0,
                               schedule=config.Schedule("constant"), **kw)
    learner = Learner(str(model), cfg, root, total_steps=steps)
    tower = learner.engine.module.model.get_image_features
    ran = []  # images through the vision tower, per call

    def counted(pixels, grid, *a, **k):
        ran.append(len(grid))
        return tower(pixels, grid, *a, **k)

    learner.engine.module.model.get_image_features = counted
    metrics = [learner.sft_step(examples if s % 2 == 0 else examples[::-1]) for s in range(steps)]
    metrics.append(learner.sft_eval(examples))
    weights = {k: v.detach().clone() for k, v in learner.engine.module.named_parameters() if v.requires_grad}
    return metrics, weights, ran


def test_length_buckets_and_the_kept_vision_outputs_change_no_number(setup):
    """Losses, token counts and gradient norms of both steps and the validation loss agree to float precision;
    so do the weights, measured against the update itself: AdamW moves each weight by about lr whatever its
    gradient's size, so a weight whose gradient is a near-cancelling sum (~1e-9, where summation order shows)
    moves by lr x (its float noise / eps): 0.45 % of the largest update here, from a gradient equal to 1e-6."""
    _, start, _ = train(setup, steps=0)
    released, w_released, ran_released = train(setup, micro_batch_size=1, length_buckets=False, vision_cache=False)
    fast, w_fast, ran_fast = train(setup, micro_batch_size=4, length_buckets=True, vision_cache=True)
    for a, b in zip(released, fast):
        for key in a.keys() & {"loss", "tokens", "grad_norm", "val_loss", "val_tokens"}:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    update = max((w_released[k] - start[k]).abs().max().item() for k in start)
    assert max((w_fast[k] - w_released[k]).abs().max().item() for k in start) < 0.01 * update
    # the tower ran once per distinct image for the whole run (3 scenes + 9 crops), not in every forward
    _, _, examples = setup
    assert sum(ran_fast) == 3 + 9 and sum(ran_released) == 3 * sum(len(e.images) for e in examples)


def test_sft_loss_is_the_mean_of_the_examples_token_means(setup):
    """The step's loss by hand from the model's own per-token log-probs: each example's token mean over its
    assistant tokens, averaged over the examples, with micro-batches of 3 (a random model's token losses are
    all about ln(vocab), so that this is not one token mean over the batch is tests/test_sft.py's, by hand)."""
    from learner.logprobs import token_logprobs
    from learner.trainer import Learner

    model, root, examples = setup
    cfg = config.LearnerConfig(grad_clip=1.0, warmup_ratio=0.0, mini_batch_size=0, kl_coef=0.0, micro_batch_size=3)
    learner = Learner(str(model), cfg, root, total_steps=1)
    means = []
    with torch.no_grad():
        for e in examples:
            mask = torch.tensor([e.loss_mask], dtype=torch.float32)
            logp = token_logprobs(learner.engine, learner.inputs([e]), mask=mask)
            means.append(float((-logp * mask).sum() / mask.sum()))
    m = learner.sft_step(examples)
    assert m["loss"] == pytest.approx(sum(means) / len(means), rel=1e-5)
