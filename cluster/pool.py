"""The rollout actors of a training run and the rollout calls in flight, with what happens when an actor
fails: its calls' prompts go back to the ledger, a new actor takes its slot, loads the current weights
before it is handed work, and the run goes on.

Why a new actor rather than Ray's `max_restarts`: a restarted actor re-runs its constructor with the
weights it was created with (version 0) and Ray would replay or fail its queued calls on its own terms;
the driver would still have to notice, reload the current version and requeue. Starting the replacement
itself keeps one path for all of it — including a bounded number of tries with backoff when the
replacement cannot start (no memory, no node) — and each new actor gets a fresh index (own sampling seed).
"""

from __future__ import annotations

import re
import time

from cluster.raystart import log_file, say
from configs.base import ConfigError
from configs.schema import TrainConfig

# NCCL weight sync builds one process group of the learner and the engines at start: no member joins later
NO_NCCL_GROWTH = ("adding a rollout actor to an NCCL weight-sync group is not supported yet "
                  "(cluster.weight_sync=shm or object_store is)")


class StartError(RuntimeError):
    """No new rollout actor came up in `cluster.restart_attempts` tries."""


class SyncTimeout(RuntimeError):
    """A weight load did not finish `cluster.sync_timeout_s` after it started (NCCL: no replacement possible)."""


def faults(ray) -> tuple[type, ...]:
    """Ray's errors that mean "this actor (or its node) is gone or hung" — not a bug in the actor's code, which
    arrives as RayTaskError and stops the run."""
    e = ray.exceptions
    return e.RayActorError, e.GetTimeoutError, e.OutOfMemoryError, e.ObjectLostError


def config_error(e: BaseException) -> ConfigError | None:
    """The rule for an actor whose constructor raised: a `configs.base.ConfigError` (its own checks,
    `actors.actor.check_rollout`: a bad prompt name, a missing or empty prompt file) is deterministic — a
    replacement would fail the same way — so it is the run's error, returned here to be raised at once;
    anything else in a constructor (no memory, a lost node, an engine that did not start) stays a fault,
    retried `cluster.restart_attempts` times. Ray 2.60 hands the caller an ActorDiedError with
    `actor_init_failed` and only the constructor's formatted traceback, whose last exception line is
    `configs.base.ConfigError: <message>`; that message is returned as a ConfigError."""
    if not getattr(e, "actor_init_failed", False):
        return None
    text = str(e)
    found = list(re.finditer(r"^(?:[\w.]+\.)?ConfigError: ", text, re.M))
    return ConfigError(text[found[-1].end():].strip()) if found else None


class RolloutPool:
    """`slots[i]`: the actor now serving slot i. `publisher` (`attach`): where the current weights come from,
    which a replacement loads before its first rollout."""

    def __init__(self, ray, cfg: TrainConfig, n: int):
        from actors.actor import RolloutActor

        self.ray, self.cfg = ray, cfg
        c = cfg.cluster
        self._cls = ray.remote(RolloutActor).options(num_cpus=c.rollout_cpus, num_gpus=c.rollout_gpus)
        self._nodes: dict = {}  # actor -> ref of its node id, asked for as its first call
        self.slots = [self._new(i) for i in range(n)]
        self.next_index = n
        self.publisher = None
        self.restarts = 0

    def __len__(self) -> int:
        return len(self.slots)

    def attach(self, publisher) -> None:
        """Take the current weights from `publisher` (`cluster.learners.LearnerGroup`): its `node` (learner
        rank 0's Ray node id), `weights` (the refs (version, where) of its last `LearnerActor.publish`; None: the
        model's own weights, version 0, which the constructor loads), `stored` (whether that publish went to
        the object store too) and `republish()` (publish again with the object store, for a new actor on
        another node when the last publish was shared memory only). Before it: no publish yet."""
        self.publisher = publisher

    def nodes(self) -> list[str]:
        """The Ray node ids of the current actors that have said where they run (for the GPU metrics of their
        nodes, read from another thread: never waits)."""
        found = []
        for actor in list(self.slots):
            ref = self._nodes.get(actor)
            if ref is None:
                continue
            try:
                found.append(self.ray.get(ref, timeout=0))
            except faults(self.ray):  # not up yet, or gone
                continue
        return found

    def wait_started(self) -> None:
        """Block until every actor's engine is up (`cluster.start_timeout_s`, then an error naming the slot).
        On a GPU shared with the learner the engines start first: vLLM sizes its share from the GPU's free
        memory at start-up, which a learner loading at the same moment would take."""
        for slot, actor in enumerate(self.slots):
            try:
                self.ray.get(actor.get_version.remote(), timeout=self.cfg.cluster.start_timeout_s)
            except self.ray.exceptions.GetTimeoutError:
                raise StartError(f"rollout slot {slot}: its engine was not up after cluster.start_timeout_s="
                                 f"{self.cfg.cluster.start_timeout_s:g}s (waited before starting the learner, "
                                 "which shares its GPU)") from None

    def _new(self, index: int):
        actor = self._cls.remote(self.cfg, index, log_file=log_file(self.cfg.out, f"rollout-{index}", self.cfg.verbose))
        self._nodes[actor] = actor.node_id.remote()
        return actor

    def _kill(self, actor) -> None:
        self.ray.kill(actor, no_restart=True)
        self._nodes.pop(actor, None)

    def elsewhere(self, actors: list) -> bool:
        """Whether any of `actors` runs on another node than learner rank 0 (so cannot map its weight file).
        An actor that died before it said where (or was killed) counts as elsewhere: the weights go to the object
        store as well, and its load fails and replaces it as any dead actor's does."""
        nodes = []
        for actor in actors:
            ref = self._nodes.get(actor)  # none: killed while its replacement could not start (the learner died)
            try:
                nodes.append(None if ref is None else self.ray.get(ref, timeout=self.cfg.cluster.start_timeout_s))
            except faults(self.ray):
                nodes.append(None)
        return any(node != self.publisher.node for node in nodes)

    def _started(self, slot: int) -> None:
        """Start a new actor for `slot` (appending a slot when slot == len) at the current weight version;
        after `cluster.restart_attempts` failed starts, raise an error naming the slot."""
        ray, c = self.ray, self.cfg.cluster
        for attempt in range(1, c.restart_attempts + 1):
            index, self.next_index = self.next_index, self.next_index + 1
            actor = self._new(index)
            try:
                ray.get(actor.get_version.remote(), timeout=c.start_timeout_s)  # the engine is up
                p = self.publisher
                if p is not None and p.weights is not None:
                    if not p.stored and self.elsewhere([actor]):
                        p.republish()
                    ray.get(actor.load_weights.remote(*p.weights), timeout=c.sync_timeout_s)
                version = ray.get(actor.get_version.remote())
            except faults(ray) as e:
                self._kill(actor)
                if err := config_error(e) or self._learner_lost(e):
                    raise err from None  # deterministic, or the learner's: another try would fail the same way
                if attempt == c.restart_attempts:
                    raise StartError(f"rollout slot {slot}: no new actor started in {attempt} tries "
                                     f"(cluster.restart_attempts); last error: {e}") from e
                wait = c.restart_backoff_s * 2 ** (attempt - 1)
                say(f"[train] fault: a new actor for slot {slot} did not start (try {attempt}/"
                    f"{c.restart_attempts}: {type(e).__name__}); again in {wait:.0f}s")
                time.sleep(wait)
                continue
            what = "added" if slot == len(self.slots) else "replaced"
            if slot == len(self.slots):
                self.slots.append(actor)
            else:
                self.slots[slot] = actor
            say(f"[train] slot {slot}: rollout actor #{index} {what}, at weight version {version}")
            return

    def _learner_lost(self, e: BaseException):
        """A load that failed because the publish it waited for was a dead learner rank's: the learner's fault
        (`cluster.learners.LearnerLost`, handled by the driver), not this actor's."""
        return self.publisher.lost(e) if self.publisher is not None else None

    def _refuse_nccl(self, what: str) -> None:
        from configs.placement import nccl_sync

        if nccl_sync(self.cfg.cluster):
            raise RuntimeError(f"{what}: {NO_NCCL_GROWTH}")

    def replace(self, slot: int, why: str) -> None:
        """Kill slot's actor (if it still runs) and start a new one at the current weight version."""
        self._refuse_nccl(f"rollout actor in slot {slot} failed ({why})")
        self._kill(self.slots[slot])
        say(f"[train] fault: rollout actor in slot {slot} {why}; its prompts are requeued, starting a "
            f"replacement")
        self._started(slot)
        self.restarts += 1

    def grow(self) -> bool:
        """Add a slot with a new actor at the current weights. A scale request must never end the run: when
        the actor cannot be added (NCCL weight sync, too few free resources, no start) this says why on the
        console and returns False."""
        from configs.placement import nccl_sync

        c = self.cfg.cluster
        if nccl_sync(self.cfg.cluster):
            say(f"[train] scale: {NO_NCCL_GROWTH}; request ignored")
            return False
        free = self.ray.available_resources()
        short = [f"needs {need:g} {r}, {free.get(r, 0.0):g} free" for r, need in (("CPU", c.rollout_cpus),
                 ("GPU", c.rollout_gpus)) if need > free.get(r, 0.0) + 1e-9]
        if short:
            say(f"[train] scale: no room for another rollout actor ({'; '.join(short)}). A local Ray has only "
                "the CPUs the run asked for: start one with more (`ray start --head --num-cpus N`) and pass "
                "--address. Request ignored")
            return False
        try:
            self._started(len(self.slots))
        except StartError as e:
            say(f"[train] scale: {e}; request ignored")
            return False
        return True

    def shrink(self) -> None:
        self._kill(self.slots.pop())

    def load_all(self, loads: list, ahead: dict[int, list] | None = None) -> list[float]:
        """Wait for one load call per slot (seconds each); a slot whose actor died meanwhile is replaced (the
        replacement loads the same weights). `ahead[slot]`: the calls queued on that actor before its load
        (async rollouts; Ray runs an actor's calls in order): `cluster.sync_timeout_s` counts from when they
        are all back, i.e. from when the loads start, not from when they were queued — a long rollout ahead of
        a load is not a slow load (under NCCL every engine must be receiving before any load can end)."""
        from configs.placement import nccl_sync

        c = self.cfg.cluster
        pending = [r for refs in (ahead or {}).values() for r in refs]
        if pending:  # a hung rollout is the queue's to handle (rollout_timeout_s); here it only delays the clock
            self.ray.wait(pending, num_returns=len(pending), timeout=c.rollout_timeout_s or None)
        deadline = time.monotonic() + c.sync_timeout_s
        seconds = []
        for slot, ref in enumerate(loads):
            try:
                seconds.append(self.ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
            except faults(self.ray) as e:
                if err := config_error(e) or self._learner_lost(e):
                    raise err from None
                if nccl_sync(c) and isinstance(e, self.ray.exceptions.GetTimeoutError):
                    raise SyncTimeout(
                        f"weight sync: rollout actor in slot {slot} had not received the new weights "
                        f"cluster.sync_timeout_s={c.sync_timeout_s:g}s after the loads started (every rollout "
                        "queued ahead of them had ended). An NCCL broadcast has no timeout of its own: a lost or "
                        "stuck engine shows as this") from None
                self.replace(slot, f"failed in a weight load ({type(e).__name__})")
        return seconds
