"""`make learn`: the learning proof. Per seed, MCTS (scripted teacher) -> linearise -> to-multiturn -> SFT ->
GRPO with the zoom tool on a small VLM, then the base, SFT and GRPO models scored on one held-out synthetic set
without structured outputs. A benchmark, never part of the tests.

    python -m bench.learn base            build (once) and cache the pretrained base VLM; prints its cost
    python -m bench.learn [--seeds 3] [--out DIR]     the pipelines from the cached base; writes DIR/results.json
    python -m bench.learn --single-turn   the same without the zoom tool (linearised chains, single-turn GRPO)
    python -m bench.learn [--multi-turn] eval MODEL DATA OUT_DIR     score one model dir on one dataset
                                          (`vigorl eval`; with the zoom tool after --multi-turn)

The task is `object_colour` (data_gen.synthetic): what colour is the {shape} in a 112x112 scene of two or
three objects, four options that include the other objects' colours (chance 25 %). The base is the
`small` tiny Qwen2.5-VL pretrained on generic captions of the same kind of scenes ("The circle at (61, 50)
is red. ..."): what and where objects are, not the task, its format or its questions — as the paper
starts from a pretrained Qwen2.5-VL. Seeds: captions 100 (+1 per base stage); per pipeline seed k, MCTS
questions 1 + 10k and RL prompts 2 + 10k (`seed_data`), with k the MCTS, to-multiturn, SFT shuffle and GRPO
sampling seed; held-out 3 for every seed (never used for any training data).

Every stage is the real command (`vigorl mcts`, `linearize`, `to-multiturn`, `sft`, `train`, `eval`) from a
recipe in configs/ (learn_*.yaml); evaluation plays episodes with the training rollout code (vLLM, no
structured outputs) at docs/algorithm.md §5's evaluation temperature 0.5, one sample per item.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

from bench.common import ROOT, run_id, vigorl

TASK = "object_colour"
BASE_VERSION = "v5"  # the cache dir; bump when the base recipe (captions, configs/learn_base.yaml) changes
# (v5: SFT's loss became each caption's token mean averaged, learner.grpo.row_means; v4 averaged micro-batch means)
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


# ---- reading the real commands' output ----------------------------------------------------------------

def chain_counts(output: str) -> dict:
    """The counts `vigorl linearize` printed ("[linearize] {...} -> OUT")."""
    line = next(x for x in output.splitlines() if x.startswith("[linearize] {"))
    return json.loads(line.split("] ", 1)[1].rsplit(" -> ", 1)[0])


# ---- evaluation ----------------------------------------------------------------------------------------

def evaluate(model: Path, data: Path, out: Path, multi_turn: bool = False, overrides: list[str] = ()) -> dict:
    """`vigorl eval` of `model` on the rows at `data` (configs/learn_eval.yaml, or learn_eval_mt.yaml with the
    zoom tool: the training rollout code, no structured outputs, one sample per item at temperature 0.5,
    docs/algorithm.md §5; `overrides`: more `key=value` settings) into `out`, plus how often the think-step points
    fall inside the object the question names."""
    from data_gen.formats import read_rows
    from data_gen.teachers import scene_of

    shutil.rmtree(out, ignore_errors=True)  # `vigorl eval` resumes from what is there: start clean
    out.mkdir(parents=True)
    recipe = "learn_eval_mt" if multi_turn else "learn_eval"
    log = vigorl("eval", "--config", ROOT / f"configs/{recipe}.yaml", f"out={out}", f"model.path={model}",
                 f"data.path={data}", *overrides, log=out / "eval.log")
    s = json.loads((out / "summary.json").read_text())["overall"]
    rows = {r.prompt_id: r for r in read_rows(data)}
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines() if x.strip()]
    scenes = {k: scene_of(r, (r.width, r.height)) for k, r in rows.items()}  # original-pixel objects
    inside = [bool(scenes[i["item_id"]].hit(tuple(p))) for i in items for p in i["points"]]
    return {"accuracy": s["accuracy"], "accuracy_ci95_wilson": s["accuracy_ci95"], "format_rate": s["format_rate"],
            "reward": s["reward"], "points_in_target": sum(inside) / len(inside) if inside else 0.0,
            "points": len(inside), "n": s["n"], **zoom_stats(items, scenes, multi_turn), "eval_run_id": run_id(log)}


def zoom_stats(items: list[dict], scenes: dict, multi_turn: bool = True) -> dict:
    """Multi-turn evaluations (`items.jsonl` lines with `tool_calls` in original pixels): the share of items
    where some zoom landed on the object the question names (the scene's target box, with its margin), and
    the accuracy of the items where one did and where none did. Empty for a single-turn evaluation in which
    no item zoomed."""
    if not multi_turn and not any(i["tool_calls"] for i in items):
        return {}
    zoomed = [any(scenes[i["item_id"]].hit(tuple(p)) for p in i["tool_calls"]) for i in items]
    hit = [bool(i["correct"]) for i, z in zip(items, zoomed) if z]
    miss = [bool(i["correct"]) for i, z in zip(items, zoomed) if not z]
    return {"zoomed_on_target": sum(zoomed) / len(items), "accuracy_zoomed": sum(hit) / len(hit) if hit else None,
            "accuracy_not_zoomed": sum(miss) / len(miss) if miss else None}


# ---- the pipeline ---------------------------------------------------------------------------------------

FIELDS = ("accuracy", "format_rate", "n")  # what `results.json` averages over the seeds, per model


def seed_data(seed: int) -> dict[str, int]:
    """The data seeds of pipeline seed `seed` (0, 1, ...): its own MCTS questions and RL prompts (seed 0: the
    historical 1 and 2); the held-out set is the same for every seed and never trained on (3 is no seed's)."""
    return {"mcts": 1 + 10 * seed, "rl": 2 + 10 * seed, "heldout": SEEDS["heldout"]}


def mean_over_seeds(per_seed: list[dict]) -> dict:
    """{model: {field: mean over the seeds}} for base, sft and grpo (`FIELDS`), from the seeds' records."""
    return {m: {f: sum(r[m][f] for r in per_seed) / len(per_seed) for f in FIELDS} for m in ("base", "sft", "grpo")}


def rl_sampling(recipe: str) -> dict[str, float]:
    """The GRPO recipe's sampling as `vigorl eval` settings: temperature, top-p (TrainConfig's default is the
    released 0.99, EvalConfig's 1.0: the tail it cuts holds most of a small model's broken tool calls at
    temperature 1.0) and the forced-answer temperature (null: the sampling one)."""
    from configs.load import load
    from configs.schema import TrainConfig

    cfg = load(TrainConfig, ROOT / "configs" / f"{recipe}.yaml")
    forced = cfg.rollout.forced_answer_temperature
    return {"sampling.temperature": cfg.sampling.temperature, "sampling.top_p": cfg.sampling.top_p,
            "rollout.forced_answer_temperature": cfg.sampling.temperature if forced is None else forced}


def stage_runner(out: Path, times: dict, runs: dict, outputs: dict):
    def stage(name: str, *args) -> None:
        """`vigorl ARGS` writing into out/NAME (cleared first): its output, MLflow run id and seconds."""
        shutil.rmtree(out / name, ignore_errors=True)
        t0 = time.perf_counter()
        outputs[name] = vigorl(*args, log=out / "logs" / f"{name}.log")
        runs[name], times[f"{name}_s"] = run_id(outputs[name]), time.perf_counter() - t0
    return stage


def sft_dialogues(stage, out: Path, questions: Path, seed: int, describe: bool, chains: int, multi_turn: bool) -> Path:
    """The SFT data of `questions` through `stage` (`stage_runner`): MCTS (scripted teacher, `seed`) -> linearise
    (at most `chains` chains a question) -> with `multi_turn`, to-multiturn: zoom dialogues whose crops are
    configs/learn_grpo_mt.yaml's and whose system message is its prompt file. Returns the data dir."""
    stage("mcts", "mcts", "--config", ROOT / "configs/learn_mcts.yaml", f"out={out / 'mcts'}",
          f"data.path={questions}", f"teacher.describe={str(describe).lower()}", f"seed={seed}")
    stage("sft_data", "linearize", out / "mcts" / "trees.jsonl", out / "sft_data", f"max_per_question={chains}")
    if not multi_turn:
        return out / "sft_data"
    stage("sft_data_mt", "to-multiturn", out / "sft_data", out / "sft_data_mt", "half_size=24", "out_size=112",
          "max_calls=4", "min_pixels=3136", f"seed={42 + seed}",  # the 112-px scenes as the policy sees them;
          # seed 42 (the converter's default, the runs before seeds) for pipeline seed 0
          f"system_prompt_file={ROOT / 'configs/prompts/learn_zoom.txt'}")
    return out / "sft_data_mt"


def run_seed(out: Path, seed: int, base: Path, heldout: Path, n_mcts: int, n_rl: int, grpo_steps: int,
             describe: bool, sft_epochs: int | None, multi_turn: bool, chains: int, well_formed_n: int) -> dict:
    """One whole pipeline into `out`: MCTS -> linearise (-> to-multiturn) -> SFT -> GRPO from `base`, its own data
    and sampling seeds, then the SFT and GRPO models scored on `heldout`. Before GRPO, the SFT policy plays
    `well_formed_n` RL prompts (training data, never the held-out set) at the GRPO recipe's temperature: the
    share of well-formed episodes GRPO starts from."""
    from data_gen.synthetic import ensure_dataset

    (out / "logs").mkdir(parents=True, exist_ok=True)
    seeds = seed_data(seed)
    data = {}
    for name, n in (("mcts", n_mcts), ("rl", n_rl)):
        data[name] = out / "data" / name
        ensure_dataset(TASK, n, seed=seeds[name], out=data[name], progress=False)
    times, runs, outputs = {}, {}, {}
    stage = stage_runner(out, times, runs, outputs)
    sft_data, mt = sft_dialogues(stage, out, data["mcts"], seed, describe, chains, multi_turn), "_mt" if multi_turn else ""
    stage("sft", "sft", "--config", ROOT / "configs/learn_sft.yaml", f"out={out / 'sft'}", f"model.path={base}",
          f"data={sft_data}", f"seed={seed}", *([f"epochs={sft_epochs}"] if sft_epochs else []))
    # GRPO learns from the well-formed episodes its policy writes at ITS sampling settings, not the evaluation's
    sampling = rl_sampling(f"learn_grpo{mt}")
    temperature = sampling["sampling.temperature"]
    t0 = time.perf_counter()
    check = evaluate(out / "sft" / "model", data["rl"], out / "eval" / "sft_at_rl_temperature", multi_turn,
                     [*(f"{k}={v}" for k, v in sampling.items()), f"limit={well_formed_n}"])
    times["sft_at_rl_temperature_s"] = time.perf_counter() - t0
    print(f"[learn] seed {seed}: the SFT policy at GRPO's temperature {temperature} (top-p "
          f"{sampling['sampling.top_p']}): {check['format_rate']:.1%} of "
          f"{check['n']} RL-prompt episodes well formed" + ("" if check["format_rate"] >= 0.5 else
                                                            " -- WARNING: GRPO has few well-formed episodes to select"),
          flush=True)
    stage("grpo", "train", "--config", ROOT / f"configs/learn_grpo{mt}.yaml", f"out={out / 'grpo'}",
          f"model.path={out / 'sft' / 'model'}", f"data.path={data['rl']}", f"loop.steps={grpo_steps}",
          f"loop.seed={seed}", f"sampling.seed={seed}")
    for name in ("sft_data", "sft_data_mt"):  # linearize and to-multiturn are no MLflow runs
        runs.pop(name, None)
    times["mcts_to_grpo_s"] = sum(times.values())
    record: dict = {"seed": seed, "data_seeds": seeds, "linearize": chain_counts(outputs["sft_data"]),
                    "sft_at_rl_temperature": {"temperature": temperature, "top_p": sampling["sampling.top_p"],
                                              "format_rate": check["format_rate"],
                                              "n": check["n"], "eval_run_id": check["eval_run_id"]}}
    for name, model in (("sft", out / "sft" / "model"), ("grpo", out / "grpo" / "checkpoints" / f"step_{grpo_steps:05d}")):
        record[name] = evaluate(model, heldout, out / "eval" / name, multi_turn) | {"model": str(model)}
        report(f"seed {seed} {name}", record[name])
    record["minutes"] = {k.removesuffix("_s"): round(v / 60, 2) for k, v in times.items()}
    record["runs"] = {k: {"run_id": v, "tracking_uri": f"sqlite:///{out / k / 'mlflow.db'}"} for k, v in runs.items()}
    gain = record["grpo"]["accuracy"] - record["sft"]["accuracy"]
    print(f"[learn] seed {seed}: MCTS -> SFT -> GRPO in {times['mcts_to_grpo_s'] / 60:.1f} min (target <= 30); SFT "
          f"format rate {record['sft']['format_rate']:.1%} (target >= 90 %); GRPO - SFT {100 * gain:+.1f} points",
          flush=True)
    return record


def kept_record(path: Path, setup: dict) -> dict | None:
    """The seed record at `path` (`pipeline` writes one when a seed ends) if it was made with `setup`, else None
    (none there, or other settings: the seed runs again)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("setup") == setup else None


def report(name: str, r: dict) -> None:
    print(f"[learn] {name}: accuracy {r['accuracy']:.3f} {r['accuracy_ci95_wilson']} format {r['format_rate']:.3f} "
          f"reward {r['reward']:.3f} points in target {r['points_in_target']:.3f} (n={r['n']})"
          + (f"; a zoom on the asked object in {r['zoomed_on_target']:.1%} of items" if "zoomed_on_target" in r else ""),
          flush=True)


def pipeline(out: Path, seeds: int, n_mcts: int, n_rl: int, n_heldout: int, grpo_steps: int, captions: int,
             base_stages: int, describe: bool = False, sft_epochs: int | None = None,
             multi_turn: bool = True, chains: int = 8, well_formed_n: int = 64, resume: bool = False) -> dict:
    """`seeds` whole pipelines (`run_seed`, into out/seed-K) from one cached base, scored on one held-out set
    (the base scored once); out/results.json: `base`, `sft`, `grpo` (FIELDS, means over the seeds) and `seeds`
    (each seed's record: every evaluation field, the 95 % interval, zoom-on-target, minutes per stage, the
    MLflow run ids). Each seed's record is also written to out/seed-K/record.json when the seed ends; with
    `resume`, a seed whose record has the same settings is kept, not run again."""
    from data_gen.synthetic import ensure_dataset

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    base = build_base(captions, base_stages)
    stages = base_info(base_stages)
    heldout = out / "data" / "heldout"
    ensure_dataset(TASK, n_heldout, seed=SEEDS["heldout"], out=heldout, progress=False)
    base_eval = evaluate(base, heldout, out / "eval" / "base", multi_turn) | {"model": str(base)}
    report("base", base_eval)
    setup = {"task": TASK, "base_version": BASE_VERSION, "heldout_seed": SEEDS["heldout"], "n_mcts": n_mcts,
             "n_rl": n_rl, "n_heldout": n_heldout, "grpo_steps": grpo_steps, "sft_epochs": sft_epochs or "recipe",
             "chains_per_question": chains, "captions_per_base_stage": captions, "base_stages": base_stages,
             "teacher_describe": describe, "multi_turn": multi_turn, "well_formed_n": well_formed_n}
    per_seed = []
    for k in range(seeds):
        record_file = out / f"seed-{k}" / "record.json"
        record = kept_record(record_file, setup) if resume else None
        if record is None:
            record = run_seed(out / f"seed-{k}", k, base, heldout, n_mcts, n_rl, grpo_steps, describe, sft_epochs,
                              multi_turn, chains, well_formed_n) | {"base": base_eval, "setup": setup}
            record_file.write_text(json.dumps(record, indent=2) + "\n")  # a later seed's failure keeps this one
        else:
            print(f"[learn] seed {k}: kept from {record_file} (--resume; the same settings)", flush=True)
        per_seed.append(record)
    results = mean_over_seeds(per_seed) | {"seeds": per_seed}
    results["runs"] = {"base_pretraining": [{"run_id": i["sft_run_id"], "tracking_uri": i["tracking_uri"]}
                                            for i in stages], "base_eval": base_eval["eval_run_id"]}
    results["seconds"] = {"base_one_time_s": round(sum(i["data_s"] + i["sft_s"] for i in stages), 1),
                          "total_s": round(time.perf_counter() - t, 1)}
    results["setup"] = {"seeds": seeds, **setup}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    gains = [100 * (r["grpo"]["accuracy"] - r["sft"]["accuracy"]) for r in per_seed]
    print(f"[learn] {seeds} seed(s): GRPO - SFT held-out accuracy {', '.join(f'{g:+.1f}' for g in gains)} points "
          f"(mean {sum(gains) / len(gains):+.1f}; target >= +8, every seed > 0); MCTS -> SFT -> GRPO "
          f"{', '.join(str(r['minutes']['mcts_to_grpo']) for r in per_seed)} min (target <= 30); {out / 'results.json'}")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.learn", description=__doc__.split("\n")[0])
    p.add_argument("cmd", nargs="?", default="all", choices=["all", "base", "eval"])
    p.add_argument("args", nargs="*")
    p.add_argument("--seeds", type=int, default=3, help="whole pipelines, each with its own data and sampling seeds")
    p.add_argument("--captions", type=int, default=12800, help="base model: caption images per stage")
    p.add_argument("--base-stages", type=int, default=2, help="base model: caption SFT stages")
    p.add_argument("--out", default="runs/learn", help="output dir (results.json, seed-K/, eval/base)")
    p.add_argument("--mcts-questions", type=int, default=400)
    p.add_argument("--rl-prompts", type=int, default=2000)
    p.add_argument("--heldout", type=int, default=400)
    p.add_argument("--grpo-steps", type=int, default=40)
    p.add_argument("--sft-epochs", type=int, default=None,
                   help="SFT epochs over the linearised chains (default: configs/learn_sft.yaml's)")
    p.add_argument("--chains-per-question", type=int, default=8,
                   help="linearize's cap on SFT chains per MCTS question (max_per_question)")
    p.add_argument("--well-formed-prompts", type=int, default=64,
                   help="RL prompts the SFT policy plays at GRPO's temperature before GRPO (its well-formed rate)")
    p.add_argument("--describe", action="store_true",
                   help="MCTS teacher steps say what is at their point (teacher.describe; off: the released kind)")
    p.add_argument("--single-turn", action="store_true",
                   help="SFT on the linearised chains, GRPO and evaluation without the zoom tool "
                        "(configs/learn_grpo.yaml, learn_eval.yaml); default: the zoom pipeline "
                        "(vigorl to-multiturn, learn_grpo_mt.yaml, learn_eval_mt.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="keep the seeds that finished in --out with the same settings (seed-K/record.json)")
    p.add_argument("--multi-turn", action="store_true", help="`eval`: score with the zoom tool")
    a = p.parse_args()
    if a.cmd == "base":
        print(build_base(a.captions, a.base_stages))
    elif a.cmd == "eval":
        if len(a.args) != 3:
            p.error("eval takes MODEL DATA OUT_DIR")
        print(json.dumps(evaluate(Path(a.args[0]), Path(a.args[1]), Path(a.args[2]), a.multi_turn)))
    else:
        if a.seeds < 1:
            p.error(f"--seeds must be >= 1, got {a.seeds}")
        pipeline(Path(a.out), a.seeds, a.mcts_questions, a.rl_prompts, a.heldout, a.grpo_steps, a.captions,
                 a.base_stages, a.describe, a.sft_epochs, not a.single_turn, a.chains_per_question,
                 a.well_formed_prompts, a.resume)
