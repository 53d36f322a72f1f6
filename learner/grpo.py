"""GRPO math (SPEC §5) as small pure functions on tensors. Sources: the released ViGoRL code
(Gabesarch/grounded-rl, built on EasyR1's `core_algos.py`) for the formulas; shapes in the docstrings.

Advantages are computed where rollouts are scored (actors); the learner only runs `policy_loss` and
`kl_k3` on what it is given.
"""

from __future__ import annotations

import math

import torch


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps), std unbiased (n - 1), within each group g (GRPO outcome
    advantage, EasyR1 `compute_grpo_outcome_advantage`; the paper's formula only subtracts the mean).

    rewards: [N] float; group_ids: [N] int (any labels). Returns [N]. Every group needs > 1 sample."""
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must be 1-D of one length, got {tuple(rewards.shape)} "
                         f"and {tuple(group_ids.shape)}")
    r = rewards.to(torch.float64)
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if (counts < 2).any():
        raise ValueError(f"every group needs more than one sample; group sizes {counts.tolist()}")
    n = counts.to(torch.float64)
    mean = torch.zeros_like(n).index_add_(0, inv, r) / n
    dev = r - mean[inv]
    std = (torch.zeros_like(n).index_add_(0, inv, dev * dev) / (n - 1)).sqrt()
    return (dev / (std[inv] + eps)).to(rewards.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean over all unmasked entries of the micro-batch (0 when nothing is unmasked)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: float = 3.0
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO/GRPO policy loss with clip-higher and dual clip (EasyR1 `compute_policy_loss`):

        log_ratio = clamp(logp - old_logp, -20, 20);  ratio = exp(log_ratio)
        clipped   = exp(clamp(log_ratio, log(1 - clip_low), log(1 + clip_high)))   # clipped in log space
        l1 = -A * ratio;  l2 = -A * clipped;  l3 = -A * dual_clip
        loss_t = max(l1, l2)                 if A >= 0
                 min(max(l1, l2), l3)        if A < 0   (dual clip caps the loss at -A * 3)
        loss = token-mean of loss_t over mask

    logp, old_logp, mask: [B, T]; advantages: [B] (broadcast to tokens) or [B, T].
    Returns (loss, metrics) with clip fractions and the approximate KL to the behaviour policy."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    mask = mask.to(logp.dtype)
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    clipped = log_ratio.clamp(math.log(1.0 - clip_low), math.log(1.0 + clip_high)).exp()
    l1, l2, l3 = -advantages * ratio, -advantages * clipped, -advantages * dual_clip
    upper = torch.maximum(l1, l2)
    lower = torch.minimum(upper, l3)
    neg = advantages < 0
    per_token = torch.where(neg, lower, upper)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        metrics = {
            "clip_frac_higher": masked_mean((l1 < l2).to(logp.dtype), mask).item(),
            "clip_frac_lower": masked_mean(((upper > l3) & neg).to(logp.dtype), mask).item(),
            "approx_kl": masked_mean(-log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, metrics


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 ("low_var_kl") estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1, clamped
    to [-10, 10] (EasyR1 `compute_kl`, SPEC §5). Shapes: [B, T] -> [B, T]."""
    kl = (ref_logp - logp).clamp(-20.0, 20.0)
    return (kl.exp() - kl - 1.0).clamp(-10.0, 10.0)
