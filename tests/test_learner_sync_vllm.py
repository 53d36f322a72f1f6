"""The loop's core on the real stack: vLLM rollouts (this process) -> Arrow batches through the Ray object
store -> a DeepSpeed GRPO step in a Ray learner actor -> versioned weights back into vLLM. After the sync
the learner's logprobs of a fixed sequence match vLLM's within 1e-3 (fp32); without the sync they differ."""

import math

import pytest
import torch

from actors.zoom import ZoomSettings
from configs import schema as config


def LearnerConfig(**kw):  # noqa: N802 - the learner config with the unset official fields filled explicitly
    return config.LearnerConfig(**({"grad_clip": 1.0, "warmup_ratio": 0.0, "mini_batch_size": 0} | kw))


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
    from actors.shm import WeightReader
    from actors.trajectory import to_batch
    from actors.weights import load_weights
    from learner.actor import LearnerActor

    ray = ray_local
    root, model_dir, llm, proc, ro, batch = stack
    trajs = ro.play(batch, weight_version=0)
    assert len(trajs) == 4 and all(any(t.loss_mask) for t in trajs)
    # The step must move the policy whatever rewards were sampled: fixed advantages, not a hoped-for spread
    for t, a in zip(trajs, (1.0, -1.0, 1.0, -1.0)):
        t.advantage = a
    learner = ray.remote(num_cpus=1)(LearnerActor).remote(
        str(model_dir), LearnerConfig(lr=5e-3, kl_coef=0.01, grad_clip=1.0, mini_batch_size=0), str(root / "data"))
    fixed = proc.tokenizer.encode("<|im_start|>user\nWhere is the small red square? (120, 64)<|im_end|>\n"
                                  "<|im_start|>assistant\n<think> It is at (12, 30). </think>",
                                  add_special_tokens=False)
    learner_lp = lambda: ray.get(learner.sequence_logprobs.remote(fixed))  # noqa: E731

    assert (learner_lp() - vllm_logprobs(llm, fixed)).abs().max().item() < 1e-3  # same weights at v0

    metrics = ray.get(learner.train_step.remote([ray.put(to_batch(trajs[:2])), ray.put(to_batch(trajs[2:]))]))
    assert metrics["version"] == 1 and metrics["learner/updates"] == 1
    assert all(math.isfinite(v) for v in metrics.values())
    assert {"loss", "kl", "clip_frac_higher", "clip_frac_lower", "grad_norm", "tokens", "logp_mismatch"} <= set(metrics)
    # one mini-batch: every micro-batch ran before the only update, so the clipped ratio is exactly 1 -- the
    # recomputed old log-probs are the learner's own log-probs before the first update
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-5 and abs(metrics["approx_kl"]) < 1e-6
    assert metrics["clip_frac_higher"] == 0.0 and metrics["clip_frac_lower"] == 0.0
    # (logp_mismatch is large here: guided decoding reports the grammar-masked distribution's log-probs;
    # test_mismatch_and_one_step_per_minibatch measures it on unconstrained samples)

    after = learner_lp()
    assert (after - vllm_logprobs(llm, fixed)).abs().max().item() > 1e-2, "the step did not change the policy"

    # the learner's shared-memory file, as a rollout actor on its node reads it (actors.shm)
    version, where = ray.get(learner.publish.remote(shm=True, store=False))
    assert version == 1 and set(where) == {"shm", "node"}
    reader = WeightReader()
    assert reader.read(where["shm"], lambda state: load_weights(llm, state)) == 1
    assert reader.views and not any(".visual." in n for n in reader.views)  # frozen: kept by the engine
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
                                                           str(root / "data"))
    ref = ray.put(to_batch(trajs))
    first = ray.get(learner.train_step.remote([ref], 0))  # version 0: fresh
    assert first["trained"] == 2 and first["dropped_stale"] == 0 and first["staleness_max"] == 0
    dropped = ray.get(learner.train_step.remote([ref], 0, "drop"))  # learner at v1, samples at v0
    # nothing left to train: the rollout step still takes its one (zero-gradient) update and a version
    assert dropped["dropped_stale"] == 2 and dropped["trained"] == 0 and dropped["version"] == 2
    assert dropped["learner/updates"] == 1 and dropped["optimizer_steps"] == 2
    tis = ray.get(learner.train_step.remote([ref], 0, "tis", 2.0))  # learner at v2, samples at v0
    assert tis["tis_corrected"] == 2 and tis["trained"] == 2 and tis["version"] == 3
    kept = ray.get(learner.train_step.remote([ref], 5))  # within a looser bound: used as they are
    assert kept["trained"] == 2 and kept["staleness_max"] == 3


def single_turn_trajectories(stack, version: int, n_prompts: int = 2):
    """Unconstrained single-turn episodes cut at 48 tokens: trained as the released single-turn code
    trains length-cut responses, with vLLM's real behaviour log-probs."""
    from actors.rollout import Rollout

    root, model_dir, llm, proc, _, batch = stack
    ro = Rollout(llm, proc, ZoomSettings(), group_size=2, prompt="vigorl_single_turn", mode="single_turn",
                 response_budget=48)
    trajs = ro.play(batch[:n_prompts], weight_version=version)
    assert all(t.end in ("length", "answer") and sum(t.loss_mask) > 0 for t in trajs)
    for k, t in enumerate(trajs):  # a certain gradient signal
        t.advantage = 1.0 if k % 2 else -1.0
    return trajs


def test_mismatch_and_one_step_per_minibatch(stack, ray_local):
    """Mini-batches of 2 sequences over 4 trajectories: 2 optimizer steps per rollout step, the weights
    published once (version + 1); with 2 of them stale and dropped, still one step per mini-batch, and the
    optimizer's step counter advances exactly by the updates reported (no step straddles two calls)."""
    from actors.trajectory import to_batch
    from actors.weights import load_weights, unpack
    from learner.actor import LearnerActor

    ray = ray_local
    root, model_dir, llm = stack[0], stack[1], stack[2]
    learner = ray.remote(num_cpus=1)(LearnerActor).remote(
        str(model_dir), LearnerConfig(kl_coef=0.01, mini_batch_size=2, micro_batch_size=1), str(root / "data"))
    version, where = ray.get(learner.publish.remote())  # this module's engine may hold another test's weights
    load_weights(llm, unpack(where["packed"]))
    trajs = single_turn_trajectories(stack, version=version)
    first = ray.get(learner.train_step.remote([ray.put(to_batch(trajs))]))
    assert first["learner/updates"] == 2 and first["version"] == 1 and first["optimizer_steps"] == 2
    # the engine sampled these under the learner's weights: per-token log-probs agree (fp32, CPU)
    assert first["logp_mismatch"] < 5e-3
    for t in trajs[:2]:
        t.weight_version = -5  # far behind: dropped
    second = ray.get(learner.train_step.remote([ray.put(to_batch(trajs))], 1, "drop"))
    assert second["dropped_stale"] == 2 and second["trained"] == 2
    assert second["learner/updates"] == 2 and second["optimizer_steps"] == 4 and second["version"] == 2


def test_vstar_budget_cut_episodes_train(stack, ray_local):
    """V* multi-turn crops (672 px) with the 2,048-token budget: episodes that keep zooming are cut
    (no gradient, never forwarded), episodes that answer after one crop train -- in one rollout step,
    without error."""
    from actors.rollout import Rollout
    from actors.trajectory import to_batch
    from learner.actor import LearnerActor

    ray = ray_local
    root, model_dir, llm, proc, _, batch = stack
    kw = dict(group_size=2, prompt="vigorl_multi_turn", max_tokens_per_turn=256, response_budget=2048, guided=True)
    cut = Rollout(llm, proc, ZoomSettings(half_size=182, out_size=672), min_zooms=4, **kw).play(batch, 0)
    assert all(sum(t.loss_mask) == 0 for t in cut)
    # one crop, then the answer is forced (image budget 2): always inside the token budget
    answered = Rollout(llm, proc, ZoomSettings(half_size=182, out_size=672, max_images=2), min_zooms=1,
                       **kw).play(batch, 0)
    assert all(t.end == "answer" and sum(t.loss_mask) > 0 for t in answered)
    learner = ray.remote(num_cpus=1)(LearnerActor).remote(str(model_dir), LearnerConfig(mini_batch_size=4),
                                                           str(root / "data"))
    m = ray.get(learner.train_step.remote([ray.put(to_batch(cut + answered))]))
    assert m["no_gradient"] == len(cut) and m["trained"] == len(answered) and m["learner/updates"] == 2
    assert math.isfinite(m["loss"]) and m["tokens"] == sum(sum(t.loss_mask) for t in answered)


def test_vision_cache_and_first_minibatch_old_logprobs_change_nothing(stack, ray_local):
    """The vision tower run once per image per step (`learner.vision_cache`) and the first mini-batch's old
    log-probs taken from its own forward give the update of the uncached path: same metrics, same weights.
    Multi-turn episodes (full image + crops), 2 mini-batches (one fresh, one recomputed), 2 PPO epochs."""
    from actors.trajectory import to_batch
    from actors.weights import unpack
    from learner.actor import LearnerActor

    ray = ray_local
    root, model_dir, _, _, ro, batch = stack
    trajs = ro.play(batch, weight_version=0)
    assert sum(len(t.images) for t in trajs) > len(trajs)  # crops too
    for k, t in enumerate(trajs):
        t.advantage = 1.0 if k % 2 else -1.0
    results = []
    for cache in (True, False):
        cfg = LearnerConfig(lr=5e-3, kl_coef=0.01, mini_batch_size=2, micro_batch_size=2, ppo_epochs=2,
                            vision_cache=cache)
        learner = ray.remote(num_cpus=1)(LearnerActor).remote(str(model_dir), cfg, str(root / "data"))
        m = ray.get(learner.train_step.remote([ray.put(to_batch(trajs))]))
        _, where = ray.get(learner.publish.remote())
        results.append((m, {k: v.clone() for k, v in unpack(where["packed"]).items()}))
        ray.kill(learner)
    (cached, w_cached), (plain, w_plain) = results
    assert cached["learner/updates"] == plain["learner/updates"] == 4
    for key in ("loss", "kl", "tokens", "approx_kl", "logp_mismatch"):
        assert cached[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    assert max((w_cached[k] - w_plain[k]).abs().max().item() for k in w_plain) < 1e-5


def test_zero3_step_and_weights_gathered_group_by_group(stack, ray_local):
    """ZeRO-3 (one rank): the exported weights are the model's own, gathered 50 KiB of parameters at a time
    (several groups), then a GRPO step (the vision tower runs inside the engine's forwards there)."""
    from safetensors.torch import load_file

    from actors.trajectory import to_batch
    from actors.weights import unpack
    from learner.actor import LearnerActor

    ray = ray_local
    root, model_dir = stack[0], stack[1]
    learner = ray.remote(num_cpus=1)(LearnerActor).remote(
        str(model_dir), LearnerConfig(kl_coef=0.01, zero_stage=3, zero3_gather_mb=0.05), str(root / "data"))
    _, where = ray.get(learner.publish.remote())
    sent = unpack(where["packed"])
    disk = load_file(model_dir / "model.safetensors")
    assert sent and not any(".visual." in k for k in sent)  # trained weights only
    for k, v in sent.items():  # the file keeps transformers' older names
        assert torch.equal(v, disk[k.replace("model.language_model.", "model.")]), k
    m = ray.get(learner.train_step.remote([ray.put(to_batch(single_turn_trajectories(stack, version=0)))]))
    assert math.isfinite(m["loss"]) and m["version"] == 1
    ray.kill(learner)
