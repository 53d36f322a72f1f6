"""GRPO group advantages (docs/algorithm.md §5): computed where rollouts are scored (`actors.rollout`), so the
learner only ever sees advantages it is given. Source: the released ViGoRL code (Gabesarch/grounded-rl, built
on EasyR1's `core_algos.py`) for the formula; shapes in the docstring.
"""

from __future__ import annotations

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
