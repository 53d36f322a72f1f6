"""`make learn`: the learning proof. MCTS (scripted teacher) -> linearise -> SFT -> GRPO on a small VLM,
then base, SFT and GRPO model scored on a held-out synthetic set without structured outputs. A benchmark,
never part of the tests.

    python -m bench.learn base            build (once) and cache the pretrained base VLM; prints its cost
    python -m bench.learn [--out DIR]     the pipeline from the cached base; writes DIR/results.json
    python -m bench.learn [--multi-turn] eval MODEL DATA OUT_DIR     score one model dir on one dataset
                                          (`vigorl eval`; with the zoom tool after --multi-turn)

The task is `object_colour` (data_gen.synthetic): what colour is the {shape} in a 112x112 scene of two or
three objects, four options that include the other objects' colours (chance 25 %). The base is the
`small` tiny Qwen2.5-VL pretrained on generic captions of the same kind of scenes ("The circle at (61, 50)
is red. ..."): what and where objects are, not the task, its format or its questions — as the paper
starts from a pretrained Qwen2.5-VL. Seeds: captions 100 (+1 per base stage), MCTS questions 1, RL
prompts 2, held-out 3 (never used for any training data).

Every stage is the real command (`vigorl mcts`, `linearize`, `sft`, `train`, `eval`) from a recipe in
configs/ (learn_*.yaml); evaluation plays episodes with the training rollout code (vLLM, no structured
outputs) at docs/algorithm.md §5's evaluation temperature 0.5, one sample per item.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASK = "object_colour"
BASE_VERSION = "v4"  # the cache dir; bump when the base recipe (captions, configs/learn_base.yaml) changes
SEEDS = {"captions": 100, "mcts": 1, "rl": 2, "heldout": 3}


def cache_dir() -> Path:
    root = Path(os.environ.get("VIGORL_CACHE", Path.home() / ".cache" / "vigorl")).expanduser()
    return root / f"learn-base-{BASE_VERSION}"


# ---- the base model: captions pretraining ---------------------------------------------------------------

def caption_rows(n: int, seed: int, out: Path) -> int:
    """`n` generic captions of object scenes as sharegpt rows in OUT/{train,val}.jsonl (val: 2 %), images
    in OUT/images. What and where every object is, in random order; nothing of the task's questions."""
    from data_gen.synthetic import SMALL_SCENE, object_scene, object_sentence

    (out / "images").mkdir(parents=True, exist_ok=True)
    files = {s: open(out / f"{s}.jsonl", "w") for s in ("train", "val")}
    for i in range(n):
        rng = random.Random(f"captions/{seed}/{i}")
        img, objs = object_scene(rng, SMALL_SCENE["size"], rng.randint(1, 3), SMALL_SCENE["radius"],
                                 SMALL_SCENE["apart"])
        rng.shuffle(objs)
        rel = f"images/{i:06d}.png"
        img.save(out / rel)
        text = " ".join(object_sentence(name, centre) for name, centre, _ in objs)
        row = {"messages": [{"role": "user", "content": "<image>Describe the objects in the image and where they are."},
                            {"role": "assistant", "content": text}],
               "images": [rel], "image_size": list(img.size), "question_id": f"caption-{seed}-{i}"}
        files["val" if i % 50 == 0 else "train"].write(json.dumps(row) + "\n")
    for f in files.values():
        f.close()
    return n


def build_base(n_captions: int, stages: int) -> Path:
    """The cached base model dir. Stage 0 is the random `small` model; stage k >= 1 is `vigorl sft` on
    `n_captions` fresh captions (seed 99 + k, one epoch, cosine schedule) from stage k - 1. Each finished
    stage is cached, so a longer pretraining resumes from the last one built."""
    root = cache_dir()
    final = root / f"stage-{stages}"
    if (final / "info.json").is_file():
        return final / "model"
    from data_gen.tiny_model import ensure_tiny_model

    prev = root / "stage-0"
    ensure_tiny_model(prev / "model", vocab="small", size="small", seed=0)
    for k in range(1, stages + 1):
        stage = root / f"stage-{k}"
        if (stage / "info.json").is_file():
            prev = stage
            continue
        work = stage.with_name(stage.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        caption_rows(n_captions, SEEDS["captions"] + k - 1, work / "captions")
        t1 = time.perf_counter()
        log = vigorl("sft", "--config", ROOT / "configs/learn_base.yaml", f"out={work / 'sft'}",
                     f"model.path={prev / 'model'}", f"data={work / 'captions'}", log=work / "sft.log")
        shutil.move(work / "sft" / "model", work / "model")
        shutil.rmtree(work / "captions")  # regenerated exactly from the seed when needed
        info = {"stage": k, "captions": n_captions, "data_s": round(t1 - t0, 1),
                "sft_s": round(time.perf_counter() - t1, 1), "sft_run_id": run_id(log),
                "tracking_uri": f"sqlite:///{stage / 'sft' / 'mlflow.db'}"}
        (work / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(stage, ignore_errors=True)
        work.rename(stage)
        print(f"[learn] base stage {k}/{stages} built in {info['data_s'] + info['sft_s']:.0f} s (cached): {stage}",
              flush=True)
        prev = stage
    return final / "model"


def base_info(stages: int) -> list[dict]:
    return [json.loads((cache_dir() / f"stage-{k}" / "info.json").read_text()) for k in range(1, stages + 1)]


# ---- running the real commands --------------------------------------------------------------------------

def vigorl(*args, log: Path) -> str:
    """Run `vigorl ARGS`, its output to `log`; the driver's own lines ("[...]") echo to the console. A command
    with an `out=DIR` logs to its own MLflow store DIR/mlflow.db (what the results name), not the project's."""
    args = tuple(map(str, args))
    outs = [a[4:] for a in args if a.startswith("out=")]
    store = [f"tracking.uri=sqlite:///{Path(outs[-1]).resolve() / 'mlflow.db'}"] if outs else []
    cmd = [sys.executable, "-m", "cluster.cli", *args, *store]
    lines = []
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, bufsize=1, env=env) as p:
        for line in p.stdout:
            f.write(line)
            lines.append(line)
            if line.startswith("[") and not line.startswith("[rank"):
                print(line, end="", flush=True)
    if p.returncode:
        raise RuntimeError(f"`vigorl {' '.join(map(str, args))}` failed ({p.returncode}); last lines of {log}:\n"
                           + "".join(lines[-30:]))
    return "".join(lines)


def chain_counts(output: str) -> dict:
    """The counts `vigorl linearize` printed ("[linearize] {...} -> OUT")."""
    line = next(x for x in output.splitlines() if x.startswith("[linearize] {"))
    return json.loads(line.split("] ", 1)[1].rsplit(" -> ", 1)[0])


def run_id(output: str) -> str:
    """The MLflow run id a vigorl job printed ("MLflow run <id>")."""
    import re

    found = re.findall(r"MLflow run ([0-9a-f]{32})", output)
    return found[-1] if found else ""


# ---- evaluation ----------------------------------------------------------------------------------------

def evaluate(model: Path, data: Path, out: Path, multi_turn: bool = False) -> dict:
    """`vigorl eval` of `model` on the rows at `data` (configs/learn_eval.yaml, or learn_eval_mt.yaml with the
    zoom tool: the training rollout code, no structured outputs, one sample per item at temperature 0.5,
    docs/algorithm.md §5) into `out`, plus how often the think-step points fall inside the object the question names."""
    from data_gen.formats import read_rows
    from data_gen.teachers import scene_of

    shutil.rmtree(out, ignore_errors=True)  # `vigorl eval` resumes from what is there: start clean
    out.mkdir(parents=True)
    recipe = "learn_eval_mt" if multi_turn else "learn_eval"
    log = vigorl("eval", "--config", ROOT / f"configs/{recipe}.yaml", f"out={out}", f"model.path={model}",
                 f"data.path={data}", log=out / "eval.log")
    s = json.loads((out / "summary.json").read_text())["overall"]
    rows = {r.prompt_id: r for r in read_rows(data)}
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines() if x.strip()]
    scenes = {k: scene_of(r, (r.width, r.height)) for k, r in rows.items()}  # original-pixel objects
    inside = [bool(scenes[i["item_id"]].hit(tuple(p))) for i in items for p in i["points"]]
    return {"accuracy": s["accuracy"], "accuracy_ci95_wilson": s["accuracy_ci95"], "format_rate": s["format_rate"],
            "reward": s["reward"], "points_in_target": sum(inside) / len(inside) if inside else 0.0,
            "points": len(inside), "n": s["n"], **zoom_stats(items, scenes), "eval_run_id": run_id(log)}


def zoom_stats(items: list[dict], scenes: dict) -> dict:
    """Multi-turn evaluations (`items.jsonl` lines with `tool_calls` in original pixels): the share of items
    where some zoom landed on the object the question names (the scene's target box, with its margin), and
    the accuracy of the items where one did and where none did. Empty when no item zoomed (single-turn)."""
    if not any(i["tool_calls"] for i in items):
        return {}
    zoomed = [any(scenes[i["item_id"]].hit(tuple(p)) for p in i["tool_calls"]) for i in items]
    hit = [bool(i["correct"]) for i, z in zip(items, zoomed) if z]
    miss = [bool(i["correct"]) for i, z in zip(items, zoomed) if not z]
    return {"zoomed_on_target": sum(zoomed) / len(items), "accuracy_zoomed": sum(hit) / len(hit) if hit else None,
            "accuracy_not_zoomed": sum(miss) / len(miss) if miss else None}


# ---- the pipeline ---------------------------------------------------------------------------------------

def pipeline(out: Path, n_mcts: int, n_rl: int, n_heldout: int, grpo_steps: int, captions: int,
             base_stages: int, describe: bool = False, sft_epochs: int | None = None,
             multi_turn: bool = False, chains: int = 8) -> dict:
    from data_gen.synthetic import ensure_dataset

    out = out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    base = build_base(captions, base_stages)
    stages = base_info(base_stages)
    data = {}
    for name, n in (("mcts", n_mcts), ("rl", n_rl), ("heldout", n_heldout)):
        data[name] = out / "data" / name
        ensure_dataset(TASK, n, seed=SEEDS[name], out=data[name], progress=False)
    times, runs, outputs = {}, {}, {}

    def stage(name: str, *args) -> None:
        """`vigorl ARGS` writing into out/NAME (cleared first): its output, MLflow run id and seconds."""
        shutil.rmtree(out / name, ignore_errors=True)
        t0 = time.perf_counter()
        outputs[name] = vigorl(*args, log=logs / f"{name}.log")
        runs[name], times[f"{name}_s"] = run_id(outputs[name]), time.perf_counter() - t0

    stage("mcts", "mcts", "--config", ROOT / "configs/learn_mcts.yaml", f"out={out / 'mcts'}",
          f"data.path={data['mcts']}", f"teacher.describe={str(describe).lower()}")
    stage("sft_data", "linearize", out / "mcts" / "trees.jsonl", out / "sft_data", f"max_per_question={chains}")
    sft_data, mt = out / "sft_data", "_mt" if multi_turn else ""
    if multi_turn:  # the chains as zoom dialogues, crops as configs/learn_grpo_mt.yaml makes them
        stage("sft_data_mt", "to-multiturn", sft_data, out / "sft_data_mt", "half_size=24", "out_size=112",
              "max_calls=4", "min_pixels=3136")  # the 112-px scenes as the policy sees them (no 2.7 MP up-scale)
        sft_data = out / "sft_data_mt"
    stage("sft", "sft", "--config", ROOT / "configs/learn_sft.yaml", f"out={out / 'sft'}", f"model.path={base}",
          f"data={sft_data}", *([f"epochs={sft_epochs}"] if sft_epochs else []))
    stage("grpo", "train", "--config", ROOT / f"configs/learn_grpo{mt}.yaml", f"out={out / 'grpo'}",
          f"model.path={out / 'sft' / 'model'}", f"data.path={data['rl']}", f"loop.steps={grpo_steps}")
    for name in ("sft_data", "sft_data_mt"):  # linearize and to-multiturn are no MLflow runs
        runs.pop(name, None)
    times["mcts_to_grpo_s"] = sum(times.values())
    models = {"base": base, "sft": out / "sft" / "model",
              "grpo": out / "grpo" / "checkpoints" / f"step_{grpo_steps:05d}"}
    results: dict = {}
    for name, model in models.items():
        r = evaluate(model, data["heldout"], out / "eval" / name, multi_turn)
        results[name] = r | {"model": str(model)}
        print(f"[learn] {name}: accuracy {r['accuracy']:.3f} {r['accuracy_ci95_wilson']} format {r['format_rate']:.3f} "
              f"reward {r['reward']:.3f} points in target {r['points_in_target']:.3f} (n={r['n']})"
              + (f"; a zoom on the asked object in {r['zoomed_on_target']:.1%} of items" if "zoomed_on_target" in r else ""),
              flush=True)
    results["runs"] = {k: {"run_id": v, "tracking_uri": f"sqlite:///{out / k / 'mlflow.db'}"} for k, v in runs.items()}
    results["runs"]["base_pretraining"] = [{"run_id": i["sft_run_id"], "tracking_uri": i["tracking_uri"]}
                                           for i in stages]
    results["seconds"] = {k: round(v, 1) for k, v in times.items()} | {
        "base_one_time_s": round(sum(i["data_s"] + i["sft_s"] for i in stages), 1),
        "total_s": round(time.perf_counter() - t, 1)}
    results["setup"] = {"task": TASK, "seeds": SEEDS, "n_mcts": n_mcts, "n_rl": n_rl, "n_heldout": n_heldout,
                        "grpo_steps": grpo_steps, "sft_epochs": sft_epochs or "recipe", "chains_per_question": chains,
                        "captions_per_base_stage": captions, "base_stages": base_stages,
                        "teacher_describe": describe, "multi_turn": multi_turn,
                        "linearize": chain_counts(outputs["sft_data"])}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    gain = results["grpo"]["accuracy"] - results["sft"]["accuracy"]
    print(f"[learn] MCTS -> SFT -> GRPO in {times['mcts_to_grpo_s'] / 60:.1f} min; SFT format rate "
          f"{results['sft']['format_rate']:.1%} (target >= 90 %); GRPO - SFT held-out accuracy {100 * gain:+.1f} "
          f"points (target >= +10); {out / 'results.json'}")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.learn", description=__doc__.split("\n")[0])
    p.add_argument("cmd", nargs="?", default="all", choices=["all", "base", "eval"])
    p.add_argument("args", nargs="*")
    p.add_argument("--captions", type=int, default=12800, help="base model: caption images per stage")
    p.add_argument("--base-stages", type=int, default=2, help="base model: caption SFT stages")
    p.add_argument("--out", default="runs/learn", help="pipeline output dir (results.json, logs/, stages)")
    p.add_argument("--mcts-questions", type=int, default=400)
    p.add_argument("--rl-prompts", type=int, default=2000)
    p.add_argument("--heldout", type=int, default=400)
    p.add_argument("--grpo-steps", type=int, default=40)
    p.add_argument("--sft-epochs", type=int, default=None,
                   help="SFT epochs over the linearised chains (default: configs/learn_sft.yaml's)")
    p.add_argument("--chains-per-question", type=int, default=8,
                   help="linearize's cap on SFT chains per MCTS question (max_per_question)")
    p.add_argument("--describe", action="store_true",
                   help="MCTS teacher steps say what is at their point (teacher.describe; off: the released kind)")
    p.add_argument("--multi-turn", action="store_true",
                   help="SFT on the chains as zoom dialogues (vigorl to-multiturn), GRPO and evaluation with the "
                        "zoom tool (configs/learn_grpo_mt.yaml, learn_eval_mt.yaml)")
    a = p.parse_args()
    if a.cmd == "base":
        print(build_base(a.captions, a.base_stages))
    elif a.cmd == "eval":
        if len(a.args) != 3:
            p.error("eval takes MODEL DATA OUT_DIR")
        print(json.dumps(evaluate(Path(a.args[0]), Path(a.args[1]), Path(a.args[2]), a.multi_turn)))
    else:
        pipeline(Path(a.out), a.mcts_questions, a.rl_prompts, a.heldout, a.grpo_steps, a.captions, a.base_stages,
                 a.describe, a.sft_epochs, a.multi_turn, a.chains_per_question)
