"""A tied-embedding policy (Qwen2.5-VL-3B's layout: the LM head is the input embedding) through a weight sync:
the learner sends the tied tensor once, under the embedding's name (vLLM's Qwen2 loader skips `lm_head.*` when
tied, and its NCCL receiver raises on an alias without its original), and after the shared-memory and the
object-store loads vLLM's log-probs equal the learner's."""

import os

import pytest
import torch

from conftest import release_process_group
from configs import schema as config


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    from transformers import AutoProcessor

    from actors.engine import make_llm
    from data_gen.synthetic import make_dataset
    from data_gen.tiny_model import make_tiny_model
    from learner.trainer import Learner

    root = tmp_path_factory.mktemp("tied")
    model = make_tiny_model(root / "model", vocab="small", tied=True)
    make_dataset("visual_search", 1, seed=0, out=root / "data", progress=False)
    cfg = config.LearnerConfig(grad_clip=1.0, warmup_ratio=0.0, mini_batch_size=0, kl_coef=0.0)
    env = dict(os.environ)
    yield Learner(str(model), cfg, root / "data"), make_llm(str(model), max_model_len=2048, seed=0), \
        AutoProcessor.from_pretrained(model)
    release_process_group(env)


def logprobs(learner, llm, ids):
    from vllm import SamplingParams

    from learner.logprobs import token_logprobs

    o = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    theirs = torch.tensor([0.0] + [d[t].logprob for d, t in zip(o.prompt_logprobs[1:], ids[1:])])
    with torch.no_grad():
        ours = token_logprobs(learner.engine, {"input_ids": torch.tensor([ids])})[0]
    return ours, theirs


def test_tied_weights_are_sent_once_and_load_through_shm_and_the_object_store(tied):
    from actors.shm import WeightFile, WeightReader
    from actors.weights import load_weights, load_weights_from_file

    learner, llm, proc = tied
    module = learner.engine.module
    assert module.lm_head.weight is module.model.language_model.embed_tokens.weight  # tied
    ids = proc.tokenizer.encode("<|im_start|>user\nWhere is the red square?<|im_end|>\n<|im_start|>assistant\n"
                                "<think> At (12, 30). </think>", add_special_tokens=False)
    for scale in (0.5, 0.25, 0.125):  # shared memory, the object store's plain state dict, a file per worker (TP)
        with torch.no_grad():
            module.lm_head.weight.add_(scale * torch.randn_like(module.lm_head.weight))  # moves the embedding too
        ours, theirs = logprobs(learner, llm, ids)
        assert (ours - theirs).abs().max() > 1e-2  # the engine still has the old weights
        state = learner.state_dict(trained_only=True)
        assert "lm_head.weight" not in state and "model.language_model.embed_tokens.weight" in state
        assert "lm_head.weight" in learner.state_dict()  # an HF export keeps both names
        if scale == 0.25:
            load_weights(llm, state)
        else:
            f = WeightFile()
            try:
                path = f.write(1, state)
                load = (lambda s: load_weights(llm, s)) if scale == 0.5 else (lambda _, path=path: load_weights_from_file(llm, path))
                assert WeightReader().read(path, load) == 1
            finally:
                f.close()
        ours, theirs = logprobs(learner, llm, ids)
        assert (ours - theirs).abs().max() < 1e-3


def test_tensor_parallel_workers_are_sent_the_file_path_not_the_weights():
    """With TP > 1 the engine's workers live in other processes: what `collective_rpc` carries to each is the
    weight file's path (they map it), never the tensors."""
    from actors.weights import load_weights_from_file, reload_from_file

    sent = []

    class Engine:  # records what would cross to the workers
        def collective_rpc(self, method, args=(), kwargs=None):
            sent.append((method, args, kwargs))

        def reset_prefix_cache(self):
            pass

        reset_mm_cache = reset_prefix_cache
        llm_engine = type("E", (), {"reset_encoder_cache": lambda self: None})()

    load_weights_from_file(Engine(), "/dev/shm/vigorl-weights-123")
    assert sent == [(reload_from_file, ("/dev/shm/vigorl-weights-123",), None)]
