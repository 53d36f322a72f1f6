"""`vigorl train`: the driver of the actor-learner loop.

The driver is the scheduler: it hands prompt ids to rollout actors (the ledger accounts for each),
passes the rollout actors' Arrow batches to the learner by object reference (the driver never copies
them), and fans the learner's versioned weights out to the actors. Sync mode generates then trains;
async mode keeps up to `loop.max_queue` steps of rollouts queued ahead of the learner (backpressure:
nothing more is dispatched while the queue is full), so actors generate with weights at most
`max_staleness` versions old; the learner drops or corrects anything older.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.config import TrainConfig
from cluster.ledger import Ledger


@dataclass
class Chunk:
    """One dispatched rollout call."""

    ticket: int
    batch: object  # ObjectRef -> pa.RecordBatch
    stats: object  # ObjectRef -> dict


class RolloutQueue:
    """Rollout calls in flight or done but not yet trained on, oldest first. `fill` dispatches prompt
    chunks round-robin only into free slots (backpressure: a full queue stops generation, so memory
    stays flat); `take` waits for the oldest chunks and marks their prompts done in the ledger."""

    def __init__(self, actors: list, ledger: Ledger, chunk: int, capacity: int):
        self.actors, self.ledger, self.chunk, self.capacity = actors, ledger, chunk, capacity
        self.chunks: deque[Chunk] = deque()
        self.next_actor = 0

    def fill(self) -> None:
        while len(self.chunks) < self.capacity:
            ticket, ids = self.ledger.take(self.chunk)
            batch, stats = self.actors[self.next_actor].rollout_batch.options(num_returns=2).remote(ids)
            self.chunks.append(Chunk(ticket, batch, stats))
            self.next_actor = (self.next_actor + 1) % len(self.actors)

    def take(self, ray, n: int) -> tuple[list[Chunk], list[dict]]:
        taken = [self.chunks.popleft() for _ in range(n)]
        stats = ray.get([c.stats for c in taken])
        for c in taken:
            self.ledger.complete(c.ticket)
        return taken, stats


def prepare(cfg: TrainConfig) -> None:
    """Build the tiny model / synthetic data when the recipe asks for them and they are missing."""
    from data_gen.rows import PROMPTS_FILE

    if cfg.make_tiny and not (Path(cfg.model.path) / "config.json").is_file():
        from data_gen.tiny_model import make_tiny_model

        print(f"[train] building a tiny random Qwen2.5-VL ({cfg.make_tiny} vocab) in {cfg.model.path}")
        make_tiny_model(cfg.model.path, vocab=cfg.make_tiny, min_pixels=cfg.model.min_pixels,
                        max_pixels=cfg.model.max_pixels)
    if cfg.make_data and not (Path(cfg.data.path) / PROMPTS_FILE).is_file():
        from data_gen.synthetic import make_dataset

        print(f"[train] generating {cfg.make_data} synthetic {cfg.data.task} prompts in {cfg.data.path}")
        make_dataset(cfg.data.task, cfg.make_data, seed=cfg.loop.seed, out=cfg.data.path)


def init_ray(address: str, cpus: float):
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray on 127.0.0.1 with `cpus` CPUs. The
    vLLM CPU settings of this process travel to every worker."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind 127.0.0.1
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
                                      "VLLM_ENABLE_V1_MULTIPROCESSING", "TOKENIZERS_PARALLELISM") if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(num_cpus=max(1, int(np.ceil(cpus))), include_dashboard=False, runtime_env={"env_vars": env},
                 log_to_driver=True)
    return ray


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
    tracker.mlflow.log_artifact(str(path), artifact_path="lineage")


def episode_figure(batch: pa.RecordBatch, tokenizer, data_root: str, k: int = 1):
    """A picture of the batch's first `k` episodes, stacked: points and crops on each image, turns as text."""
    from PIL import Image

    from actors.picture import episode_picture
    from actors.rollout import transcript
    from actors.trajectory import from_batch
    from actors.zoom import crop_box
    from learner.logprobs import rebuild_images

    panels = []
    for t in from_batch(batch.slice(0, k)):
        images = rebuild_images(t.images, data_root)
        boxes = [crop_box(r.point, (r.width, r.height), r.half_size) for r in t.images[1:]]
        text = transcript(tokenizer, t.token_ids, t.prompt_len)
        lines = [f"prompt {t.prompt_id}  version {t.weight_version}  reward {t.reward:.2f} "
                 f"(acc {t.reward_accuracy:.2f}, format {t.reward_format:.2f})  end={t.end}"] + text.split("\n")[:60]
        panels.append(episode_picture(images[0], t.points, boxes, images[1:], lines))
    canvas = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), (255, 255, 255))
    y = 0
    for p in panels:
        canvas.paste(p, (0, y))
        y += p.height
    return canvas


def show_first_episode(batch: pa.RecordBatch, tokenizer, cfg: TrainConfig) -> None:
    """Print the run's first scored episode in full and save its picture and crops under `out`."""
    from actors.rollout import transcript
    from actors.trajectory import from_batch
    from learner.logprobs import rebuild_images

    t = from_batch(batch.slice(0, 1))[0]
    out = Path(cfg.out) / "first_episode"
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(rebuild_images(t.images, cfg.data.path)[1:]):
        img.save(out / f"crop_{i + 1}.png")
    episode_figure(batch, tokenizer, cfg.data.path).save(out / "episode.png")
    text = transcript(tokenizer, t.token_ids, t.prompt_len)
    print(f"\n=== first episode: prompt {t.prompt_id}, weight version {t.weight_version} ===\n{text}\n"
          f"--- zoom points {t.points}; reward {t.reward:.3f} (accuracy {t.reward_accuracy:.2f}, format "
          f"{t.reward_format:.2f}, diversity {t.reward_diversity:.2f}); end={t.end}; advantage {t.advantage:+.3f}\n"
          f"--- picture and crops in {out}/\n", flush=True)


def run(cfg: TrainConfig) -> dict:
    from transformers import AutoTokenizer

    from actors.actor import RolloutActor, nccl_sync
    from cluster.config import official_defaults
    from cluster.tracking import Tracker, job
    from data_gen.rows import read_rows

    official_defaults(cfg)  # null fields -> the released recipe's values for data.task / data.mode
    if cfg.loop.mode not in ("sync", "async"):
        raise ValueError(f"loop.mode must be 'sync' or 'async', got {cfg.loop.mode!r}")
    if cfg.rollout.group_size < 2:
        raise ValueError(f"rollout.group_size must be >= 2 (group advantages need a spread), got "
                         f"{cfg.rollout.group_size}")
    prepare(cfg)
    ledger = Ledger([r.prompt_id for r in read_rows(cfg.data.path)], seed=cfg.loop.seed)
    c = cfg.cluster
    ray = init_ray(c.address, c.rollout_actors * c.rollout_cpus + c.learner_ranks * c.learner_cpus)
    tracker = Tracker(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    n_actors, per_step = cfg.cluster.rollout_actors, cfg.loop.prompts_per_step
    actors = [ray.remote(RolloutActor).options(num_cpus=cfg.cluster.rollout_cpus, num_gpus=cfg.cluster.rollout_gpus)
              .remote(cfg, i) for i in range(n_actors)]
    learners = make_learner(ray, cfg)
    nccl = nccl_sync(cfg)
    if nccl:  # one NCCL group: learner rank 0 + every vLLM worker
        world = 1 + n_actors * cfg.cluster.tensor_parallel_size
        address, port = ray.get(learners[0].nccl_open.remote(world))
        ray.get([a.nccl_join.remote(address, port, world) for a in actors], timeout=cfg.cluster.sync_timeout_s)
    # split a step's prompts over the actors: chunks of ceil(per_step / n_actors)
    chunk = -(-per_step // n_actors)
    chunks_per_step = -(-per_step // chunk)
    queue = RolloutQueue(actors, ledger, chunk,
                         chunks_per_step * (1 if cfg.loop.mode == "sync" else max(1, cfg.loop.max_queue)))
    t_start, learner_busy, summary = time.perf_counter(), 0.0, {}
    print(f"[train] {cfg.loop.steps} steps, {per_step} prompts x {cfg.rollout.group_size} episodes, "
          f"{n_actors} rollout actor(s), mode={cfg.loop.mode}; MLflow run {tracker.run_id}")
    with job(tracker, ray):
        for step in range(1, cfg.loop.steps + 1):
            t0 = time.perf_counter()
            queue.fill()
            taken, stats = queue.take(ray, chunks_per_step)
            t1 = time.perf_counter()
            m = ray.get([r.train_step.remote([c.batch for c in taken], cfg.loop.max_staleness,
                                             cfg.loop.staleness_mode, cfg.loop.tis_cap) for r in learners])[0]
            loads = publish(ray, learners, actors, nccl, cfg.learner.zero_stage)
            t2 = time.perf_counter()
            if cfg.loop.mode == "sync" or nccl:  # async: the loads queue behind the actors' running rollouts
                m["weight_sync_actor_s"] = max(ray.get(loads, timeout=cfg.cluster.sync_timeout_s))
            t3 = time.perf_counter()
            learner_busy += t2 - t1
            batches = ray.get([c.batch for c in taken])
            gen_s = sum(s["generate_s"] for s in stats)
            m |= rollout_metrics(batches) | ledger.counts() | {
                "time/step_s": t3 - t0, "time/wait_rollouts_s": t1 - t0, "time/learner_s": t2 - t1,
                "time/weight_sync_s": t3 - t2, "time/generate_s": gen_s,
                "learner_idle_frac": 1.0 - learner_busy / (t3 - t_start),
                "rollout_tokens_per_s": sum(s["response_tokens"] for s in stats) / max(gen_s, 1e-9),
                "train_tokens_per_s": m.get("tokens", 0.0) / max(m.get("time/train_s", 0.0), 1e-9),
                "rollout_version_lag": m.get("staleness_max", 0.0)}
            tracker.metrics(m, step)
            log_lineage(tracker, batches, step, cfg)
            if step == 1:
                show_first_episode(batches[0], tokenizer, cfg)
            if cfg.tracking.picture_every and (step == 1 or step % cfg.tracking.picture_every == 0):
                figure = episode_figure(batches[0], tokenizer, cfg.data.path, k=3)
                tracker.image(figure, f"episodes/step_{step:05d}.png")
            if cfg.tracking.checkpoint_every and step % cfg.tracking.checkpoint_every == 0:
                save_checkpoint(ray, learners, tracker, cfg, step)
            print(f"[train] step {step}/{cfg.loop.steps} reward {m.get('reward/mean', 0):.3f} "
                  f"acc {m.get('reward/accuracy', 0):.2f} format {m.get('reward/format_rate', 0):.2f} "
                  f"zooms {m.get('episode/zooms', 0):.2f} loss {m.get('loss', float('nan')):.4f} "
                  f"kl {m.get('kl', 0):.4f} stale {m['staleness_max']:.0f} {t3 - t0:.1f}s", flush=True)
            summary = m
        if not cfg.tracking.checkpoint_every or cfg.loop.steps % cfg.tracking.checkpoint_every:
            save_checkpoint(ray, learners, tracker, cfg, cfg.loop.steps)
    print(f"[train] done. MLflow run {tracker.run_id} in {tracker.uri}\n[train] open the UI: {tracker.ui_command()}")
    return {"run_id": tracker.run_id, "tracking_uri": tracker.uri, "last": summary}


def make_learner(ray, cfg: TrainConfig) -> list:
    """The learner's ranks as Ray actors in one torch.distributed group (rank 0's node is the master)."""
    from learner.actor import LearnerActor

    n = cfg.cluster.learner_ranks
    if n < 1:
        raise ValueError(f"cluster.learner_ranks must be >= 1, got {n}")
    cls = ray.remote(LearnerActor).options(num_cpus=cfg.cluster.learner_cpus, num_gpus=cfg.cluster.learner_gpus)
    ranks = [cls.remote(cfg.model.path, cfg.learner, cfg.data.path, cfg.loop.steps, r, n) for r in range(n)]
    if n > 1:
        addr, port = ray.get(ranks[0].master_endpoint.remote())
        ray.get([r.setup.remote(addr, port) for r in ranks])
    return ranks


def publish(ray, learners: list, actors, nccl: bool, zero_stage: int) -> list:
    """Fan the learner's new version out to every actor; returns the refs of the load calls.
    Object store: one put by rank 0, a zero-copy get per actor, queued after running rollouts.
    NCCL: rank 0 stages a gathered copy, then broadcasts while every engine receives.
    Under ZeRO-3 the other ranks take part in the gather."""
    learner = learners[0]
    gathers = [r.gather_only.remote() for r in learners[1:]] if zero_stage == 3 else []
    if nccl:
        version, meta = ray.get(learner.nccl_meta.remote())
        ray.get(gathers)
        loads = [a.nccl_receive.remote(version, meta) for a in actors]
        return loads + [learner.nccl_send.remote()]
    version, packed = learner.publish.options(num_returns=2).remote()
    ray.get(gathers)
    return [a.load_weights.remote(version, packed) for a in actors]


def save_checkpoint(ray, learners: list, tracker, cfg: TrainConfig, step: int) -> None:
    path = Path(cfg.out).resolve() / "checkpoints" / f"step_{step:05d}"
    ray.get([r.save_hf.remote(str(path)) for r in learners])
    tracker.artifacts(path, f"checkpoints/step_{step:05d}")
    print(f"[train] checkpoint (HF format) {path}")
