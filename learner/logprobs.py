"""Training-side log-probabilities of trajectories: run the policy on the exact token ids the actor generated
(inputs built by `learner.inputs`, the episode's images rebuilt from their references) and read off per-token
log-probs.

Shapes: a micro-batch of B trajectories is right-padded to [B, T] (T = the longest); logprobs [B, T],
position 0 is 0.0 (no prediction for the first token), padding positions are 0.0.
"""

from __future__ import annotations

import torch


def causal_only(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`inputs` without the attention mask when every row is right-padded (ones, then zeros), else unchanged.

    Why: under a causal mask a real token never sees the padding after it, so right padding needs no mask
    for the real tokens' outputs (and M-RoPE positions of right-padded rows are the same without it; the
    padding's own outputs are zeroed by the caller). Without a mask transformers' SDPA path runs
    `is_causal=True`, and PyTorch's CPU flash-attention kernel then skips the blocks above the diagonal
    instead of computing them and adding -inf: attention, 43 % of a profiled multi-turn SFT step of the
    tiny model, takes 40 % less time (log-probs identical, tests/test_logprobs.py)."""
    am = inputs.get("attention_mask")
    if am is None or not bool((am[:, 1:] <= am[:, :-1]).all()):
        return inputs
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def token_logprobs(model, inputs: dict[str, torch.Tensor], temperature: float = 1.0,
                   with_entropy: bool = False, mask: torch.Tensor | None = None):
    """log p(token_t | tokens_<t, images) for t >= 1; [B, T] with 0 at t = 0. Differentiable.
    With `with_entropy`, also the policy's per-token entropy [B, T] (no gradient).

    `mask` [B, T] (the trained tokens, e.g. the loss mask): only the columns where some row has a masked
    token are computed; the others read 0. Why: the [B, T, V] logits are the step's largest tensor, and
    most of T is prompt (1,008 image tokens per GUI screenshot): with the 151k Qwen vocab the full log-softmax
    of 10 trajectories of ~1,100 tokens is 6.7 GB per copy. The model's `logits_to_keep` (a tensor of
    positions) runs the LM head on those positions only, as TRL does with its completion length.

    The softmax is over the whole vocabulary, as vLLM's default `raw_logprobs` are (they ignore the
    `allowed_token_ids` the actors sample with, and the temperature)."""
    B, T = inputs["input_ids"].shape
    # [K] token positions t >= 1 to score (all of them without a mask); the logits at t - 1 predict them
    cols = torch.arange(1, T) if mask is None else torch.nonzero(mask[:, 1:].bool().any(0).cpu())[:, 0] + 1
    logits = model(**causal_only(inputs), logits_to_keep=(cols - 1).to(inputs["input_ids"].device)).logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    ids = inputs["input_ids"][:, cols.to(inputs["input_ids"].device)]  # [B, K]
    logsm = torch.log_softmax(logits, dim=-1)
    lp = logsm.gather(-1, ids[..., None])[..., 0]  # [B, K]

    def spread(x: torch.Tensor) -> torch.Tensor:  # [B, K] -> [B, T], 0 off the computed columns
        return torch.zeros(B, T, dtype=x.dtype, device=x.device).index_copy(1, cols.to(x.device), x)

    lp = spread(lp)
    if "attention_mask" in inputs:
        lp = lp * inputs["attention_mask"].to(lp.dtype)
    if not with_entropy:
        return lp
    with torch.no_grad():
        ent = -(logsm.exp() * logsm).sum(-1)
    return lp, spread(ent)
