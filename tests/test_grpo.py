"""GRPO functions against hand-worked numbers (docs/algorithm.md §5)."""

import math
from types import SimpleNamespace

import pytest
import torch

from learner.grpo import kl_k3, policy_loss, row_means, truncated_is_weights
from rewards.advantages import group_advantages


def test_group_advantages_hand_worked():
    # one group [1, 0, 0, 0]: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([7, 7, 7, 7]))
    assert torch.allclose(a, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)


def test_group_advantages_interleaved_groups_and_constant_group():
    r = torch.tensor([1.0, 2.0, 0.0, 2.0, 1.0, 2.0])
    g = torch.tensor([0, 1, 0, 1, 0, 1])
    a = group_advantages(r, g)
    # group 0: [1, 0, 1]: mean 2/3, std sqrt((1/9 + 4/9 + 1/9) / 2) = sqrt(1/3)
    s = math.sqrt(1 / 3)
    assert torch.allclose(a[[0, 2, 4]], torch.tensor([1 / 3 / s, -2 / 3 / s, 1 / 3 / s]), atol=1e-5)
    assert torch.equal(a[[1, 3, 5]], torch.zeros(3))  # identical rewards: no signal


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="more than one sample"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), torch.zeros(2, 2))


def test_policy_loss_hand_worked():
    # tokens: (ratio, A) -> per-token loss
    #   (1.5,  1): -1.5 vs clipped -1.28 -> max = -1.28 (clip-higher)
    #   (0.5,  1): -0.5 vs clipped -0.8  -> max = -0.5
    #   (1.5, -1):  1.5 vs clipped  1.28 -> 1.5; dual cap 3 -> 1.5
    #   (5.0, -1):  5.0 vs 1.28 -> 5.0; dual cap 3 -> 3.0 (clip lower)
    #   (9.0,  1):  masked out
    ratio = torch.tensor([[1.5, 0.5, 1.5, 5.0, 9.0]])
    old = torch.zeros_like(ratio)
    logp = ratio.log().requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, m = policy_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.5 + 3.0) / 4, abs=1e-6)
    assert m["clip_frac_higher"] == pytest.approx(0.25) and m["clip_frac_lower"] == pytest.approx(0.25)
    loss.backward()
    # d/dlogp of -A*ratio is -A*ratio where unclipped; 0 where clipped or masked; divided by 4 tokens
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5 / 4, 1.5 / 4, 0.0, 0.0]]), atol=1e-6)


def test_policy_loss_broadcasts_sequence_advantages():
    logp = torch.log(torch.tensor([[1.1, 0.9], [1.0, 1.2]]))
    l_seq, _ = policy_loss(logp, torch.zeros(2, 2), torch.tensor([2.0, -1.0]), torch.ones(2, 2))
    l_tok, _ = policy_loss(logp, torch.zeros(2, 2), torch.tensor([[2.0, 2.0], [-1.0, -1.0]]), torch.ones(2, 2))
    assert l_seq.item() == pytest.approx(l_tok.item())
    assert l_seq.item() == pytest.approx((-2.2 - 1.8 + 1.0 + 1.2) / 4, abs=1e-6)


def test_policy_loss_all_masked_is_zero():
    loss, _ = policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1), torch.zeros(1, 3))
    assert loss.item() == 0.0


def test_row_means_hand_worked():
    """Row 0: (1 + 3) / 2 = 2 (the padding's 100 masked); row 1: 6 / 1; row 2: nothing trained, 0."""
    x = torch.tensor([[1.0, 3.0, 100.0], [6.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert row_means(x, mask).tolist() == [2.0, 6.0, 0.0]


def test_kl_k3_hand_worked():
    logp = torch.tensor([[0.0, 0.0, 0.0, -30.0]])
    ref = torch.tensor([[math.log(2.0), 0.0, -1.0, 0.0]])
    k = kl_k3(logp, ref)
    assert k[0, 0].item() == pytest.approx(2 - math.log(2) - 1)  # 0.30685
    assert k[0, 1].item() == 0.0
    assert k[0, 2].item() == pytest.approx(math.exp(-1) + 1 - 1)  # 0.36788
    assert k[0, 3].item() == 10.0  # clamped


def test_truncated_is_weights_hand_worked():
    # min(exp(prox - behaviour), cap): ratio e^1 capped at 2; equal -> 1; e^-0.5
    w = truncated_is_weights(torch.tensor([[0.0, -1.0, 0.0]]), torch.tensor([[-1.0, -1.0, 0.5]]), cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, math.exp(-0.5)]]), atol=1e-6)


def test_minibatch_layout_hand_worked():
    from learner.inputs import minibatch_layout

    # 5 sequences, mini-batches of 4, micro-batches of 2: two updates, the second with one micro-batch
    assert minibatch_layout(5, 4, 2, 1, 0) == [[[0, 1], [2, 3]], [[4]]]
    assert minibatch_layout(5, 0, 2, 1, 0) == [[[0, 1], [2, 3], [4]]]  # 0: the whole step at once
    # two ranks deal each mini-batch round-robin; both get the same number of micro-batches
    assert minibatch_layout(5, 4, 2, 2, 0) == [[[0, 2]], [[4]]]
    assert minibatch_layout(5, 4, 2, 2, 1) == [[[1, 3]], [[]]]
    assert minibatch_layout(0, 4, 2, 1, 0) == []
    # the official multi-turn step: 1,024 sequences in mini-batches of 64 -> 16 updates of 32 micro-batches
    lay = minibatch_layout(1024, 64, 2, 1, 0)
    assert len(lay) == 16 and all(len(mb) == 32 for mb in lay)
    # single-turn: 128 prompts x 5 = 640 in mini-batches of 320 -> 2 updates
    assert len(minibatch_layout(640, 320, 2, 1, 0)) == 2


def test_length_buckets_order_each_minibatch_longest_first():
    from learner.inputs import by_length, minibatch_layout

    lengths = [5, 9, 7, 9, 3, 8]
    # mini-batches {0..3} and {4, 5} stay; inside each, longest first (ties in order), then cut
    assert minibatch_layout(6, 4, 2, 1, 0, lengths) == [[[1, 3], [2, 0]], [[5, 4]]]
    # two ranks: the sorted mini-batch dealt round-robin, so both get long and short ones
    assert minibatch_layout(6, 4, 2, 2, 0, lengths) == [[[1, 2]], [[5]]]
    assert minibatch_layout(6, 4, 2, 2, 1, lengths) == [[[3, 0]], [[4]]]
    assert minibatch_layout(6, 0, 2, 1, 0, lengths) == [[[1, 3], [5, 2], [0, 4]]]
    trajs = [SimpleNamespace(token_ids=[0] * n) for n in lengths]  # by_length reads the token count only
    assert by_length([4, 0, 1, 3], trajs) == [1, 3, 0, 4]


def test_warmup_lr_hand_worked():
    from learner.trainer import warmup_lr

    # 100 rollout steps, warmup 0.05 -> 5 steps: factors 0, 0.2, 0.4, 0.6, 0.8, then 1
    assert [warmup_lr(1.0, s, 0.05, 100) for s in range(7)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert warmup_lr(1e-6, 0, 0.0, 100) == 1e-6  # no warmup: full LR from the first step
    assert warmup_lr(1e-6, 0, 0.05, 10) == 1e-6  # int(0.5) = 0 warmup steps
