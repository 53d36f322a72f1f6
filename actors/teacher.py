"""The VLM teacher of MCTS (docs/algorithm.md §6) on a vLLM engine, like the rollout actors' (`actors.engine`):
`VLLMTeacher` serves generation requests (one engine for every search worker holding a handle to it),
`RemoteTeacher` is the `data_gen.mcts.Teacher` of one question that forwards to it. What the teacher is sent
and how its outputs are read (system prompts, `mcts_messages`, `sampling_kwargs`, `parse_output`) is
`data_gen.teachers`, beside the scripted teacher.
"""

from __future__ import annotations

from actors.engine import make_llm, on_gpu
from data_gen.mcts import TeacherOutput
from data_gen.teachers import MCTS_SYSTEM_PROMPTS, mcts_messages, parse_output, sampling_kwargs


class VLLMTeacher:
    """A VLM teacher on a vLLM engine (any local model dir; on a cluster a large VLM with tensor
    parallelism on its own GPUs). One engine serves every search worker that holds a handle to it."""

    def __init__(self, model_path: str, *, max_model_len: int = 8192, tensor_parallel_size: int = 1,
                 temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 512, seed: int = 0,
                 stop_at_tags: bool = False):
        from transformers import AutoProcessor

        self.llm = make_llm(model_path, dtype="bfloat16" if on_gpu() else "float32", max_model_len=max_model_len,
                            max_images=1, seed=seed, tensor_parallel_size=tensor_parallel_size)
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.stop_at_tags = stop_at_tags  # see sampling_kwargs
        self.calls = 0

    def generate_batch(self, requests: list[dict]) -> list[list[TeacherOutput]]:
        """requests: {"messages", "image" (PIL), "n"} -> n outputs each, in one engine call."""
        from vllm import SamplingParams

        self.calls += len(requests)
        prompts = [{"prompt": self.processor.apply_chat_template(r["messages"], add_generation_prompt=True,
                                                                 tokenize=False),
                    "multi_modal_data": {"image": r["image"]}} for r in requests]
        params = [SamplingParams(**sampling_kwargs(r["n"], self.temperature, self.top_p, self.max_tokens,
                                                   self.stop_at_tags)) for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[parse_output(c.text) for c in o.outputs] for o in outs]


class RemoteTeacher:
    """The `Teacher` interface of one question, forwarding to a teacher server (a Ray actor wrapping
    `VLLMTeacher`, or the object itself in-process)."""

    def __init__(self, server, task: str, image, system_prompt: str | None = None, min_thoughts: int = 3):
        self.server, self.image, self.min_thoughts = server, image, min_thoughts
        if system_prompt is None and task not in MCTS_SYSTEM_PROMPTS:
            raise ValueError(f"no MCTS system prompt for task {task!r}; known: {sorted(MCTS_SYSTEM_PROMPTS)} "
                             "(or give teacher.prompt_file)")
        self.system = system_prompt or MCTS_SYSTEM_PROMPTS[task]
        self.calls = 0

    def generate(self, question: str, image, steps: list[str], n: int, force_final: bool) -> list[TeacherOutput]:
        self.calls += 1
        req = {"messages": mcts_messages(self.system, self.min_thoughts, question, steps, force_final),
               "image": self.image, "n": n}
        call = getattr(self.server.generate_batch, "remote", None)
        if call is None:
            return self.server.generate_batch([req])[0]
        import ray

        return ray.get(call([req]))[0]
