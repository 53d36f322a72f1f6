"""The loop's core on the real stack: vLLM rollouts (this process) -> Arrow batches through the Ray object
store -> a DeepSpeed GRPO step in a Ray learner actor -> versioned weights back into vLLM. After the sync
the learner's logprobs of a fixed sequence match vLLM's within 1e-3 (fp32); without the sync they differ."""

import math

import pytest
import torch

from actors.zoom import ZoomSettings
from cluster.config import LearnerConfig


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from actors.rollout import Rollout
    from conftest import build_stack

    st = build_stack(tmp_path_factory, "loop")
    ro = Rollout(st.llm, st.processor, ZoomSettings(half_size=182, out_size=336), group_size=2,
                 prompt="vigorl_multi_turn", max_tokens_per_turn=256, response_budget=4096, guided=True, min_zooms=1)
    return st.root, st.model_dir, st.llm, st.processor, ro, st.batch


def vllm_logprobs(llm, ids):
    from vllm import SamplingParams

    o = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                     use_tqdm=False)[0]
    return torch.tensor([0.0] + [d[t].logprob for d, t in zip(o.prompt_logprobs[1:], ids[1:])])


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def test_grpo_step_and_weight_sync(stack, ray_local):
    from actors.trajectory import to_batch
    from actors.weights import load_weights, unpack
    from learner.actor import LearnerActor

    ray = ray_local
    root, model_dir, llm, proc, ro, batch = stack
    trajs = ro.play(batch, weight_version=0)
    assert len(trajs) == 4
    learner = ray.remote(num_cpus=1)(LearnerActor).remote(
        str(model_dir), LearnerConfig(lr=5e-3, kl_coef=0.01, grad_clip=1.0), str(root / "data"), len(trajs))
    fixed = proc.tokenizer.encode("<|im_start|>user\nWhere is the small red square? (120, 64)<|im_end|>\n"
                                  "<|im_start|>assistant\n<think> It is at (12, 30). </think>",
                                  add_special_tokens=False)
    learner_lp = lambda: ray.get(learner.sequence_logprobs.remote(fixed))  # noqa: E731

    assert (learner_lp() - vllm_logprobs(llm, fixed)).abs().max().item() < 1e-3  # same weights at v0

    metrics = ray.get(learner.train_step.remote([ray.put(to_batch(trajs[:2])), ray.put(to_batch(trajs[2:]))]))
    assert metrics["version"] == 1 and all(math.isfinite(v) for v in metrics.values())
    assert {"loss", "kl", "clip_frac_higher", "clip_frac_lower", "grad_norm", "tokens"} <= set(metrics)

    after = learner_lp()
    assert (after - vllm_logprobs(llm, fixed)).abs().max().item() > 1e-2, "the step did not change the policy"

    version, packed = ray.get(learner.publish.remote())
    assert version == 1
    load_weights(llm, unpack(packed))
    assert (after - vllm_logprobs(llm, fixed)).abs().max().item() < 1e-3

    # image requests still work after the reload (encoder cache reset), tagged with the new version
    again = ro.play(batch[:1], weight_version=version)
    assert len(again) == 2 and all(t.weight_version == 1 for t in again)


def test_learner_drops_or_corrects_stale_samples(stack, ray_local):
    """Samples older than max_staleness versions: dropped (counted) or trained with truncated IS weights."""
    from actors.trajectory import to_batch
    from learner.actor import LearnerActor

    ray = ray_local
    root, model_dir, llm, proc, ro, batch = stack
    trajs = ro.play(batch[:1], weight_version=0)
    learner = ray.remote(num_cpus=1)(LearnerActor).remote(str(model_dir), LearnerConfig(kl_coef=0.0),
                                                           str(root / "data"), len(trajs))
    ref = ray.put(to_batch(trajs))
    first = ray.get(learner.train_step.remote([ref], 0))  # version 0: fresh
    assert first["trained"] == 2 and first["dropped_stale"] == 0 and first["staleness_max"] == 0
    dropped = ray.get(learner.train_step.remote([ref], 0, "drop"))  # learner at v1, samples at v0
    assert dropped["dropped_stale"] == 2 and dropped["trained"] == 0 and dropped["version"] == 1
    tis = ray.get(learner.train_step.remote([ref], 0, "tis", 2.0))
    assert tis["tis_corrected"] == 2 and tis["trained"] == 2 and tis["version"] == 2
    kept = ray.get(learner.train_step.remote([ref], 5))  # within a looser bound: used as they are
    assert kept["trained"] == 2 and kept["staleness_max"] == 2
