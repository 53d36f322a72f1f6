"""`vigorl train`: the driver of the actor-learner loop.

The driver is the scheduler: it hands prompt ids to rollout actors (the ledger accounts for each),
passes the rollout actors' Arrow batches to the learner by object reference (the driver never copies
them), and fans the learner's versioned weights out to the actors. Sync mode generates then trains;
async mode keeps up to `loop.max_queue` steps of rollouts queued ahead of the learner (backpressure:
nothing more is dispatched while the queue is full), so actors generate with weights at most
`max_staleness` versions old; the learner drops or corrects anything older.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.process import rss_mb
from cluster import resume, waits
from cluster.control import driver_file, requested_scale, stop_requested
from cluster.ledger import Ledger
from cluster.pool import RolloutPool, RolloutQueue
from cluster.raystart import say
from configs.schema import TrainConfig, shares_gpu, torch_threads


def prepare(cfg: TrainConfig) -> None:
    """Build the tiny model / synthetic data when the recipe asks for them and they are missing."""
    from data_gen.rows import PROMPTS_FILE

    if cfg.make_tiny and not (Path(cfg.model.path) / "config.json").is_file():
        from data_gen.tiny_model import make_tiny_model

        print(f"[train] building a tiny random Qwen2.5-VL ({cfg.make_tiny} vocab) in {cfg.model.path}")
        make_tiny_model(cfg.model.path, vocab=cfg.make_tiny, min_pixels=cfg.model.min_pixels,
                        max_pixels=cfg.model.max_pixels)
    if cfg.make_data and not (Path(cfg.data.path) / PROMPTS_FILE).is_file() and not Path(cfg.data.path).is_file():
        from data_gen.synthetic import make_dataset

        print(f"[train] generating {cfg.make_data} synthetic {cfg.data.task} prompts in {cfg.data.path}")
        make_dataset(cfg.data.task, cfg.make_data, seed=cfg.loop.seed, out=cfg.data.path)


def rollout_metrics(batches: list[pa.RecordBatch]) -> dict[str, float]:
    """Reward parts and episode shape, straight from the Arrow columns."""
    t = pa.Table.from_batches(batches)
    if t.num_rows == 0:
        return {}
    col = lambda name: t.column(name).to_numpy()  # noqa: E731
    resp = pc.subtract(pc.list_value_length(t.column("token_ids")), t.column("prompt_len")).to_numpy()
    zooms = pc.list_value_length(t.column("points")).to_numpy()
    ends = t.column("end").to_pylist()
    return {"reward/mean": col("reward").mean(), "reward/std": col("reward").std(),
            "reward/accuracy": col("reward_accuracy").mean(), "reward/format": col("reward_format").mean(),
            "reward/format_rate": (col("reward_format") > 0).mean(),
            "reward/coordinate_valid": col("reward_coordinate").mean(),
            "reward/diversity": col("reward_diversity").mean(),
            "episode/turns": col("num_turns").mean(), "episode/zooms": zooms.mean(),
            "episode/response_len": resp.mean(), "episode/truncated": np.mean([e == "truncated" for e in ends]),
            "episode/answered": np.mean([e == "answer" for e in ends]), "episode/count": float(t.num_rows)}


LINEAGE_COLUMNS = ("episode_id", "group_id", "prompt_id", "weight_version", "reward", "reward_format",
                   "reward_accuracy", "reward_coordinate", "reward_diversity", "advantage", "end")


def lineage_table(batches: list[pa.RecordBatch], step: int, cfg: TrainConfig) -> pa.Table:
    """Per trained sample of a step: which episode and prompt, the weight version it was generated under, its
    reward parts, and its staleness (the learner trains step `step` at version step - 1) and whether the
    learner used it (not dropped as too stale), so any sample can be traced to the weights that made it."""
    t = pa.Table.from_batches(batches).select(list(LINEAGE_COLUMNS))
    staleness = pc.subtract(pa.scalar(step - 1, pa.int64()), t.column("weight_version"))
    used = pc.or_(pc.less_equal(staleness, cfg.loop.max_staleness), pa.scalar(cfg.loop.staleness_mode == "tis"))
    return (t.append_column("staleness", staleness).append_column("used", used)
            .append_column("step", pa.array([step] * t.num_rows, pa.int64())))


def log_lineage(tracker, batches: list[pa.RecordBatch], step: int, cfg: TrainConfig) -> None:
    import pyarrow.parquet as pq

    path = Path(cfg.out) / "lineage" / f"step_{step:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(lineage_table(batches, step, cfg), path)
    tracker.artifact(path, "lineage")


def run(cfg: TrainConfig) -> dict:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from actors.picture import episode_figure, show_first_episode
    from cluster.raystart import init_ray
    from cluster.tracking import Tracker, job
    from configs.schema import nccl_sync, official_defaults
    from data_gen.formats import image_root, load_prompts

    official_defaults(cfg)  # null fields -> the released recipe's values for data.task / data.mode
    if cfg.loop.mode not in ("sync", "async"):
        raise ValueError(f"loop.mode must be 'sync' or 'async', got {cfg.loop.mode!r}")
    if cfg.rollout.group_size < 2:
        raise ValueError(f"rollout.group_size must be >= 2 (group advantages need a spread), got "
                         f"{cfg.rollout.group_size}")
    nccl = nccl_sync(cfg.cluster)  # also refuses GPU placements that cannot run
    ckpt = resume.latest(cfg.out) if cfg.resume else None  # before Ray starts: a bad resume fails fast
    changes = resume.check(ckpt, cfg) if ckpt else []
    if not ckpt and (old := resume.complete_dirs(cfg.out)):  # cluster/prelaunch.py stops such a run first; a
        # new run's saves must never sit beside another run's, where `--resume` could pick the other's
        raise ValueError(f"out={cfg.out} holds an earlier run's resumable checkpoints ({old[-1].name}): "
                         f"`vigorl train --resume {cfg.out}` goes on from it, --overwrite removes them")
    prepare(cfg)
    # data.path in any format data_gen/formats.py reads, or a benchmark's items (`benchmark=`); the rollout actors
    # read it with the same loader
    ledger = open_ledger([r.prompt_id for r in load_prompts(cfg)[0]], cfg, ckpt)
    c = cfg.cluster
    ray = init_ray(c.address, c.rollout_actors * c.rollout_cpus + c.learner_ranks * c.learner_cpus, cfg.verbose)
    tracker = Tracker(cfg, run_id=ckpt.state["run_id"] if ckpt else None, changes=changes)
    resume.write_config(cfg, cfg.out)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    n_actors, per_step = cfg.cluster.rollout_actors, cfg.loop.prompts_per_step
    pool = RolloutPool(ray, cfg, n_actors)
    if shares_gpu(cfg.cluster):
        pool.wait_started()  # vLLM sizes its share of the shared GPU at start-up: it goes first
    learners = make_learner(ray, cfg)
    learner_nodes = waits.get(ray, [r.node_id.remote() for r in learners], cfg.cluster.start_timeout_s,
                              f"{len(learners)} learner rank(s) starting", "cluster.start_timeout_s")
    pool.learner_node = learner_nodes[0]
    tracker.watch_gpus(ray, lambda: {"learner": learner_nodes, "rollout": pool.nodes()})  # GPU metrics per role
    pool.republish = lambda: put_weights(ray, learners, pool, cfg.learner.zero_stage, store=True)
    if nccl:  # one NCCL group: learner rank 0 + every vLLM worker, once every engine is up (the group's store
        # waits 300 s for its members; N engines loading a 7B VLM can take longer)
        ray.get([a.get_version.remote() for a in pool.slots], timeout=cfg.cluster.start_timeout_s)
        world = 1 + n_actors * cfg.cluster.tensor_parallel_size
        address, port = ray.get(learners[0].nccl_open.remote(world))
        ray.get([a.nccl_join.remote(address, port, world) for a in pool.slots], timeout=cfg.cluster.sync_timeout_s)
    first = restore(ray, learners, pool, nccl, cfg, ckpt, changes) + 1 if ckpt else 1
    # split a step's prompts over the actors: chunks of ceil(per_step / n_actors)
    chunk = -(-per_step // n_actors)
    chunks_per_step = -(-per_step // chunk)
    queue = RolloutQueue(pool, ledger, chunk,
                         chunks_per_step * (1 if cfg.loop.mode == "sync" else max(1, cfg.loop.max_queue)))
    t_start, learner_busy, summary = time.perf_counter(), 0.0, {}
    say(f"[train] {cfg.loop.steps} steps, {per_step} prompts x {cfg.rollout.group_size} episodes, "
        f"{n_actors} rollout actor(s), mode={cfg.loop.mode}; MLflow run {tracker.run_id}" +
        ("" if cfg.verbose else f"\n[train] actor and engine output: {Path(cfg.out).resolve() / 'logs'}/ "
                                f"(--verbose: on the console)"))
    bar = tqdm(total=cfg.loop.steps, initial=first - 1, desc="train", unit="step", file=sys.stdout,
               disable=None)  # off without a tty
    with job(tracker, ray), driver_file(cfg.out, tracker.run_id):
        last = first - 1  # the last step trained
        for step in range(first, cfg.loop.steps + 1):
            if stop_requested(cfg.out):  # `vigorl stop OUT`
                say(f"[train] stop asked for: ending after step {last} of {cfg.loop.steps}")
                break
            t0 = time.perf_counter()
            queue.follow(requested_scale(cfg.out))  # `vigorl scale OUT --rollout-actors K`
            queue.fill()
            taken, stats = queue.take(chunks_per_step)
            t1 = time.perf_counter()
            m = waits.get(ray, [r.train_step.remote([c.batch for c in taken], cfg.loop.max_staleness,
                                                    cfg.loop.staleness_mode, cfg.loop.tis_cap, cfg.loop.learner_delay_s)
                                for r in learners], cfg.cluster.learner_timeout_s, f"learner train_step of step {step}",
                          "cluster.learner_timeout_s")[0]
            ahead = queue.in_flight()  # async: calls each actor runs before its load
            loads, sends = publish(ray, learners, pool, nccl, cfg.learner.zero_stage)
            t2 = time.perf_counter()
            if cfg.loop.mode == "sync" or nccl:  # async: the loads queue behind the actors' running rollouts
                waited = pool.load_all(loads, ahead) + ray.get(sends, timeout=cfg.cluster.sync_timeout_s)
                m["weight_sync_actor_s"] = max(waited, default=0.0)
            t3 = time.perf_counter()
            learner_busy += t2 - t1
            batches = ray.get([c.batch for c in taken])
            gen_s = sum(s["generate_s"] for s in stats)
            m |= rollout_metrics(batches) | ledger.counts() | {
                "faults/actor_restarts": pool.restarts, "cluster/rollout_actors": len(pool),
                "memory/driver_rss_mb": rss_mb(), "memory/rollout_rss_mb": max(s["rss_mb"] for s in stats),
                "time/step_s": t3 - t0, "time/wait_rollouts_s": t1 - t0, "time/learner_s": t2 - t1,
                "time/weight_sync_s": t3 - t2, "time/generate_s": gen_s,
                "learner_idle_frac": 1.0 - learner_busy / (t3 - t_start),
                "rollout_tokens_per_s": sum(s["response_tokens"] for s in stats) / max(gen_s, 1e-9),
                "train_tokens_per_s": m.get("tokens", 0.0) / max(m.get("time/train_s", 0.0), 1e-9),
                "rollout_version_lag": m.get("staleness_max", 0.0)}
            tracker.metrics(m, step)
            log_lineage(tracker, batches, step, cfg)
            if step == 1:
                say(show_first_episode(batches[0], tokenizer, image_root(cfg.data), Path(cfg.out) / "first_episode"))
            if cfg.tracking.picture_every and (step == 1 or step % cfg.tracking.picture_every == 0):
                figure = episode_figure(batches[0], tokenizer, image_root(cfg.data), k=3)
                tracker.image(figure, key="episodes", step=step)  # the UI's image slider
            if cfg.tracking.checkpoint_every and step % cfg.tracking.checkpoint_every == 0:
                save_checkpoint(ray, learners, tracker, cfg, step, ledger)
            bar.update()
            say(f"[train] step {step}/{cfg.loop.steps} reward {m.get('reward/mean', 0):.3f} "
                f"acc {m.get('reward/accuracy', 0):.2f} format {m.get('reward/format_rate', 0):.2f} "
                f"zooms {m.get('episode/zooms', 0):.2f} loss {m.get('loss', float('nan')):.4f} "
                f"kl {m.get('kl', 0):.4f} stale {m['staleness_max']:.0f} {t3 - t0:.1f}s")
            summary, last = m, step
        bar.close()
        if last >= first and (not cfg.tracking.checkpoint_every or last % cfg.tracking.checkpoint_every):
            save_checkpoint(ray, learners, tracker, cfg, last, ledger)
        ray.get(learners[0].close.remote())  # its shared-memory weight file
    print(f"[train] done. MLflow run {tracker.run_id} in {tracker.uri}\n[train] open the UI: {tracker.ui_command()}")
    return {"run_id": tracker.run_id, "tracking_uri": tracker.uri, "last": summary}


def make_learner(ray, cfg: TrainConfig) -> list:
    """The learner's ranks as Ray actors in one torch.distributed group (rank 0's node is the master)."""
    from cluster.raystart import log_file
    from learner.actor import LearnerActor

    n = cfg.cluster.learner_ranks
    if n < 1:
        raise ValueError(f"cluster.learner_ranks must be >= 1, got {n}")
    cls = ray.remote(LearnerActor).options(num_cpus=cfg.cluster.learner_cpus, num_gpus=cfg.cluster.learner_gpus)
    threads = torch_threads(cfg.cluster, "learner", cfg.loop.mode == "sync")
    from data_gen.formats import image_root

    ranks = [cls.remote(cfg.model.path, cfg.learner, str(image_root(cfg.data)), cfg.loop.steps, r, n,
                        log_file(cfg.out, f"learner-{r}", cfg.verbose), threads) for r in range(n)]
    if n > 1:
        addr, port = waits.get(ray, ranks[0].master_endpoint.remote(), cfg.cluster.start_timeout_s,
                               "learner rank 0 starting", "cluster.start_timeout_s")
        waits.get(ray, [r.setup.remote(addr, port) for r in ranks], cfg.cluster.start_timeout_s,
                  f"{n} learner ranks joining their process group", "cluster.start_timeout_s")
    return ranks


def publish(ray, learners: list, pool: RolloutPool, nccl: bool, zero_stage: int) -> tuple[list, list]:
    """Fan the learner's new version out to every rollout actor; returns the refs of the load calls (one per
    slot) and of the learner's side of the transfer (NCCL's send, else none). NCCL: rank 0 stages a gathered
    copy, then broadcasts while every engine receives; otherwise `put_weights`, and loads that queue after
    the actors' running rollouts."""
    if nccl:
        gathers = [r.gather_only.remote() for r in learners[1:]] if zero_stage == 3 else []
        version, meta = ray.get(learners[0].nccl_meta.remote())
        ray.get(gathers)
        loads = [a.nccl_receive.remote(version, meta) for a in pool.slots]
        return loads, [learners[0].nccl_send.remote()]
    put_weights(ray, learners, pool, zero_stage)
    return [a.load_weights.remote(*pool.weights) for a in pool.slots], []


def put_weights(ray, learners: list, pool: RolloutPool, zero_stage: int, store: bool | None = None) -> None:
    """Publish the learner's weights as `pool.weights` (what every load and every replacement actor reads).
    Shared memory (`shm_sync`): rank 0 rewrites its weight file and actors on its node copy from it; the
    object store too (one put by rank 0, a zero-copy get per actor) when `store` — by default when shared
    memory is off or an actor runs on another node. Under ZeRO-3 the other ranks take part in the gather."""
    from configs.schema import shm_sync

    gathers = [r.gather_only.remote() for r in learners[1:]] if zero_stage == 3 else []
    shm = shm_sync(pool.cfg.cluster)
    store = (not shm or pool.elsewhere(pool.slots)) if store is None else store
    pool.weights, pool.stored = tuple(learners[0].publish.options(num_returns=2).remote(shm, store)), store
    ray.get(gathers)


def save_checkpoint(ray, learners: list, tracker, cfg: TrainConfig, step: int, ledger: Ledger) -> None:
    """The HF export (OUT/checkpoints/step_N with its lineage file, cluster.tracking.RUN_FILE; also uploaded to
    MLflow in the background with tracking.log_checkpoints), then the resumable checkpoint beside it
    (OUT/resume/step_N: cluster.resume). The ledger is read here, at the step boundary: prompts queued for
    later steps (async) count as not done and are generated again by a resumed run."""
    from configs.schema import to_flat_dict

    path = Path(cfg.out).resolve() / "checkpoints" / f"step_{step:05d}"
    ray.get([r.save_hf.remote(str(path), tracker.run_info(step)) for r in learners])
    tracker.checkpoint(path, f"checkpoints/step_{step:05d}")
    state = {"ledger": ledger.state_dict(), "run_id": tracker.run_id, "tracking_uri": tracker.uri,
             "model_fingerprint": resume.model_fingerprint(cfg.model.path),
             "config": {k: str(v) for k, v in to_flat_dict(cfg).items()}}
    where = resume.save(ray, learners, cfg.out, step, state, cfg.tracking.keep_resume)
    say(f"[train] checkpoint step {step}: {path} (HF format), {where} (resumable)")


def open_ledger(prompt_ids: list[str], cfg: TrainConfig, ckpt: resume.Checkpoint | None) -> Ledger:
    """A new ledger, or the checkpoint's (same queue, cursor, epoch and shuffling RNG) when resuming."""
    if ckpt is None:
        return Ledger(prompt_ids, seed=cfg.loop.seed)
    ledger = Ledger.from_state(ckpt.state["ledger"])
    if set(ledger.ids) != set(prompt_ids):
        raise resume.ResumeError(
            f"data.path={cfg.data.path} holds other prompts than the checkpoint {ckpt.path} was trained on "
            f"({len(prompt_ids)} now, {len(ledger.ids)} then, {len(set(prompt_ids) ^ set(ledger.ids))} differ)")
    return ledger


def restore(ray, learners: list, pool: RolloutPool, nccl: bool, cfg: TrainConfig, ckpt: resume.Checkpoint,
            changes: list[str]) -> int:
    """Load the checkpoint into every learner rank and its weights into every rollout actor (before they
    generate); returns the step it was saved at."""
    versions = ray.get([r.load_state.remote(str(ckpt.path)) for r in learners])
    loads, sends = publish(ray, learners, pool, nccl, cfg.learner.zero_stage)
    pool.load_all(loads)
    ray.get(sends, timeout=cfg.cluster.sync_timeout_s)
    say(f"[train] resumed from {ckpt.path}: step {ckpt.step}, weight version {versions[0]}, "
        f"{ckpt.state['ledger']['done']} prompts done" + "".join(f"\n[train] config changed: {c}" for c in changes))
    return ckpt.step
