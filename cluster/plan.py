"""`vigorl plan`: GPU memory of a recipe + layout + model, per role and per GPU, before anything launches.

The estimate reads the model's real parameter shapes (a meta-device model built from its config.json: no
weights are loaded) and the recipe's learner and engine settings. `vigorl train` runs the same plan before
Ray starts and refuses a GPU layout that cannot fit (override: `cluster.skip_memory_check=true`).

Learner rank, bf16 on GPU (P parameters, T trainable, N = learner ranks, ZeRO stage s; GiB = 2**30 B):
  weights      2P          (s = 3: 2P / N)
  reference    2P          when kl_coef > 0: a full frozen copy per rank (learner/trainer.py)
  master       4T / N      fp32 copy of the trained parameters (s = 0: 4T)
  optimizer    8T / N      AdamW moments, fp32 (s = 0: 8T)
  gradients    2T (s <= 1) or 4T / N (s >= 2: fp32 partitions) + DeepSpeed's reduce buckets (~1 GiB)
               (learner.offload_optimizer: master, moments and the fp32 gradient partitions live in CPU
               memory, ZeRO-Offload; the buckets stay)
  activations  per layer and token, bf16: 8h + 2·kv + 4i elements saved (q, k, v, attention output,
               norms and residuals ~8h; the SwiGLU's gate, up, act and product 4i; flash/SDPA attention:
               no S² term), over b·S tokens (b = micro_batch_size, S = the longest sequence); with gradient
               checkpointing one h per layer and token plus one layer's full set during recompute
  logits       the scored columns only (`logits_to_keep`): b·K·V·10 B (bf16 logits, their fp32 copy,
               the fp32 log-softmax), K = response_budget; the no-grad old/ref recompute holds
               logprob_micro_batch_size·K·V·10 B the same way
  peak = weights + reference + master + optimizer + gradients + max(train activations + train logits,
         recompute logits) + CUDA context (~1.5 GiB)
S = min(max_model_len, image tokens at max_pixels + 512 text tokens + response_budget).

Rollout engine (vLLM): it reserves gpu_memory_utilization of its GPU; inside it needs the weights (2P / TP),
a profile of activations (~2 GiB) and the KV cache of one max_model_len sequence (2·layers·kv·head_dim·2 B
per token) — or it refuses to start. A learner and an engine sharing a GPU (fractional learner_gpus and
rollout_gpus) must fit together.

These are estimates (the formulas above, not a measurement); `bench.gpu_check`'s peak-memory figure is the
check where a GPU is lent (the results notebook records it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from configs.placement import shares_gpu

GiB = float(2**30)
CUDA_CONTEXT_GIB = 1.5  # CUDA context + allocator fragmentation per process, measured order on H100/H200
BUCKETS_GIB = 1.0  # DeepSpeed reduce / allgather buckets (5e8 elements, bf16)
ENGINE_ACTIVATIONS_GIB = 2.0  # vLLM's profile run of activations at its default batch
TEXT_TOKENS = 512  # system prompt + question, over the image's tokens


class PlanError(ValueError):
    """A GPU layout whose memory plan does not fit (raised before Ray starts)."""


@dataclass
class Shapes:
    """What the estimate needs of a Qwen2.5-VL checkpoint, read off a meta-device model."""

    params: int  # all parameters (a tied embedding counted once)
    vision: int  # the vision tower's
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # num_key_value_heads * head_dim
    vocab: int
    tied: bool  # lm_head shares the embedding (Qwen2.5-VL-3B)


def model_shapes(model: str | Path) -> Shapes:
    """Shapes of the model at `model` (a dir with config.json, or a Hub id in the local HF cache), from a
    meta-device model built from its config: real parameter counts, no weights read."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    cfg = AutoConfig.from_pretrained(config_dir(model))
    with torch.device("meta"):
        m = Qwen2_5_VLForConditionalGeneration._from_config(cfg)
    t = cfg.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return Shapes(params=sum(p.numel() for p in m.parameters()),
                  vision=sum(p.numel() for p in m.model.visual.parameters()), hidden=t.hidden_size,
                  intermediate=t.intermediate_size, layers=t.num_hidden_layers, kv_dim=t.num_key_value_heads * head_dim,
                  vocab=t.vocab_size, tied=m.lm_head.weight is m.model.language_model.embed_tokens.weight)


def config_dir(model: str | Path) -> Path:
    """The dir holding `model`'s config.json: the path itself, or a Hub id's snapshot in the local cache."""
    p = Path(model)
    if (p / "config.json").is_file():
        return p
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(str(model), "config.json") if "/" in str(model) and not p.exists() else None
    if isinstance(hit, str):
        return Path(hit).parent
    raise FileNotFoundError(f"model {model}: no config.json there, and not a Hub id in the local HF cache "
                            "(`huggingface-cli download ID config.json` fetches just the config)")


@dataclass
class Role:
    name: str  # "learner rank" | "rollout engine"
    gpus: float  # GPUs (or share of one) each instance is placed on
    count: int  # instances
    parts: dict[str, float] = field(default_factory=dict)  # GiB per instance
    reserved: float = 0.0  # GiB the process claims on its GPU (vLLM: gpu_memory_utilization x memory)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass
class Plan:
    gpu_gb: float  # memory of one GPU, GiB
    roles: list[Role]
    per_gpu: dict[str, float]  # GPU kind ("learner", "rollout", "shared") -> GiB used on one such GPU
    problems: list[str]  # why it does not fit ([] = fits)
    knobs: list[str] = field(default_factory=list)  # settings that would make it fit, each checked
    fits_with_knobs: bool = False  # the knobs, applied together, make it fit

    @property
    def fits(self) -> bool:
        return not self.problems


def seq_len(cfg) -> int:
    """The longest training sequence the plan assumes (module docstring)."""
    image = (cfg.model.max_pixels or 4_194_304) // (28 * 28)
    return min(cfg.model.max_model_len, image + TEXT_TOKENS + cfg.rollout.response_budget)


def learner_parts(s: Shapes, cfg) -> dict[str, float]:
    """GiB per learner rank by part (module docstring)."""
    lc, n = cfg.learner, max(1, cfg.cluster.learner_ranks)
    stage = lc.zero_stage
    p, t = s.params, s.params - (s.vision if lc.freeze_vision else 0)
    b, k, S = lc.micro_batch_size, cfg.rollout.response_budget, seq_len(cfg)
    per_token_layer = 2 * (8 * s.hidden + 2 * s.kv_dim + 4 * s.intermediate)  # bytes, bf16
    if lc.gradient_checkpointing:
        act = b * S * (2 * s.hidden * s.layers + per_token_layer)
    else:
        act = b * S * per_token_layer * s.layers
    on_gpu = 0.0 if lc.offload_optimizer else 1.0
    return {
        "weights": 2 * p / (n if stage == 3 else 1) / GiB,
        "reference": (2 * p if lc.kl_coef > 0 else 0) / GiB,
        "master": on_gpu * 4 * t / (n if stage >= 1 else 1) / GiB,
        "optimizer": on_gpu * 8 * t / (n if stage >= 1 else 1) / GiB,
        "gradients": on_gpu * (2 * t if stage <= 1 else 4 * t / n) / GiB + BUCKETS_GIB,
        "activations": (act + b * k * s.vocab * 10) / GiB,  # + the trained columns' logits
        "logprob recompute": lc.logprob_micro_batch_size * k * s.vocab * 10 / GiB,
        "cuda context": CUDA_CONTEXT_GIB,
    }


def learner_peak(parts: dict[str, float]) -> float:
    """The two passes do not overlap: training activations and the recompute's logits take turns."""
    return sum(v for k, v in parts.items() if k not in ("activations", "logprob recompute")) + max(
        parts["activations"], parts["logprob recompute"])


def engine_parts(s: Shapes, cfg) -> dict[str, float]:
    tp = max(1, cfg.cluster.tensor_parallel_size)
    kv = 2 * s.layers * s.kv_dim * 2 * cfg.model.max_model_len / tp
    return {"weights": 2 * s.params / tp / GiB, "activations": ENGINE_ACTIVATIONS_GIB, "kv cache (one sequence)": kv / GiB,
            "cuda context": CUDA_CONTEXT_GIB}


def make_plan(cfg, gpu_gb: float, shapes: Shapes | None = None) -> Plan:
    """The plan of `cfg` (a TrainConfig with official defaults applied) on GPUs of `gpu_gb` GiB."""
    s = shapes or model_shapes(cfg.model.path)
    c = cfg.cluster
    lp, ep = learner_parts(s, cfg), engine_parts(s, cfg)
    learner = Role("learner rank", c.learner_gpus, c.learner_ranks, lp)
    engine = Role("rollout engine", c.rollout_gpus, c.rollout_actors, ep, reserved=c.gpu_memory_utilization * gpu_gb)
    peak, need = learner_peak(lp), sum(ep.values())
    problems, per_gpu = [], {}
    if 0 < need and engine.reserved < need and c.rollout_gpus > 0:
        problems.append(f"rollout engine needs {need:.1f} GiB (weights {ep['weights']:.1f}, KV cache of one "
                        f"{cfg.model.max_model_len}-token sequence {ep['kv cache (one sequence)']:.1f}) but "
                        f"cluster.gpu_memory_utilization={c.gpu_memory_utilization} gives it {engine.reserved:.1f} GiB")
    if shares_gpu(c):
        per_gpu["shared"] = peak + engine.reserved
        if per_gpu["shared"] > gpu_gb:
            problems.append(f"learner rank ({peak:.1f} GiB) and rollout engine ({engine.reserved:.1f} GiB reserved) "
                            f"share one {gpu_gb:.0f} GiB GPU: {per_gpu['shared']:.1f} GiB")
    else:
        if c.learner_gpus > 0:
            per_gpu["learner"] = peak / c.learner_gpus if c.learner_gpus >= 1 else peak
            if per_gpu["learner"] > gpu_gb:
                problems.append(f"learner rank needs {peak:.1f} GiB of a {gpu_gb:.0f} GiB GPU")
        if c.rollout_gpus > 0:
            per_gpu["rollout"] = engine.reserved
    return Plan(gpu_gb, [learner, engine], per_gpu, problems)


# knob -> how it changes the config; tried in this order, each on top of the ones before that helped
def _knobs(cfg) -> list[tuple[str, callable]]:
    lc = cfg.learner
    out = []
    if lc.zero_stage < 3:
        out.append(("learner.zero_stage=3", lambda c: setattr(c.learner, "zero_stage", 3)))
    if not lc.gradient_checkpointing:
        out.append(("learner.gradient_checkpointing=true", lambda c: setattr(c.learner, "gradient_checkpointing", True)))
    for k in (4, 2, 1):
        if lc.logprob_micro_batch_size > k:
            out.append((f"learner.logprob_micro_batch_size={k}",
                        lambda c, k=k: setattr(c.learner, "logprob_micro_batch_size", k)))
    if not lc.offload_optimizer:
        out.append(("learner.offload_optimizer=true", lambda c: setattr(c.learner, "offload_optimizer", True)))
    if lc.micro_batch_size > 1:  # last: it changes which tokens share a token-mean (released: 2)
        out.append(("learner.micro_batch_size=1", lambda c: setattr(c.learner, "micro_batch_size", 1)))
    return out


def with_knobs(cfg, gpu_gb: float, shapes: Shapes) -> Plan:
    """The plan, and when it does not fit, the knobs (applied cumulatively, each kept only if it lowers the
    learner's peak) that make it fit, or that get closest."""
    plan = make_plan(cfg, gpu_gb, shapes)
    if plan.fits:
        return plan
    trial, used, best = _copy(cfg), [], learner_peak(plan.roles[0].parts)
    for name, apply in _knobs(cfg):
        apply(trial)
        p = make_plan(trial, gpu_gb, shapes)
        if learner_peak(p.roles[0].parts) < best - 1e-9:
            used.append(name)
            best = learner_peak(p.roles[0].parts)
            if p.fits:
                break
    final = make_plan(trial, gpu_gb, shapes)
    c = trial.cluster
    if not final.fits and c.rollout_gpus > 0:  # vLLM's share: what its engine needs + 1 GiB, rounded up
        util = min(0.95, round((sum(final.roles[1].parts.values()) + 1.0) / gpu_gb + 0.005, 2))
        short = final.roles[1].reserved < sum(final.roles[1].parts.values())
        if short or (shares_gpu(c) and util < c.gpu_memory_utilization):  # too small, or crowding the learner
            c.gpu_memory_utilization = util
            used.append(f"cluster.gpu_memory_utilization={util:g}")
            final = make_plan(trial, gpu_gb, shapes)
    used = list({k.split("=")[0]: k for k in used}.values())  # a key tried at several values: its last
    plan.knobs = used + ([] if final.fits else [f"still {learner_peak(final.roles[0].parts):.1f} GiB per learner "
                                                "rank: more learner ranks (cluster.learner_ranks, with ZeRO-3) or "
                                                "larger GPUs"])
    plan.fits_with_knobs = final.fits
    return plan


def _copy(cfg):
    return dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner), cluster=dataclasses.replace(cfg.cluster),
                               rollout=dataclasses.replace(cfg.rollout), model=dataclasses.replace(cfg.model))


def visible_gpu_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GiB


def uses_gpus(cfg) -> bool:
    return cfg.cluster.learner_gpus > 0 or cfg.cluster.rollout_gpus > 0


def render(plan: Plan, cfg) -> str:
    """The plan as a console table: per role, GiB by part, then per GPU and the verdict."""
    c = cfg.cluster
    lines = [f"vigorl plan: {cfg.model.path} on {plan.gpu_gb:.0f} GiB GPUs; learner ZeRO-{cfg.learner.zero_stage}, "
             f"{c.learner_ranks} rank(s); {c.rollout_actors} rollout engine(s), TP {c.tensor_parallel_size}; "
             f"sequences up to {seq_len(cfg)} tokens, micro-batch {cfg.learner.micro_batch_size}, "
             f"log-prob micro-batch {cfg.learner.logprob_micro_batch_size}"]
    for r in plan.roles:
        lines.append(f"  {r.name} x{r.count} ({r.gpus:g} GPU each)")
        lines += [f"    {k:<24}{v:8.1f} GiB" for k, v in r.parts.items()]
        total = learner_peak(r.parts) if r.name == "learner rank" else r.total
        lines.append(f"    {'peak' if r.name == 'learner rank' else 'needs':<24}{total:8.1f} GiB"
                     + (f"  (reserves {r.reserved:.1f} GiB: gpu_memory_utilization)" if r.reserved else ""))
    lines += [f"  per {k} GPU: {v:.1f} of {plan.gpu_gb:.0f} GiB" for k, v in plan.per_gpu.items()]
    lines.append("  verdict: fits" if plan.fits else "  verdict: DOES NOT FIT\n" + "\n".join(
        f"    - {p}" for p in plan.problems) + ("\n  knobs that would make it fit: " + " ".join(plan.knobs)
                                                if plan.knobs else ""))
    return "\n".join(lines)


def check_before_launch(cfg) -> Plan | None:
    """`vigorl train`'s pre-launch check: on a GPU layout, the plan must fit (the visible GPUs' memory, else
    80 GiB), or the run stops before Ray starts naming the estimate and the knobs. None on CPU layouts or
    with cluster.skip_memory_check."""
    if not uses_gpus(cfg) or cfg.cluster.skip_memory_check:
        return None
    gb = visible_gpu_gb() or 80.0
    plan = with_knobs(cfg, gb, model_shapes(cfg.model.path))
    if not plan.fits:
        raise PlanError(render(plan, cfg) + "\n(cluster.skip_memory_check=true launches anyway)")
    return plan


def summary(plan: Plan) -> dict:
    return json.loads(json.dumps({"gpu_gb": plan.gpu_gb, "fits": plan.fits, "per_gpu": plan.per_gpu,
                                  "problems": plan.problems, "knobs": plan.knobs,
                                  "roles": [dataclasses.asdict(r) for r in plan.roles]}))
