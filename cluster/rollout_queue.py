"""The rollout calls of a training run in flight or done but not yet trained on: dispatched into free actor
slots (backpressure), taken oldest first, settled in the ledger after the learner's step; a call whose actor
died or hung costs that actor (cluster/pool.py replaces it) and its prompts go back to the ledger."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cluster.control import ScaleRequest
from cluster.ledger import Ledger
from cluster.pool import RolloutPool, config_error, faults
from cluster.raystart import say


@dataclass
class Chunk:
    """One dispatched rollout call."""

    ticket: int
    slot: int
    batch: object  # ObjectRef -> pa.RecordBatch
    stats: object  # ObjectRef -> dict


class RolloutQueue:
    """Rollout calls in flight or done but not yet trained on, oldest first. `fill` dispatches prompt
    chunks round-robin only into free slots (backpressure: a full queue stops generation, so memory
    stays flat); `take` waits for the oldest chunks; `settle`, after the learner's step, marks their prompts
    done in the ledger, or requeues those whose batch was lost. A call whose actor died, or that is not back
    `cluster.rollout_timeout_s` after `take` starts waiting for it (every earlier call on that actor is back by
    then, so the call itself has run at least that long), costs the actor: all its calls in the queue are
    requeued in the ledger and the slot gets a new actor."""

    def __init__(self, pool: RolloutPool, ledger: Ledger, chunk: int, capacity: int):
        self.pool, self.ledger, self.chunk, self.capacity = pool, ledger, chunk, capacity
        self.chunks: deque[Chunk] = deque()
        self.next_slot = 0
        self.applied: ScaleRequest | None = None  # the last `vigorl scale` request acted on

    def fill(self) -> None:
        while len(self.chunks) < self.capacity:
            ticket, ids = self.ledger.take(self.chunk)
            slot = self.next_slot % len(self.pool)
            batch, stats = self.pool.slots[slot].rollout_batch.options(num_returns=2).remote(ids, ticket)
            self.chunks.append(Chunk(ticket, slot, batch, stats))
            self.next_slot = slot + 1

    def next_step(self, n: int) -> tuple[list[Chunk], list[dict]]:
        """One step's rollouts: dispatch into the queue's free room (`fill`), then wait for the oldest `n`
        calls (`take`); returns those chunks and their stats."""
        self.fill()
        return self.take(n)

    def settle(self, taken: list[Chunk], stats: list[dict], lost: list[int]) -> tuple[list[Chunk], list[dict]]:
        """After the learner's step: the prompts of the chunks it trained on are done in the ledger, those of
        the `lost` ones (their batch's object gone with its node) go back to the front of the queue.
        Returns the trained chunks and their stats."""
        for i, c in reversed(list(enumerate(taken))):  # requeue puts in front: latest first keeps their order
            (self.ledger.requeue if i in lost else self.ledger.complete)(c.ticket)
        if lost:
            say(f"[train] {len(lost)} of {len(taken)} rollout batches lost before the learner read them (their "
                f"node's object store is gone): trained without them, their prompts requeued")
        keep = [i for i in range(len(taken)) if i not in lost]
        return [taken[i] for i in keep], [stats[i] for i in keep]

    def take(self, n: int) -> tuple[list[Chunk], list[dict]]:
        ray = self.pool.ray
        timeout = self.pool.cfg.cluster.rollout_timeout_s or None
        taken, stats = [], []
        while len(taken) < n:
            c = self.chunks[0]
            try:
                s = ray.get(c.stats, timeout=timeout)
            except faults(ray) as e:
                if err := config_error(e):  # its constructor refused the config: the run's error, not a fault
                    raise err from None
                self.lose(c.slot, "hung (no result in cluster.rollout_timeout_s)"
                          if isinstance(e, ray.exceptions.GetTimeoutError) else f"died ({type(e).__name__})")
                continue
            self.chunks.popleft()  # its ticket stays in flight until `settle`: the learner may yet find it lost
            taken.append(c)
            stats.append(s)
        return taken, stats

    def in_flight(self) -> dict[int, list]:
        """slot -> the refs of its rollout calls dispatched and not yet taken (they run before any call
        made on that actor now)."""
        out: dict[int, list] = {}
        for c in self.chunks:
            out.setdefault(c.slot, []).append(c.batch)
        return out

    def drop(self) -> dict[int, list]:
        """Forget every call in the queue (a learner restart: the ledger goes back to its checkpoint, where their
        prompts are not done). Returns them as `in_flight` did: they still run, ahead of any call made now."""
        ahead = self.in_flight()
        self.chunks.clear()
        return ahead

    def follow(self, request: "ScaleRequest | None") -> None:
        """Apply the newest `vigorl scale` request, once (a request that could not be met is not retried)."""
        if request is None or request == self.applied:
            return
        self.applied = request
        if request.k != len(self.pool):
            self.resize(request.k)

    def resize(self, k: int) -> None:
        """Scale to k rollout actors at a step boundary: new ones start at the current weights (as many as
        fit: see `RolloutPool.grow`); removed ones (the last slots) hand their calls back to the ledger and
        exit."""
        if k < 1:
            raise ValueError(f"rollout actors: need at least 1, got {k}")
        from configs.placement import nccl_sync

        before = len(self.pool)
        while len(self.pool) < k and self.pool.grow():
            pass
        if len(self.pool) > k and nccl_sync(self.pool.cfg.cluster):
            # the NCCL group's world size is fixed at start: a broadcast would wait for the removed engine forever
            say(f"[train] scale: removing a rollout actor from an NCCL weight-sync group is not supported "
                f"(cluster.weight_sync=shm or object_store is); request for {k} ignored")
            return
        while len(self.pool) > k:
            self._hand_back(len(self.pool) - 1)
            self.pool.shrink()
        self.next_slot %= len(self.pool)
        say(f"[train] rollout actors: {before} -> {len(self.pool)}"
            + (f" (asked for {k})" if len(self.pool) != k else ""))

    def _hand_back(self, slot: int) -> None:
        """Requeue every call of `slot` (latest first, so the prompts keep their order at the queue's front)."""
        lost = [c for c in self.chunks if c.slot == slot]
        for c in reversed(lost):
            self.ledger.requeue(c.ticket)
        self.chunks = deque(c for c in self.chunks if c.slot != slot)

    def lose(self, slot: int, why: str) -> None:
        """Requeue every call of `slot`'s actor, replace the actor, and dispatch again."""
        self._hand_back(slot)
        self.pool.replace(slot, why)
        self.fill()
