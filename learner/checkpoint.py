"""What leaves the learner's DeepSpeed engine: its weights in HF parameter names (what a weight sync sends and
an HF export writes; under ZeRO-3 gathered a few layers at a time), resumable checkpoints (module, optimizer,
step counters, version, RNG), and HF model dirs that transformers and vLLM load. `learner.trainer.Learner`'s
`state_dict`, `save_state`, `load_state` and `save_hf` call these on its engine.
"""

from __future__ import annotations

from pathlib import Path

import torch

DS_TAG = "learner"  # the tag (sub-directory) of a resumable checkpoint's DeepSpeed state


def export_weights(engine, zero_stage: int, gather_mb: int, rank: int,
                   trained_only: bool = False) -> dict[str, torch.Tensor]:
    """The engine's weights in HF parameter names, on CPU (under ZeRO-3 gathered `gather_mb` MiB at a time:
    call on every rank; only rank 0 gets them, the others {}). `trained_only` leaves out the parameters that
    never train (the vision tower with `freeze_vision`): what a weight sync must send, since the engines
    loaded them from the same model dir and vLLM keeps a layer's weights when a reload brings none for it."""
    module = engine.module
    # A tied weight (lm_head = embed_tokens, Qwen2.5-VL-3B) has two names. An HF export keeps both (save_pretrained
    # de-duplicates); a sync sends it once, under its first name, the embedding's, which is the one vLLM loads:
    # its Qwen2 loader skips `lm_head.*` when tied, and the NCCL receiver, loading one tensor at a time, raises
    # when the alias arrives without its original.
    named = {n: p for n, p in module.named_parameters(remove_duplicate=trained_only)
             if p.requires_grad or not trained_only}
    if zero_stage == 3:
        return gathered(module, named, trained_only, gather_mb, rank)
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if k in named or not trained_only}


def gathered(module, named: dict, trained_only: bool, gather_mb: int, rank: int) -> dict[str, torch.Tensor]:
    """ZeRO-3: the full weights on rank 0's CPU ({} on the other ranks), gathered `gather_mb` MiB of
    parameters at a time (a few layers), each group copied out and released before the next: no rank
    holds the whole model on its device at once, and only rank 0 keeps a CPU copy. Collective: every
    rank must call it with the same parameters."""
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    groups, size = [[]], 0
    for name, p in named.items():
        nbytes = getattr(p, "ds_numel", p.numel()) * p.element_size()
        if groups[-1] and size + nbytes > gather_mb * 2**20:
            groups.append([])
            size = 0
        groups[-1].append((name, p))
        size += nbytes
    for group in groups:
        unique = list({id(p): p for _, p in group}.values())
        with deepspeed.zero.GatheredParameters(unique, modifier_rank=None):
            if rank == 0:
                out |= {name: p.detach().cpu().clone() for name, p in group}
    if rank == 0 and not trained_only:  # buffers are not partitioned
        out |= {k: v.detach().cpu().clone() for k, v in module.state_dict(keep_vars=True).items() if k not in named}
    return out


def save_state(engine, path: str | Path, version: int) -> None:
    """A resumable checkpoint in `path`: DeepSpeed's module, optimizer and step counters (every rank
    writes its ZeRO partition; call on every rank), with the learner's `version` and torch RNG as
    client state."""
    client = {"version": version, "torch_rng": torch.get_rng_state()}
    engine.save_checkpoint(str(path), tag=DS_TAG, client_state=client)


def load_state(engine, path: str | Path) -> dict:
    """Go on from `save_state`'s checkpoint: weights, optimizer moments and step counters, RNG (restored
    here); returns the client state (its `version` is the learner's). Call on every rank, with the ranks and
    ZeRO stage it was saved with."""
    loaded, client = engine.load_checkpoint(str(path), tag=DS_TAG, load_optimizer_states=True,
                                            load_lr_scheduler_states=False)
    if loaded is None:
        raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint '{DS_TAG}' to load")
    torch.set_rng_state(client["torch_rng"])
    return client


def save_hf(engine, state: dict[str, torch.Tensor], path: str | Path, model_path: str, rank: int) -> None:
    """Write the policy (`state`: `export_weights` of every parameter) as an HF model dir with the processor
    of `model_path`: loadable by transformers and vLLM. Rank 0 writes; the others do nothing."""
    from transformers import AutoProcessor

    if rank == 0:
        engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
        AutoProcessor.from_pretrained(model_path).save_pretrained(path)
