"""`make bench` stage 7: `vigorl sft` against TRL's `SFTTrainer`, side by side in one run on this machine.

The same model (the learning proof's architecture: the `small` tiny Qwen2.5-VL, small vocabulary, randomly
initialised), the same multi-turn zoom dialogues (the learning proof's own: scripted MCTS -> linearize ->
to-multiturn, `bench.learn.sft_dialogues`), the loss on assistant tokens only, a frozen vision tower, fp32,
32 examples per optimizer step in micro-batches of 8, AdamW at lr 5e-4 (cosine, warmup 0.03), gradient clipping
at 1.0, two torch threads each. vigorl: `vigorl sft --config configs/learn_sft.yaml` (a DeepSpeed learner in a
Ray actor; length-bucketed micro-batches and the vision tower's outputs kept for the run, which change no
number). TRL: `SFTTrainer` (`bench/sft_trl.py`, in its own interpreter). Throughput is examples/s over the
steps after the first (start-up and the first step are reported apart). TRL is a bench-only extra:
`pip install -e .[bench]`.

Usage: python -m bench.sft [--out runs/bench] [--steps 6]        (make bench runs it as stage 7)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import ROOT, child_result, metric_series, print_settings, run_id, sqlite_uri, vigorl

QUESTIONS, SEED = 24, 5  # MCTS questions of the dialogues (~8 chains each), their seed (not the held-out set's 3)
BATCH, MICRO, LR, WARMUP, CLIP, THREADS = 32, 8, 5e-4, 0.03, 1.0, 2  # configs/learn_sft.yaml's, two cores


def setup(out: Path) -> tuple[Path, Path]:
    """(model dir, dialogue dir) under `out`, made once."""
    from bench.learn import TASK, sft_dialogues, stage_runner
    from data_gen.synthetic import ensure_dataset
    from data_gen.tiny_model import ensure_tiny_model

    work = out / "sft_bench"
    model = ensure_tiny_model(work / "model", vocab="small", size="small", seed=0)
    if not (work / "sft_data_mt" / "train.jsonl").is_file():
        (work / "logs").mkdir(parents=True, exist_ok=True)
        questions = ensure_dataset(TASK, QUESTIONS, seed=SEED, out=work / "questions", progress=False)
        sft_dialogues(stage_runner(work, {}, {}, {}), work, questions, 0, False, 8, True)
    return Path(model), work / "sft_data_mt"


def settings() -> dict:
    """What vigorl's side runs with (configs/learn_sft.yaml and run_vigorl's overrides), keyed as
    bench/sft_trl.py's settings: printed side by side next to the ratio."""
    import torch
    import transformers

    return {"trl": "-", "transformers": transformers.__version__, "torch": torch.__version__, "threads": THREADS, "batch": BATCH, "micro_batch": MICRO, "gradient_accumulation": BATCH // MICRO,
            "lr": LR, "schedule": "cosine", "warmup": WARMUP, "grad_clip": CLIP, "optim": "torch AdamW (DeepSpeed)",
            "weight_decay": 0.01, "dtype": "float32", "vision_tower": "frozen", "gradient_checkpointing": False,
            "packing": False, "padding_free": False, "max_length": "cutoff_len 8192 (longer rows are errors)",
            "loss": "assistant tokens, each example's token mean averaged over the step",
            "micro_batches": "length buckets (learner.length_buckets)",
            "vision_cache": "the tower's output kept for the run (learner.sft_vision_cache_mb)",
            "collation": "tokenised once before training; images loaded and processed in the step"}


def run_vigorl(model: Path, data: Path, out: Path, steps: int) -> dict:
    """`vigorl sft` (configs/learn_sft.yaml) for `steps` steps; its step times from its MLflow run (`sft/step_s`)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = vigorl("sft", "--config", ROOT / "configs/learn_sft.yaml", f"out={out}", f"model.path={model}", f"data={data}",
                 f"batch_size={BATCH}", f"learner.micro_batch_size={MICRO}", f"learner.lr={LR}",
                 f"learner.warmup_ratio={WARMUP}", f"learner.grad_clip={CLIP}", "epochs=100", f"max_steps={steps}",
                 f"learner_cpus={THREADS}", "tracking.experiment=bench-sft", log=out.parent / f"{out.name}.log", echo=False,
                 timeout=3600)
    wall, rid = time.perf_counter() - t0, run_id(log)
    m = metric_series(sqlite_uri(out), rid, ("sft/step_s", "sft/examples"))
    step_s, examples = m["sft/step_s"], m["sft/examples"]  # an epoch's last step may be short
    return {"examples_per_s": sum(examples[1:]) / sum(step_s[1:]), "first_step_s": step_s[0], "step_s": step_s,
            "examples_per_step": examples, "outside_steps_s": wall - sum(step_s), "run_id": rid}


def side_by_side(out: Path, steps: int) -> dict:
    model, data = setup(out)
    v = run_vigorl(model, data, out / "sft_vigorl", steps)
    t = child_result("bench.sft_trl", ["--model", str(model), "--data", str(data), "--out", str(out / "sft_trl"),
                                       "--steps", str(steps)], "TRL", "the TRL SFT run", timeout=3600)
    ratio = v["examples_per_s"] / t["examples_per_s"]
    timed = len(t["step_s"]) - 1  # TRL's rate without its in-step collation (vigorl tokenises before training)
    bare = sum(t["samples_per_step"][1:]) / (sum(t["step_s"][1:]) - t["collate_s"] * timed)
    print(f"[7] SFT vs TRL: vigorl {v['examples_per_s']:.2f} vs TRL {t['examples_per_s']:.2f} examples/s -> "
          f"{ratio:.2f}x (goal >= 1.5x); {v['examples_per_s'] / bare:.2f}x against TRL without its collation "
          f"({bare:.2f} examples/s); first step {v['first_step_s']:.1f} vs {t['first_step_s']:.1f} s", flush=True)
    mine = settings()
    print_settings("7", mine, t["settings"], skip=("side", "parity"))
    print(f"[7]   TRL's collation inside its steps: {t['collate_s']:.2f} s per step; its tokens against vigorl's "
          f"encoding: {t['settings']['parity']}", flush=True)
    return {"ratio": ratio, "vigorl": v | {"settings": mine}, "trl": t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per system (the first is warm-up)")
    a = p.parse_args()
    res = side_by_side(Path(a.out).resolve(), a.steps)
    print("RESULT " + json.dumps({"sft_trl_ratio": res["ratio"], "sft_trl_detail": res}), flush=True)


if __name__ == "__main__":
    main()
