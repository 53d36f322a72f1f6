"""Value checks, run by `configs.load.load` on every config (all before Ray starts).

Choice fields are Enums (OmegaConf refuses other values); here: number ranges (`RULES`), the few choices that
include "" (not an Enum member name), registry names and rules across fields. A value that cannot run
(a negative staleness trains nothing, a negative checkpoint_every checkpoints every step) is refused
with its key, not discovered after the engines loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from configs.base import ConfigError, did_you_mean
from configs.fields import field_docs, shown
from configs.jobs import DemoConfig, EvalConfig, MCTSJobConfig, SFTConfig, TeacherConfig
from configs.placement import nccl_sync
from configs.schema import (ClusterConfig, DataConfig, LearnerConfig, LoopConfig, ModelConfig, RolloutConfig,
                            SamplingConfig, TrackingConfig, TrainConfig, ZoomConfig)
from data_gen.mcts import MCTSConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """lo <= v <= hi (`lo_open` / `hi_open`: strict); None: unbounded. Also refuses NaN and infinities."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: Any) -> bool:
        return (math.isfinite(v) and (self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
        return (f"must be in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                f"{')' if self.hi_open else ']'}")


@dataclass(frozen=True)
class OneOf:
    """A choice that includes "" (which cannot be an Enum member's name)."""

    values: tuple

    def ok(self, v: Any) -> bool:
        return v in self.values

    def __str__(self) -> str:
        return f"must be one of {', '.join(repr(v) for v in self.values)}"


GE0, GE1 = Range(0), Range(1)  # counts where 0 means none / off, and counts that need one
GT0 = Range(0, lo_open=True)  # rates, timeouts, sizes
UNIT = Range(0, 1)  # probabilities and fractions
TOP_P = Range(0, 1, lo_open=True)  # nucleus mass: 0 keeps nothing

# Every int / float field of the command schemas has a rule (tests/test_config_values.py checks it);
# null (Optional fields left for `official_defaults`) is always accepted.
RULES: dict[type, dict[str, Any]] = {
    ModelConfig: dict(min_pixels=GE1, max_pixels=GE1, max_model_len=GE1),
    SamplingConfig: dict(temperature=GE0, top_p=TOP_P, max_tokens_per_turn=GE1, seed=GE0),
    ZoomConfig: dict(half_size=GE1, out_size=GE1, max_images=GE1),
    RolloutConfig: dict(group_size=GE1, response_budget=GE1, min_zooms=GE0, forced_answer_temperature=GE0),
    # grad_clip 0: DeepSpeed's gradient_clipping 0 clips nothing; clip_low < 1: log(1 - clip_low) in the loss;
    # dual_clip > 1: the dual-clip bound (Ye et al. 2020; EasyR1 asserts clip_ratio_dual > 1)
    LearnerConfig: dict(lr=GT0, weight_decay=GE0, warmup_ratio=UNIT, grad_clip=GE0, mini_batch_size=GE0,
                        micro_batch_size=GE1, logprob_micro_batch_size=GE1, ppo_epochs=GE1, kl_coef=GE0,
                        clip_low=Range(0, 1, hi_open=True), clip_high=GE0, dual_clip=Range(1, lo_open=True),
                        zero_stage=Range(0, 3), zero3_gather_mb=GT0, sft_vision_cache_mb=GE0),
    # restart_attempts 0 would start no replacement at all (the slot would stay dead)
    ClusterConfig: dict(rollout_actors=GE1, rollout_cpus=GE0, rollout_gpus=GE0, tensor_parallel_size=GE1,
                        learner_ranks=GE1, learner_cpus=GE0, learner_gpus=GE0, sync_timeout_s=GT0,
                        rollout_timeout_s=GE0, start_timeout_s=GT0, learner_timeout_s=GT0, restart_attempts=GE1,
                        restart_backoff_s=GE0, learner_restart_attempts=GE0,
                        gpu_memory_utilization=Range(0, 1, lo_open=True), learner_threads=GE0,
                        rollout_threads=GE0),
    LoopConfig: dict(steps=GE1, prompts_per_step=GE1, max_staleness=GE0, tis_cap=GT0, max_queue=GE1, seed=GE0,
                     learner_delay_s=GE0),
    TrackingConfig: dict(picture_every=GE0, checkpoint_every=GE0, resume_every=GE0, keep_resume=GE1, flush_timeout_s=GE0),
    TrainConfig: dict(make_tiny=OneOf(("", "small", "qwen")), make_data=GE0),
    TeacherConfig: dict(error_rate=UNIT, answer_rate=UNIT, tensor_parallel_size=GE1, gpus=GE0, cpus=GE0,
                        temperature=GE0, top_p=TOP_P, max_tokens=GE1, max_model_len=GE1, min_thoughts_low=GE0,
                        min_thoughts_high=GE0),
    MCTSConfig: dict(simulations=GE1, c=GE0, children=GE1, rollouts_per_child=GE1, rollout_steps=GE1,
                     max_depth=GE1),
    MCTSJobConfig: dict(workers=GE1, worker_cpus=GE0, restart_attempts=GE1, restart_backoff_s=GE0, question_timeout_s=GT0, limit=GE0, seed=GE0, make_data=GE0,
                        crash_after=GE0),
    SFTConfig: dict(batch_size=GE1, epochs=GE1, max_steps=GE0, cutoff_len=GE1, eval_every=GE0, seed=GE0,
                    learner_cpus=GE0, learner_gpus=GE0),
    DemoConfig: dict(n_prompts=GE1, row=GE0),
    EvalConfig: dict(batch=GE1, limit=GE0, gallery=GE0, crash_after=GE0),
}


def _registry(name: Any, registry) -> str | None:
    if name in registry:
        return None
    return f"unknown name {str(name)!r}{did_you_mean(name, registry)}; valid: {', '.join(sorted(registry))}"


def _across(obj: Any) -> list[tuple[str, str]]:
    """(field, problem) for the rules that need more than one field, or a registry, of `obj`."""
    import rewards

    out: list[tuple[str, str]] = []
    if isinstance(obj, ModelConfig) and obj.max_pixels is not None and obj.max_pixels < obj.min_pixels:
        out.append(("max_pixels", f"must be >= min_pixels ({obj.min_pixels})"))
    if isinstance(obj, DataConfig):
        out += [(k, why) for k, reg in (("task", rewards.TASKS), ("mode", rewards.MODES))
                if (why := _registry(getattr(obj, k), reg))]
    if isinstance(obj, TeacherConfig):
        if obj.min_thoughts_high < obj.min_thoughts_low:
            out.append(("min_thoughts_high", f"must be >= min_thoughts_low ({obj.min_thoughts_low})"))
        if obj.kind == "vllm" and not obj.model_path:
            out.append(("model_path", "teacher.kind=vllm needs the teacher model (a local dir or Hub id)"))
    if isinstance(obj, (EvalConfig, TrainConfig)) and obj.benchmark:
        from data_gen.benchmarks import LOADERS

        if why := _registry(obj.benchmark, LOADERS):
            out.append(("benchmark", why + " (or \"\": data.path's prompts.parquet)"))
    if isinstance(obj, TrainConfig) and obj.rollout.group_size is not None and obj.rollout.group_size < 2:
        out.append(("rollout.group_size", "must be >= 2 in training: GRPO's advantage is a reward minus its "
                                          "group's mean, so a group of one has nothing to learn from"))
    if isinstance(obj, (TrainConfig, EvalConfig)):
        try:
            nccl_sync(obj.cluster)  # GPU placements that cannot run
        except ValueError as e:
            out.append(("cluster", str(e)))
    return out


def problems(obj: Any, prefix: str = "") -> list[str]:
    """Every bad value in the config tree `obj`, one line each, naming its dotted key."""
    found = []
    docs = field_docs(type(obj))
    rules = RULES.get(type(obj), {})
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            found += problems(v, f"{prefix}{f.name}.")
            continue
        rule = rules.get(f.name)
        if rule is None or v is None:  # null: left for `official_defaults`
            continue
        if isinstance(rule, Range) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            continue  # a wrong type is OmegaConf's error, raised before
        if not rule.ok(v):
            doc = f" — {f.name}: {docs[f.name]}" if docs.get(f.name) else ""
            found.append(f"bad value for config key '{prefix}{f.name}': {shown(v)} ({rule}){doc}")
    for key, why in _across(obj):
        found.append(why if key == "cluster" else f"bad value for config key '{prefix}{key}': {why}")
    return found


def validate(obj: T) -> T:
    """Refuse `obj` (ConfigError listing every bad value by key) unless all its values can run; returns it."""
    if found := problems(obj):
        raise ConfigError("config: " + found[0] if len(found) == 1
                          else "config: bad values:\n  " + "\n  ".join(found))
    return obj
