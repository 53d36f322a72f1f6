"""vLLM engine wrapper: one place that knows how to start vLLM on this CPU machine or on a GPU, and the
turn grammar for constrained decoding. Episodes are played by `actors.rollout.Rollout`, the one loop.

CPU facts (docs/architecture.md): bind no cores (`VLLM_CPU_OMP_THREADS_BIND=nobind`), 1 GiB KV cache, the
in-process engine (~3 s init instead of ~20 s); the torchvision-free processor (actors.compat).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CPU_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def set_cpu_env() -> None:
    """Defaults for vLLM on CPU; a value the user exported wins."""
    for k, v in CPU_ENV.items():
        os.environ.setdefault(k, v)


def engine_dtype(dtype: str, gpu: bool) -> str:
    """The vLLM dtype of `model.dtype`: `auto` is the learner's dtype, bfloat16 on GPU and float32 on CPU (not
    vLLM's own `auto`, the checkpoint's dtype, which would serve a bf16 checkpoint in bf16 to an fp32 CPU learner
    and an fp32 tiny model in fp32 on GPU); anything else as written."""
    dtype = str(getattr(dtype, "value", dtype))
    return ("bfloat16" if gpu else "float32") if dtype == "auto" else dtype


def nccl_engine_kwargs() -> dict:
    """The engine config that lets `actors.weights.nccl_join` / `nccl_receive` broadcast weights into it:
    vLLM's weight-transfer protocol with the NCCL backend."""
    from vllm.config import WeightTransferConfig

    return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}


def make_llm(model_path: str, *, dtype: str = "auto", max_model_len: int = 8192, max_images: int = 5,
             seed: int = 0, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.8,
             nccl_weight_sync: bool = False, in_process: bool = False):
    """A vLLM `LLM` for a local Qwen2.5-VL dir (tiny or real). Images only: video is disabled.
    `in_process` (GPU; on CPU the engine always is): the engine core runs in this process, so that
    `actors.weights.load_weights` can hand it an iterator of tensors; across vLLM's process boundary its
    msgpack serialiser rejects one. Workers of a tensor-parallel engine still get it, pickled."""
    import actors.compat

    actors.compat.install()
    gpu = on_gpu()
    if not gpu:
        set_cpu_env()
    from vllm import LLM

    kwargs = dict(model=model_path, dtype=engine_dtype(dtype, gpu), max_model_len=max_model_len, seed=seed,
                  limit_mm_per_prompt={"image": max_images, "video": 0})
    if gpu and in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the LLM is built
    if gpu:
        kwargs.update(tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization)
        if nccl_weight_sync:
            kwargs.update(nccl_engine_kwargs())
    else:
        # No chunked prefill on CPU: a prompt prefilled over several steps has its sampled token discarded,
        # and vLLM then rewinds the request's seeded generator with `set_offset`, which a CPU generator
        # lacks ("CPU Generator does not use offset", vLLM 0.32 gpu_model_runner._bookkeeping_sync). Our
        # turns are seeded, so a multi-turn step whose prompts overflow max_num_batched_tokens crashed.
        kwargs.update(enforce_eager=True, enable_chunked_prefill=False)
    return LLM(**kwargs)


@dataclass(frozen=True)
class TurnGrammar:
    """Regular expressions of well-formed assistant turns (docs/algorithm.md §2), for constrained decoding."""

    turn: str  # a think step naming a point, then a zoom tool call or the answer
    zoom: str  # a think step naming a point, then a zoom tool call (no answer yet)
    forced: str  # the rest of a forced answer turn (after FORCED_ANSWER_PREFIX's "<answer>")


def turn_grammar(task: str, options: list[str], max_coord: int, multi_turn: bool = True) -> TurnGrammar:
    """Constrain a model that cannot yet write the format (a random tiny model, a cold-start sanity run)
    to ViGoRL's turn grammar (single-turn: one think step then the answer). Never used to train a real
    policy: its logprobs are of the masked sampler."""
    digits = max(1, len(str(max_coord)) - 1)  # numbers below 10**digits <= max_coord: inside the image
    num = rf"(0|[1-9][0-9]{{0,{digits - 1}}})"
    if options:
        answer = "(" + "|".join(re.escape(o) for o in options) + ")"
    elif task == "gui_grounding":
        answer = rf"\({num}, {num}\)"
    else:
        answer = r"(click \[[0-9]{1,3}\]|scroll \[(down|up)\]|go_back|stop \[[a-z ]{1,20}\])"
    think = rf"<think> [A-Za-z ,.]{{5,60}}\({num}, {num}\)[A-Za-z ,.]{{0,30}}</think>\n"
    call = (r'<tool_call>\n\{"name": "search_coordinate", "arguments": \{"coordinate": \[' + num + ", " + num
            + r"\]\}\}\n</tool_call>")
    final = f"<answer> {answer} </answer>"
    if not multi_turn:
        return TurnGrammar(turn=think + final, zoom=think + final, forced=f" {answer} </answer>")
    return TurnGrammar(turn=f"{think}({call}|{final})", zoom=think + call, forced=f" {answer} </answer>")
