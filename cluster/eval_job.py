"""`vigorl eval`: score a model on a benchmark or a synthetic set, as a Ray job with rollout actors only.

The episodes are the training actor's (`actors.actor.RolloutActor`, token level, the recipe's single- or
multi-turn mode), judged as the released evaluation judges them (`rewards.eval_judge`, `judge=official`, the
default) or by the RL reward's accuracy (`judge=reward`); there is no learner. Items come from a
benchmark loader (`data_gen.benchmarks.LOADERS`, `benchmark=` and its folder, or a released evaluation file, in
`data.path`) or from data.path in any format `data_gen.formats` reads (a dataset's prompts.parquet, `vigorl
make-data`; the released RL data; verl; `datasets`). `rollout.group_size` samples per item (default 1 at
temperature 0.5, docs/algorithm.md §5); with k > 1 the summary adds pass@k.

Outputs under `out`:
  items.jsonl   one line per (item, sample), written as each actor batch comes back: item id, subgroup,
                response, points / tool calls / crop boxes in original-image pixels, answer, correct,
                reward parts, end, seconds. A rerun with the same `out` skips the items already there.
  eval_settings.json  the model fingerprint and scoring settings the items were made with, written before the
                first item (cluster/prelaunch.py): a rerun with another model or settings stops naming each
                difference (or, with --overwrite, scores afresh).
  summary.json  n, accuracy with a 95 % Wilson score interval, format rate, mean reward, mean zooms,
                overall and per subgroup; items skipped, counted by reason.
  gallery/      index.html + items/*.png: where the model looked, failures first (cluster.gallery).
and an MLflow run: the summary as metrics, items.jsonl, summary.json and the gallery as artifacts.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import rewards
from cluster.eval_summary import metrics, summarize
from cluster.workqueue import Faults, append_lines, chunks, crash_point, pending, run_queue, start_workers
from configs.jobs import EvalConfig

ITEMS, SUMMARY = "items.jsonl", "summary.json"


def subgroup(row) -> str:
    """The summary's breakdown of an item: what its loader named (ScreenSpot platform/element type, V*
    category, BLINK subtask), else its source."""
    meta = json.loads(row.meta) if row.meta else {}
    return str(meta.get("subgroup") or row.source or row.task)


# ---- items ------------------------------------------------------------------------------------------------

def load_items(cfg: EvalConfig) -> tuple[list, Counter]:
    """The rows to score and the rows skipped, by reason. Every image is opened here, before any actor
    starts: a missing or corrupt one is skipped (counted) or, with on_bad_item=raise, an error naming it."""
    from data_gen.formats import image_root, load_prompts
    from data_gen.images import ImageError, load_rgb, resolve_under

    if cfg.on_bad_item not in ("skip", "raise"):
        raise ValueError(f"on_bad_item must be skip or raise, got {cfg.on_bad_item!r}")
    # a benchmark's loader (its folder or a released evaluation file), or data.path in any format
    # data_gen/formats.py reads; images under data.image_root (default: data.path's dir)
    rows, skipped = load_prompts(cfg, on_error=str(cfg.on_bad_item), limit=cfg.limit)
    root = image_root(cfg.data)
    rows = rows[: cfg.limit] if cfg.limit else rows
    good = []
    for row in rows:
        try:
            load_rgb(resolve_under(root, row.image))
        except ImageError as e:
            if cfg.on_bad_item == "raise":
                raise ImageError(f"item {row.prompt_id}: {e}") from None
            skipped[f"image: {str(e).split(': ')[-1][:80]}"] += 1
            continue
        good.append(row)
    return good, skipped


def judged(tok, t, row, size: tuple[int, int], cfg: EvalConfig, reward) -> tuple[bool, str | None, str]:
    """(correct, the answer read, why it failed) of one episode under `cfg.judge`: `official` is the
    released evaluation's judge (`rewards.eval_judge`) on the text the model wrote (single-turn: the whole
    response; multi-turn: its assistant turns), `reward` the RL reward's accuracy (`reward`, a Score)."""
    from actors.rollout import assistant_turns
    from data_gen.rows import gold_for_model
    from rewards.eval_judge import TASK_JUDGES, eval_verdict

    if cfg.judge == "reward":
        return reward.accuracy >= 1.0, reward.answer, reward.error
    multi = rewards.is_multi_turn(cfg.data.mode)
    response = (assistant_turns(tok, t.token_ids, t.prompt_len) if multi
                else tok.decode(t.token_ids[t.prompt_len:], skip_special_tokens=True))
    v = eval_verdict(response, gold_for_model(row, size), benchmark=cfg.benchmark,
                     mode="multi_turn" if multi else "single_turn", options=row.options,
                     thinking=cfg.judge_thinking, judge=None if cfg.benchmark else TASK_JUDGES.get(row.task))
    return v.score >= 1.0, v.answer, v.error


def item_lines(trajs: list, rows: dict, tok, cfg: EvalConfig) -> list[dict]:
    """One items.jsonl line per trajectory, judged by `cfg.judge` (`judged`); points and boxes mapped from the
    frame the model saw back to original-image pixels (per-axis scale, rounded)."""
    from actors.rollout import score_response, transcript
    from data_gen.geometry import crop_box

    samples: Counter = Counter()
    out = []
    for t in trajs:
        row, full = rows[t.prompt_id], t.images[0]
        size = (full.width, full.height)
        sx, sy = row.width / full.width, row.height / full.height

        def orig(p, sx=sx, sy=sy):
            return [round(p[0] * sx), round(p[1] * sy)]

        s = score_response(tok, t.token_ids, t.prompt_len, t.end == "truncated", row, size, cfg.data.mode)
        correct, answer, why = judged(tok, t, row, size, cfg, s)
        zooms = [ref.point for ref in t.images[1:]]
        boxes = [crop_box(p, size, ref.half_size) for p, ref in zip(zooms, t.images[1:])]
        out.append({
            "item_id": t.prompt_id, "sample": samples[t.prompt_id], "subgroup": subgroup(row), "task": row.task,
            "image": row.image, "image_size": [row.width, row.height], "model_image_size": list(size),
            "question": row.question, "gold": row.gold,
            "response": transcript(tok, t.token_ids, t.prompt_len),
            "answer": answer, "correct": correct, "judge": cfg.judge, "judge_error": why,
            "points": [orig(p) for p in t.points], "tool_calls": [orig(p) for p in zooms],
            "crop_boxes": [orig(b[:2]) + orig(b[2:]) for b in boxes],
            "reward": {"overall": s.overall, "format": s.format, "accuracy": s.accuracy,
                       "coordinate": s.coordinate, "diversity": s.diversity},
            "error": s.error, "end": t.end, "seconds": round(t.seconds, 3), "weight_version": t.weight_version})
        samples[t.prompt_id] += 1
    return out


def read_items(path: Path, k: int) -> list[dict]:
    """items.jsonl as written so far (a half-written last line cut off with a warning). Lines of an item
    with fewer than k samples (its batch was cut mid-write) are removed, so that item is scored again."""
    from data_gen.records import read_jsonl

    def check(line) -> None:
        if not isinstance(line, dict) or "item_id" not in line or "correct" not in line:
            raise ValueError("no item_id / correct")

    lines = read_jsonl(path, check, "an item line", truncate_partial=True)
    count = Counter(x["item_id"] for x in lines)
    whole = [x for x in lines if count[x["item_id"]] >= k]
    if len(whole) < len(lines):
        path.write_text("".join(json.dumps(x) + "\n" for x in whole))
    return whole


# ---- the job ----------------------------------------------------------------------------------------------

def check_judge(cfg: EvalConfig) -> str:
    """What scores the items, in words for summary.json; an unknown judge or benchmark is an error here,
    before Ray starts."""
    from rewards.eval_judge import judge_name

    if cfg.judge == "reward":
        return f"the RL reward's accuracy (rewards.score, mode {cfg.data.mode})"
    if cfg.judge != "official":
        raise ValueError(f"judge must be official (the released evaluation's judges) or reward, got {cfg.judge!r}")
    name = judge_name(cfg.benchmark) if cfg.benchmark else "by row task (rewards.eval_judge.TASK_JUDGES)"
    return f"released evaluation: {name} (rewards.eval_judge, Gabesarch/grounded-rl@e7970c0 judge.py)"


def check_settings(cfg: EvalConfig) -> tuple[str, int]:
    """(what scores the items, in words; samples per item): the judge, `rollout.group_size` and the model dir
    checked, an error naming the bad one here, before Ray starts."""
    judge = check_judge(cfg)
    k = cfg.rollout.group_size
    if k is None or k < 1:
        raise ValueError(f"rollout.group_size (samples per item) must be >= 1, got {k}")
    if not (Path(cfg.model.path) / "config.json").is_file():
        raise FileNotFoundError(f"model.path: {cfg.model.path} is not a model dir (no config.json)")
    return judge, k


def judges_by_task(cfg: EvalConfig, rows: list, judge: str) -> str:
    """`judge` with each task's judge named, where the official judge goes by row task (no `benchmark`); a
    task without a released judge is an error naming it."""
    if cfg.judge != "official" or cfg.benchmark:
        return judge
    from rewards.eval_judge import TASK_JUDGES

    if unjudged := sorted({r.task for r in rows} - set(TASK_JUDGES)):
        raise ValueError(f"no evaluation judge for task(s) {unjudged} of {cfg.data.path}; judges by task: "
                         f"{sorted(TASK_JUDGES)} (or judge=reward)")
    return judge.replace("by row task", ", ".join(sorted({f"{r.task}: {TASK_JUDGES[r.task]}" for r in rows})))


def announce(cfg: EvalConfig, rows: list, todo: list, skipped: Counter) -> None:
    """The job's first console line: items found, already scored, to score, and how."""
    print(f"[eval] {len(rows)} items ({cfg.benchmark or f'data.format={cfg.data.format}'} at {cfg.data.path}), "
          f"{len(rows) - len(todo)} already "
          f"in {Path(cfg.out) / ITEMS}, {len(todo)} to score; {cfg.rollout.group_size} sample(s) each, "
          f"{cfg.data.mode}, temperature {cfg.sampling.temperature}" + (f"; skipped {dict(skipped)}" if skipped else ""))


def start_actors(ray, cfg: EvalConfig, todo: list, n_batches: int, tracker) -> tuple[list, Faults]:
    """The rollout actors, each holding the items to score: `cluster.rollout_actors` of them, at most one per
    batch; the GPUs of their nodes are watched (system metrics). With them, what a dead or hung one costs: a
    replacement in its slot (`cluster.restart_attempts`, `restart_backoff_s`, `rollout_timeout_s`)."""
    from actors.actor import RolloutActor
    from cluster.raystart import log_file
    from cluster.tracking import ready_nodes

    c = cfg.cluster
    actor = ray.remote(RolloutActor).options(num_cpus=c.rollout_cpus, num_gpus=c.rollout_gpus)
    started = 0

    def make(slot: int):  # a new actor gets a fresh index (its own sampling seed, its own log), as in training
        nonlocal started
        started += 1
        return actor.remote(cfg, started - 1, todo, log_file(cfg.out, f"rollout-{started - 1}", cfg.verbose))

    actors = start_workers(make, c.rollout_actors, n_batches)
    nodes = [a.node_id.remote() for a in actors]
    tracker.watch_gpus(ray, lambda: {"rollout": ready_nodes(ray, nodes)})
    return actors, Faults(make, "rollout actor", c.restart_attempts, c.restart_backoff_s, c.rollout_timeout_s)


def score(ray, actors: list, faults: Faults, batches: list[list[str]], todo: list, tok, cfg: EvalConfig,
          done: list, tracker) -> None:
    """Score the `batches` (item ids) on `actors` (cluster/workqueue.py; a dead or hung one is replaced and its
    batch scored again: `faults`): each batch's lines are appended to items.jsonl (an item's k samples in one
    write) and to `done` as it comes back."""
    from actors.trajectory import from_batch

    k, by_id, returned = cfg.rollout.group_size, {r.prompt_id: r for r in todo}, 0

    def submit(actor, ids: list[str]):  # num_returns=2: (trajectories, stats); the driver reads the first
        return actor.rollout_batch.options(num_returns=2).remote(ids)[0]

    with open(Path(cfg.out) / ITEMS, "a") as f:
        def on_result(batch) -> int:
            nonlocal returned
            lines = item_lines(from_batch(batch), by_id, tok, cfg)
            append_lines(f, lines)
            done.extend(lines)
            returned += 1
            crash_point(returned, cfg.crash_after)  # EvalConfig.crash_after counts batches
            tracker.metrics({"eval/items_done": float(len({x["item_id"] for x in done}))}, len(done) // k)
            return len(lines) // k

        run_queue(ray, actors, batches, submit, on_result, total=len(todo), desc="eval items", unit="item",
                  faults=faults)


def write_summary(cfg: EvalConfig, done: list, skipped: Counter, judge: str, restarts: int, tracker) -> dict:
    """summary.json; its figures as MLflow metrics, it and items.jsonl as artifacts. `restarts`: rollout actors
    replaced in this run (`actor_restarts`)."""
    k, out = cfg.rollout.group_size, Path(cfg.out)
    summary = summarize(done, k, skipped) | {
        "model": cfg.model.source or cfg.model.path, "model_path": cfg.model.path,  # as given; the local dir
        "benchmark": cfg.benchmark or "prompts.parquet", "data": cfg.data.path,
        "mode": cfg.data.mode, "judge": cfg.judge, "judge_detail": judge,
        "temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p, "samples_per_item": k,
        "actor_restarts": restarts, "run_id": tracker.run_id}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    tracker.metrics(metrics(summary), len(done) // k)
    tracker.artifact(out / ITEMS)
    tracker.artifact(out / SUMMARY)
    return summary


def publish_gallery(cfg: EvalConfig, done: list, summary: dict, tracker) -> None:
    """gallery/ (cluster.gallery, `gallery` items at most; none for 0), logged as an artifact."""
    from cluster.gallery import write_gallery
    from data_gen.formats import image_root

    if cfg.gallery:
        page = write_gallery(done, image_root(cfg.data), Path(cfg.out) / "gallery", cfg.gallery, summary=summary,
                             title=f"vigorl eval: {summary['model']} on {summary['benchmark']}")
        tracker.artifacts(page.parent, "gallery")
        print(f"[eval] gallery: {page}")


def report(cfg: EvalConfig, summary: dict, tracker) -> None:
    """The job's last console line: the overall figures and where they are."""
    o = summary["overall"]
    print(f"[eval] {o['n']} items: accuracy {o['accuracy']:.3f} {tuple(o['accuracy_ci95'])} format "
          f"{o['format_rate']:.3f} reward {o['reward']:.3f} zooms {o['zooms']:.2f}; {Path(cfg.out) / SUMMARY}; "
          f"MLflow run {tracker.run_id}")


def run(cfg: EvalConfig) -> dict:
    """`vigorl eval` (the module docstring): check the settings and items, skip the items items.jsonl already
    has, score the rest on rollout actors (cluster/workqueue.py), summarize."""
    from transformers import AutoTokenizer

    from cluster.raystart import init_ray
    from cluster.tracking import Tracker, job

    judge, k = check_settings(cfg)
    rows, skipped = load_items(cfg)
    judge = judges_by_task(cfg, rows, judge)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    done = read_items(out / ITEMS, k)  # scored with this run's model and settings: cluster/prelaunch.py checked
    todo = pending(rows, {x["item_id"] for x in done})
    announce(cfg, rows, todo, skipped)
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    ray = init_ray(cfg.address, cfg.cluster.rollout_actors * cfg.cluster.rollout_cpus, cfg.verbose)
    tracker = Tracker(cfg)
    with job(tracker, ray):
        batches = chunks([r.prompt_id for r in todo], cfg.batch)
        actors, faults = start_actors(ray, cfg, todo, len(batches), tracker)
        score(ray, actors, faults, batches, todo, tok, cfg, done, tracker)
        summary = write_summary(cfg, done, skipped, judge, faults.restarts, tracker)
        publish_gallery(cfg, done, summary, tracker)
    report(cfg, summary, tracker)
    return summary
