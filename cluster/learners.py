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

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster import resume, waits
from cluster.ledger import Ledger
from configs.placement import nccl_sync, shm_sync, torch_threads
from configs.schema import TrainConfig


class LearnerLost(RuntimeError):
    """A learner rank is gone (its process killed, out of memory, its node lost): the group's collectives cannot
    go on without it. The driver starts a new group from the newest resumable checkpoint (cluster/train.py)."""


def lost_rank(ray, e: BaseException, ranks: list) -> str | None:
    """What `e` says about `ranks`: "learner rank i died (...)" when it is Ray's word that one of them is gone
    (a call on a dead rank, or an argument a dead rank was to make, e.g. a publish a weight load waits for:
    Ray raises the rank's ActorDiedError then, wrapped in the caller's RayTaskError), or the weights a dead
    node held are lost; else None (the error is someone else's)."""
    if isinstance(e, ray.exceptions.ObjectLostError):
        return f"learner weights lost with their node ({type(e).__name__})"
    if not isinstance(e, ray.exceptions.RayActorError):
        return None
    ids = [r._actor_id.hex() for r in ranks]
    who = getattr(e, "actor_id", None)
    return f"learner rank {ids.index(who)} died ({type(e).__name__})" if who in ids else None


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
    export: Path | None  # OUT/checkpoints/step_N, with its lineage file (cluster.tracking.RUN_FILE); None: resumable only
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
    try:
        if n > 1:
            addr, port = waits.get(ray, ranks[0].master_endpoint.remote(), cfg.cluster.start_timeout_s,
                                   "learner rank 0 starting", "cluster.start_timeout_s")
            waits.get(ray, [r.setup.remote(addr, port) for r in ranks], cfg.cluster.start_timeout_s,
                      f"{n} learner ranks joining their process group", "cluster.start_timeout_s")
    except BaseException:  # a group that did not form holds no resources a next try needs
        for r in ranks:
            ray.kill(r, no_restart=True)
        raise
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
        self.restarts = 0  # learner groups started after the first (`restart`)
        self.ranks: list = []
        self._start()
        pool.attach(self)

    def _start(self) -> None:
        try:
            self.ranks = start_ranks(self.ray, self.cfg)
        except (self.ray.exceptions.RayActorError, TimeoutError) as e:  # died starting (no memory, node lost), or
            # never placed: a restart that failed (the first start's error names the same cause)
            raise LearnerLost(f"learner ranks starting: {type(e).__name__}: {e}") from e
        self.nodes = self._get([r.node_id.remote() for r in self.ranks], f"{len(self.ranks)} learner rank(s) starting",
                               "cluster.start_timeout_s")
        self.node = self.nodes[0]
        self.weights: tuple | None = None
        self.stored = False
        self.trained: int | None = None
        self.saved: int | None = None
        self.exported: int | None = None

    def _get(self, refs, what: str, key: str = "cluster.learner_timeout_s"):
        """`waits.get` on the ranks' calls; a rank found gone raises LearnerLost (Ray fails the get at the first
        dead rank's call, not after the others' deadline)."""
        c = self.cfg.cluster
        timeout = {"cluster.start_timeout_s": c.start_timeout_s, "cluster.sync_timeout_s": c.sync_timeout_s
                   }.get(key, c.learner_timeout_s)
        with self._lost_as(what):
            return waits.get(self.ray, refs, timeout, what, key)

    @contextmanager
    def _lost_as(self, what: str):
        """Ray's errors of a block of rank calls that say a rank is gone, raised as LearnerLost naming `what`."""
        try:
            yield
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ObjectLostError) as e:
            raise LearnerLost(f"{what}: {lost_rank(self.ray, e, self.ranks) or type(e).__name__}") from e
        except self.ray.exceptions.RayTaskError as e:
            # with several ranks the survivors' collectives fail too (gloo: "connection closed by peer"), and
            # their error may reach the driver before Ray's word that a rank is gone: ask the ranks
            if why := self.dead_rank():
                raise LearnerLost(f"{what}: {why}") from e
            raise

    def dead_rank(self) -> str | None:
        """"learner rank i died (...)" for the first rank Ray says is gone, else None. A rank that does not
        answer in 60 s (busy, or stuck in a collective) is not known dead."""
        for i, r in enumerate(self.ranks):
            try:
                self.ray.get(r.node_id.remote(), timeout=60)
            except self.ray.exceptions.RayActorError as e:
                return f"learner rank {i} died ({type(e).__name__})"
            except self.ray.exceptions.GetTimeoutError:
                continue
        return None

    def lost(self, e: BaseException) -> LearnerLost | None:
        """The LearnerLost that `e`, raised by a rollout actor's weight load, means (the publish it waited for was
        a dead rank's), or None (the actor's own fault)."""
        why = lost_rank(self.ray, e, self.ranks)
        return LearnerLost(f"a weight load: {why}") if why else None

    def restart(self, ckpt: resume.Checkpoint | None, ahead: dict[int, list]) -> int:
        """Kill every rank (the live ones wait in collectives for the dead one), start a new group and load
        `ckpt` into it (None: the model itself, version 0), then its weights into every rollout actor (`ahead`:
        the calls each runs first, as in `wait`); returns the weight version. The dead rank 0's weight file is
        removed by the new rank 0's first publish (actors.shm `sweep`: its owner is gone). Not with NCCL weight
        sync (its group holds every vLLM worker and cannot be joined again): the driver refuses that first
        (cluster/train.py `restart_learner`)."""
        for r in self.ranks:
            self.ray.kill(r, no_restart=True)
        self.restarts += 1
        self._start()
        if ckpt is None:
            self._await(self.publish(), ahead)
            return 0
        version = self.restore(ckpt, ahead)
        self.trained = self.saved = ckpt.step
        from cluster.tracking_lineage import RUN_FILE

        if (Path(self.cfg.out).resolve() / "checkpoints" / f"step_{ckpt.step:05d}" / RUN_FILE).is_file():
            self.exported = ckpt.step  # its HF export is whole (the run file is written last)
        return version

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

    def restore(self, ckpt: resume.Checkpoint, ahead: dict[int, list] | None = None) -> int:
        """Load the checkpoint into every rank and its weights into every rollout actor (before they generate;
        `ahead`: as in `wait`); returns the weight version it restored."""
        versions = self._get([r.load_state.remote(str(ckpt.path)) for r in self.ranks], f"loading {ckpt.path}")
        self._await(self.publish(), ahead)
        return versions[0]

    def train(self, taken: list, step: int) -> tuple[dict[str, float], list[int]]:
        """One training step on every rank over the step's rollout chunks (their Arrow batches go by object
        reference: the driver never copies them); returns rank 0's metrics and the indices (into `taken`) of
        the chunks whose batch was lost, left out of the step."""
        loop = self.cfg.loop
        m = self._get([r.train_step.remote([c.batch for c in taken], loop.max_staleness, loop.staleness_mode,
                                           loop.tis_cap, loop.learner_delay_s) for r in self.ranks],
                      f"learner train_step of step {step}")[0]
        self.trained = step
        lost = self._get(self.ranks[0].lost_batch_ids.remote(), "lost batch ids") if m["lost_batches"] else []
        return m, lost

    def publish(self) -> Loads:
        """Fan the new version out to every rollout actor. NCCL: rank 0 stages a gathered copy, then broadcasts
        while every engine receives; otherwise `put_weights`, and loads that queue after the actors' running
        rollouts."""
        ranks, pool = self.ranks, self.pool
        if self.nccl:
            gathers = [r.gather_only.remote() for r in ranks[1:]] if self.cfg.learner.zero_stage == 3 else []
            version, meta = self._get(ranks[0].nccl_meta.remote(), "NCCL weight staging")
            self._get(gathers, "ZeRO-3 weight gather")
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
        return self.pool.load_all(loads.loads, ahead) + self._get(loads.sends, "NCCL weight send",
                                                                  "cluster.sync_timeout_s")

    def put_weights(self, store: bool | None = None) -> None:
        """Publish the weights as `weights` (what every load and every replacement actor reads). Shared memory
        (`shm_sync`): rank 0 rewrites its weight file and actors on its node copy from it; the object store too
        (one put by rank 0, a zero-copy get per actor) when `store` — by default when shared memory is off or an
        actor runs on another node. Under ZeRO-3 the other ranks take part in the gather."""
        gathers = [r.gather_only.remote() for r in self.ranks[1:]] if self.cfg.learner.zero_stage == 3 else []
        shm = shm_sync(self.cfg.cluster)
        store = (not shm or self.pool.elsewhere(self.pool.slots)) if store is None else store
        self.weights, self.stored = tuple(self.ranks[0].publish.options(num_returns=2).remote(shm, store)), store
        self._get(gathers, "ZeRO-3 weight gather")

    def republish(self) -> None:
        """Publish again with the object store: for a new rollout actor on another node than rank 0 when the
        last publish was shared memory only (`RolloutPool` calls it)."""
        self.put_weights(store=True)

    def checkpoint_if_due(self, step: int, ledger: Ledger) -> Saved | None:
        """A checkpoint every `tracking.checkpoint_every` steps (0: none but the last); a resumable one alone
        every `tracking.resume_every` steps in between."""
        t = self.cfg.tracking
        if t.checkpoint_every and step % t.checkpoint_every == 0:
            return self.save(step, ledger)
        if t.resume_every and step % t.resume_every == 0:
            return self.save(step, ledger, export=False)
        return None

    def save_last(self, ledger: Ledger) -> Saved | None:
        """The last step trained, at the end of the run, unless it was just saved with its HF export (or none was
        trained)."""
        if self.trained is None or self.exported == self.trained:
            return None
        return self.save(self.trained, ledger)

    def save(self, step: int, ledger: Ledger, export: bool = True) -> Saved:
        """The HF export (OUT/checkpoints/step_N with its lineage file, cluster.tracking.RUN_FILE; also uploaded
        to MLflow in the background with tracking.log_checkpoints; not with `export=False`), then the resumable
        checkpoint beside it (OUT/resume/step_N: cluster.resume). The ledger is read here, at the step boundary:
        prompts queued for later steps (async) count as not done and are generated again by a resumed run."""
        from configs.load import to_flat_dict

        cfg, tracker = self.cfg, self.tracker
        path = Path(cfg.out).resolve() / "checkpoints" / f"step_{step:05d}"
        if export:
            self._get([r.save_hf.remote(str(path), tracker.run_info(step)) for r in self.ranks],
                      f"HF export of step {step}")
            tracker.checkpoint(path, f"checkpoints/step_{step:05d}")
            self.exported = step
        state = {"ledger": ledger.state_dict(), "run_id": tracker.run_id, "tracking_uri": tracker.uri,
                 "model_fingerprint": resume.model_fingerprint(cfg.model.path),
                 "config": {k: str(v) for k, v in to_flat_dict(cfg).items()}}
        where = resume.step_dir(cfg.out, step)
        if self.saved != step:  # a checkpoint of this step already complete (resume_every) is not written again
            with self._lost_as(f"resumable checkpoint of step {step}"):
                where = resume.save(self.ray, self.ranks, cfg.out, step, state, cfg.tracking.keep_resume)
        self.saved = step
        return Saved(step, path if export else None, where)

    def close(self) -> None:
        """Remove rank 0's shared-memory weight file (the actors keep their mappings). A rank 0 gone by now has
        nothing left to lose: its file is swept by the next learner on its node (actors.shm `sweep`)."""
        try:
            self._get(self.ranks[0].close.remote(), "closing the weight file")
        except LearnerLost:
            pass
