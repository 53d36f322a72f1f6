"""The learner as the driver sees it: one `LearnerGroup` owns the learner's ranks (Ray actors of
learner/actor.py in one torch.distributed group), trains them on a step's rollouts, publishes their versioned
weights to the rollout pool (an NCCL broadcast into the vLLM workers, or rank 0's shared-memory weight file
and/or the object store) and writes the run's checkpoints (the HF export, then the resumable one:
cluster/resume.py).

The rollout pool (cluster/pool.py) reads the last publish from here (`weights`, `stored`, `node`) when it
starts a replacement actor, and asks for `republish()` when that actor runs on another node than rank 0 and
the last publish was shared memory only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster import resume, waits
from cluster.ledger import Ledger
from configs.placement import nccl_sync, shm_sync, torch_threads
from configs.schema import TrainConfig


@dataclass
class Loads:
    """The weight loads one publish started: one call per rollout slot, and the learner's side of the transfer
    (NCCL's send; none otherwise)."""

    loads: list
    sends: list


@dataclass
class Saved:
    """A checkpoint written at `step`: the HF export and the resumable checkpoint beside it."""

    step: int
    export: Path  # OUT/checkpoints/step_N, with its lineage file (cluster.tracking.RUN_FILE)
    resumable: Path  # OUT/resume/step_N


def start_ranks(ray, cfg: TrainConfig) -> list:
    """The learner's ranks as Ray actors in one torch.distributed group (rank 0's node is the master)."""
    from cluster.raystart import log_file
    from data_gen.formats import image_root
    from learner.actor import LearnerActor

    n = cfg.cluster.learner_ranks
    if n < 1:
        raise ValueError(f"cluster.learner_ranks must be >= 1, got {n}")
    cls = ray.remote(LearnerActor).options(num_cpus=cfg.cluster.learner_cpus, num_gpus=cfg.cluster.learner_gpus)
    threads = torch_threads(cfg.cluster, "learner", cfg.loop.mode == "sync")
    ranks = [cls.remote(cfg.model.path, cfg.learner, str(image_root(cfg.data)), cfg.loop.steps, r, n,
                        log_file(cfg.out, f"learner-{r}", cfg.verbose), threads) for r in range(n)]
    if n > 1:
        addr, port = waits.get(ray, ranks[0].master_endpoint.remote(), cfg.cluster.start_timeout_s,
                               "learner rank 0 starting", "cluster.start_timeout_s")
        waits.get(ray, [r.setup.remote(addr, port) for r in ranks], cfg.cluster.start_timeout_s,
                  f"{n} learner ranks joining their process group", "cluster.start_timeout_s")
    return ranks


class LearnerGroup:
    """The learner's ranks of a training run and the weights they last published to `pool`.

    `ranks`: the Ray actors; `nodes`: their Ray node ids (`node`: rank 0's, where the weight file is);
    `weights`: the refs (version, where) of the last object-store / shared-memory publish (None before the
    first: a new actor then keeps the model's own weights, version 0); `stored`: whether that publish went to
    the object store too; `trained` / `saved`: the last step trained / checkpointed by this run."""

    def __init__(self, ray, cfg: TrainConfig, tracker, pool):
        self.ray, self.cfg, self.tracker, self.pool = ray, cfg, tracker, pool
        self.nccl = nccl_sync(cfg.cluster)
        self.ranks = start_ranks(ray, cfg)
        self.nodes = waits.get(ray, [r.node_id.remote() for r in self.ranks], cfg.cluster.start_timeout_s,
                               f"{len(self.ranks)} learner rank(s) starting", "cluster.start_timeout_s")
        self.node = self.nodes[0]
        self.weights: tuple | None = None
        self.stored = False
        self.trained: int | None = None
        self.saved: int | None = None
        pool.attach(self)

    def open_nccl(self) -> None:
        """With NCCL weight sync: one NCCL group of learner rank 0 + every vLLM worker, opened once every engine
        is up (the group's store waits 300 s for its members; N engines loading a 7B VLM can take longer).
        Without: nothing."""
        if not self.nccl:
            return
        ray, c, slots = self.ray, self.cfg.cluster, self.pool.slots
        ray.get([a.get_version.remote() for a in slots], timeout=c.start_timeout_s)
        world = 1 + c.rollout_actors * c.tensor_parallel_size
        address, port = ray.get(self.ranks[0].nccl_open.remote(world))
        ray.get([a.nccl_join.remote(address, port, world) for a in slots], timeout=c.sync_timeout_s)

    def restore(self, ckpt: resume.Checkpoint) -> int:
        """Load the checkpoint into every rank and its weights into every rollout actor (before they generate);
        returns the weight version it restored."""
        versions = self.ray.get([r.load_state.remote(str(ckpt.path)) for r in self.ranks])
        self._await(self.publish())
        return versions[0]

    def train(self, taken: list, step: int) -> tuple[dict[str, float], list[int]]:
        """One training step on every rank over the step's rollout chunks (their Arrow batches go by object
        reference: the driver never copies them); returns rank 0's metrics and the indices (into `taken`) of
        the chunks whose batch was lost, left out of the step."""
        loop = self.cfg.loop
        m = waits.get(self.ray, [r.train_step.remote([c.batch for c in taken], loop.max_staleness, loop.staleness_mode,
                                                     loop.tis_cap, loop.learner_delay_s) for r in self.ranks],
                      self.cfg.cluster.learner_timeout_s, f"learner train_step of step {step}",
                      "cluster.learner_timeout_s")[0]
        self.trained = step
        lost = self.ray.get(self.ranks[0].lost_batch_ids.remote()) if m["lost_batches"] else []
        return m, lost

    def publish(self) -> Loads:
        """Fan the new version out to every rollout actor. NCCL: rank 0 stages a gathered copy, then broadcasts
        while every engine receives; otherwise `put_weights`, and loads that queue after the actors' running
        rollouts."""
        ray, ranks, pool = self.ray, self.ranks, self.pool
        if self.nccl:
            gathers = [r.gather_only.remote() for r in ranks[1:]] if self.cfg.learner.zero_stage == 3 else []
            version, meta = ray.get(ranks[0].nccl_meta.remote())
            ray.get(gathers)
            return Loads([a.nccl_receive.remote(version, meta) for a in pool.slots], [ranks[0].nccl_send.remote()])
        self.put_weights()
        return Loads([a.load_weights.remote(*self.weights) for a in pool.slots], [])

    def wait(self, loads: Loads, ahead: dict[int, list]) -> dict[str, float]:
        """Sync mode and NCCL: wait until every rollout actor has the new weights (`ahead`: the rollout calls
        queued on each actor before its load, `RolloutQueue.in_flight`) and return {"weight_sync_actor_s": the
        slowest load}. Async without NCCL: the loads queue behind the actors' running rollouts; nothing waits."""
        if self.cfg.loop.mode == "sync" or self.nccl:
            return {"weight_sync_actor_s": max(self._await(loads, ahead), default=0.0)}
        return {}

    def _await(self, loads: Loads, ahead: dict[int, list] | None = None) -> list[float]:
        return self.pool.load_all(loads.loads, ahead) + self.ray.get(loads.sends,
                                                                     timeout=self.cfg.cluster.sync_timeout_s)

    def put_weights(self, store: bool | None = None) -> None:
        """Publish the weights as `weights` (what every load and every replacement actor reads). Shared memory
        (`shm_sync`): rank 0 rewrites its weight file and actors on its node copy from it; the object store too
        (one put by rank 0, a zero-copy get per actor) when `store` — by default when shared memory is off or an
        actor runs on another node. Under ZeRO-3 the other ranks take part in the gather."""
        gathers = [r.gather_only.remote() for r in self.ranks[1:]] if self.cfg.learner.zero_stage == 3 else []
        shm = shm_sync(self.cfg.cluster)
        store = (not shm or self.pool.elsewhere(self.pool.slots)) if store is None else store
        self.weights, self.stored = tuple(self.ranks[0].publish.options(num_returns=2).remote(shm, store)), store
        self.ray.get(gathers)

    def republish(self) -> None:
        """Publish again with the object store: for a new rollout actor on another node than rank 0 when the
        last publish was shared memory only (`RolloutPool` calls it)."""
        self.put_weights(store=True)

    def checkpoint_if_due(self, step: int, ledger: Ledger) -> Saved | None:
        """A checkpoint every `tracking.checkpoint_every` steps (0: none but the last)."""
        every = self.cfg.tracking.checkpoint_every
        return self.save(step, ledger) if every and step % every == 0 else None

    def save_last(self, ledger: Ledger) -> Saved | None:
        """The last step trained, at the end of the run, unless it was just saved (or none was trained)."""
        if self.trained is None or self.saved == self.trained:
            return None
        return self.save(self.trained, ledger)

    def save(self, step: int, ledger: Ledger) -> Saved:
        """The HF export (OUT/checkpoints/step_N with its lineage file, cluster.tracking.RUN_FILE; also uploaded
        to MLflow in the background with tracking.log_checkpoints), then the resumable checkpoint beside it
        (OUT/resume/step_N: cluster.resume). The ledger is read here, at the step boundary: prompts queued for
        later steps (async) count as not done and are generated again by a resumed run."""
        from configs.load import to_flat_dict

        cfg, tracker = self.cfg, self.tracker
        path = Path(cfg.out).resolve() / "checkpoints" / f"step_{step:05d}"
        self.ray.get([r.save_hf.remote(str(path), tracker.run_info(step)) for r in self.ranks])
        tracker.checkpoint(path, f"checkpoints/step_{step:05d}")
        state = {"ledger": ledger.state_dict(), "run_id": tracker.run_id, "tracking_uri": tracker.uri,
                 "model_fingerprint": resume.model_fingerprint(cfg.model.path),
                 "config": {k: str(v) for k, v in to_flat_dict(cfg).items()}}
        where = resume.save(self.ray, self.ranks, cfg.out, step, state, cfg.tracking.keep_resume)
        self.saved = step
        return Saved(step, path, where)

    def close(self) -> None:
        """Remove rank 0's shared-memory weight file (the actors keep their mappings)."""
        self.ray.get(self.ranks[0].close.remote())
