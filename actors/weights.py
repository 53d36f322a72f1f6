"""Loading a published, versioned state dict into a running vLLM engine (CPU path).

vLLM's CPU backend repacks Linear weights at init, so `model.load_weights` afterwards is wrong; the
worker's `reload_weights(weights_iterator=..., is_checkpoint_format=True)` re-runs the loader with the
repacking. It takes HF parameter names. Caches keyed on old weights must go: prefix cache, multimodal
cache, and the encoder cache (without it the next image request fails with "Encoder cache miss").
"""

from __future__ import annotations

import time

import torch


def load_weights(llm, state_dict: dict[str, torch.Tensor]) -> float:
    """Reload `state_dict` (HF names) into `llm` in place between generate calls; returns seconds."""
    t0 = time.perf_counter()
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(state_dict.items())),
                                                  "is_checkpoint_format": True})
    llm.reset_prefix_cache()
    llm.reset_mm_cache()
    llm.llm_engine.reset_encoder_cache()
    return time.perf_counter() - t0
