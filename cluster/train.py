"""`vigorl train`: the driver of the actor-learner loop.

The driver is the scheduler: it hands prompt ids to rollout actors (the ledger accounts for each),
passes the rollout actors' Arrow batches to the learner by object reference (the driver never copies
them), and fans the learner's versioned weights out to the actors. Sync mode generates then trains;
async mode keeps up to `loop.max_queue` steps of rollouts queued ahead of the learner (backpressure:
nothing more is dispatched while the queue is full), so actors generate with weights at most
`max_staleness` versions old; the learner drops or corrects anything older.

The pieces: cluster/pool.py (the rollout actors), cluster/rollout_queue.py (the calls in flight), cluster/learners.py (the learner's
ranks, weight publishing, checkpoints), cluster/report.py (metrics, timers, lineage, pictures, console lines),
cluster/control.py (`vigorl scale` / `vigorl stop` requests), cluster/resume.py (`--resume`).
"""

from __future__ import annotations

import time

from cluster import resume
from cluster.control import driver_file, requested_scale, stop_requested
from cluster.learners import LearnerLost
from cluster.ledger import Ledger
from cluster.pool import RolloutPool
from cluster.rollout_queue import RolloutQueue
from configs.placement import shares_gpu
from configs.schema import TrainConfig


def prepare(cfg: TrainConfig) -> None:
    """Build the tiny model / synthetic data when the recipe asks for them and they are missing."""
    from data_gen.synthetic import ensure_dataset
    from data_gen.tiny_model import ensure_tiny_model

    if cfg.make_tiny:
        ensure_tiny_model(cfg.model.path, log="[train]", vocab=cfg.make_tiny, min_pixels=cfg.model.min_pixels,
                          max_pixels=cfg.model.max_pixels)
    if cfg.make_data:
        ensure_dataset(cfg.data.task, cfg.make_data, seed=cfg.loop.seed, out=cfg.data.path, log="[train]")


def run(cfg: TrainConfig) -> dict:
    """Train `cfg`: check it and set the run up (rollout actors, learner ranks, MLflow, a resumed run's
    state), then per step: control requests, take rollouts, train, publish, report, checkpoint."""
    from cluster.learners import LearnerGroup
    from cluster.raystart import init_ray
    from cluster.report import Reporter
    from cluster.tracking import Tracker, job
    from configs.placement import nccl_sync
    from data_gen.formats import load_prompts

    if cfg.loop.mode not in ("sync", "async"):
        raise ValueError(f"loop.mode must be 'sync' or 'async', got {cfg.loop.mode!r}")
    if cfg.rollout.group_size < 2:
        raise ValueError(f"rollout.group_size must be >= 2 (group advantages need a spread), got "
                         f"{cfg.rollout.group_size}")
    nccl_sync(cfg.cluster)  # refuses GPU placements that cannot run, before Ray starts
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
    report = Reporter(ray, cfg, tracker)
    pool = RolloutPool(ray, cfg, c.rollout_actors)
    if shares_gpu(c):
        pool.wait_started()  # vLLM sizes its share of the shared GPU at start-up: it goes first
    learners = LearnerGroup(ray, cfg, tracker, pool)  # the pool's replacement actors load what it publishes
    tracker.watch_gpus(ray, lambda: {"learner": learners.nodes, "rollout": pool.nodes()})  # GPU metrics per role
    learners.open_nccl()
    if ckpt:
        report.resumed(ckpt, learners.restore(ckpt), changes)
    first = ckpt.step + 1 if ckpt else 1
    queue, chunks_per_step = rollout_queue(cfg, pool, ledger)
    report.start(first, ledger, pool)
    with job(tracker, ray), driver_file(cfg.out, tracker.run_id):
        step = first
        while True:
            try:
                if step > cfg.loop.steps or (stop_requested(cfg.out) and report.stop_asked()):  # `vigorl stop OUT`
                    report.checkpoint(learners.save_last(ledger))  # the last step trained
                    break
                train_step(step, cfg, queue, chunks_per_step, learners, report, ledger)
                step += 1
            except LearnerLost as lost:  # a learner rank died: a new group goes on from the newest checkpoint
                step = restart_learner(lost, cfg, learners, queue, ledger, report)
        report.close()
        learners.close()  # its shared-memory weight file
    return report.done()


def train_step(step: int, cfg: TrainConfig, queue: RolloutQueue, chunks_per_step: int, learners, report,
               ledger: Ledger) -> None:
    """One step: control requests, take rollouts, train, publish, report, checkpoint."""
    report.mark("step")  # the step's clock: where each phase ends (cluster/report.py)
    queue.follow(requested_scale(cfg.out))  # `vigorl scale OUT --rollout-actors K`
    taken, stats = queue.next_step(chunks_per_step)
    report.mark("rollouts")
    m, lost = learners.train(taken, step)
    taken, stats = queue.settle(taken, stats, lost)  # done in the ledger; a lost batch's prompts requeued
    loads = learners.publish()
    report.mark("learner")
    m |= learners.wait(loads, ahead=queue.in_flight())  # sync mode, NCCL: every actor has the new weights
    report.step(step, m, taken, stats)  # metrics, lineage, pictures
    report.checkpoint(learners.checkpoint_if_due(step, ledger))
    report.end_step(step, m)  # the progress bar and the step's console line


def restart_learner(lost: LearnerLost, cfg: TrainConfig, learners, queue: RolloutQueue, ledger: Ledger,
                    report) -> int:
    """A learner rank died (`lost`): start a new learner group from the newest complete resumable checkpoint
    (none yet: the model itself), load its weights into every rollout actor, put the ledger back where the
    checkpoint left it (the prompts of the steps after it are queued again, none counted twice) and drop the
    rollout calls in flight (made with weights the new learner never had). Returns the step to go on from.
    After `cluster.learner_restart_attempts` restarts in the run, `lost` ends it. A restart that itself fails
    counts as another."""
    resume_hint = f"`vigorl train --resume {cfg.out}` goes on from the newest checkpoint"
    if learners.nccl:  # its weight-sync group holds every vLLM worker and is made once: no new learner joins it
        raise RuntimeError(f"{lost}; a learner restart with NCCL weight sync is not supported: {resume_hint}") from lost
    ahead = queue.drop()  # their prompts are in the checkpoint's ledger; the calls finish before the loads
    failed = 0  # restarts in a row that did not come up
    while True:
        if learners.restarts >= cfg.cluster.learner_restart_attempts:
            raise RuntimeError(f"{lost}; the learner was restarted {learners.restarts} time(s) "
                               f"(cluster.learner_restart_attempts={cfg.cluster.learner_restart_attempts}): "
                               f"stopping. {resume_hint}") from lost
        if failed:
            time.sleep(cfg.cluster.restart_backoff_s * 2 ** (failed - 1))
        ckpt = resume.latest(cfg.out) if resume.complete_dirs(cfg.out) else None
        report.learner_lost(lost, ckpt, learners.restarts + 1)
        try:
            version = learners.restart(ckpt, ahead)
        except LearnerLost as again:
            lost, failed, ahead = again, failed + 1, {}
            continue
        ledger.load_state(ckpt.state["ledger"] if ckpt else Ledger(ledger.ids, seed=cfg.loop.seed).state_dict())
        step = ckpt.step if ckpt else 0
        report.learner_restarted(step, version, learners.restarts)
        return step + 1


def rollout_queue(cfg: TrainConfig, pool: RolloutPool, ledger: Ledger) -> tuple[RolloutQueue, int]:
    """The run's rollout calls and how many make a step: a step's prompts split over the actors in chunks of
    ceil(prompts_per_step / rollout_actors); sync mode queues one step of them, async up to `loop.max_queue`
    steps ahead of the learner (backpressure: nothing more is dispatched while the queue is full)."""
    per_step, n_actors = cfg.loop.prompts_per_step, cfg.cluster.rollout_actors
    chunk = -(-per_step // n_actors)
    chunks_per_step = -(-per_step // chunk)
    steps_ahead = 1 if cfg.loop.mode == "sync" else max(1, cfg.loop.max_queue)
    return RolloutQueue(pool, ledger, chunk, chunks_per_step * steps_ahead), chunks_per_step


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
