"""Loading a published, versioned state dict into a running vLLM engine (CPU path).

vLLM's CPU backend repacks Linear weights at init, so `model.load_weights` afterwards is wrong; the
worker's `reload_weights(weights_iterator=..., is_checkpoint_format=True)` re-runs the loader with the
repacking. It takes HF parameter names. Caches keyed on old weights must go: prefix cache, multimodal
cache, and the encoder cache (without it the next image request fails with "Encoder cache miss").
"""

from __future__ import annotations

import time

import numpy as np
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


def pack(state_dict: dict[str, torch.Tensor]) -> dict:
    """A state dict as numpy views (no copy), which Ray's object store holds and hands out zero-copy
    (torch tensors would be pickled: one more copy each way). bf16 travels as its int16 bit pattern."""
    names, dtypes, arrays = [], [], []
    for k, v in state_dict.items():
        v = v.detach().contiguous()
        names.append(k)
        dtypes.append(str(v.dtype).removeprefix("torch."))
        arrays.append((v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy())
    return {"names": names, "dtypes": dtypes, "arrays": arrays}


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    """Inverse of `pack`; the tensors view the (read-only) object-store buffers, no copy."""
    out = {}
    for name, dtype, arr in zip(packed["names"], packed["dtypes"], packed["arrays"]):
        with np.errstate(all="ignore"):
            t = torch.frombuffer(memoryview(arr).cast("B"), dtype=torch.int16 if dtype == "bfloat16" else
                                 getattr(torch, dtype)) if arr.size else torch.from_numpy(arr.copy())
        t = t.view(torch.bfloat16) if dtype == "bfloat16" else t
        out[name] = t.reshape(arr.shape)
    return out
