"""The episode ledger: every prompt handed out is accounted for — done, in flight, or requeued — so a
lost actor loses nothing and nothing is trained twice. Pure bookkeeping in the driver.

Each hand-out is an (epoch, prompt id) pair: an epoch is one shuffled pass over the dataset, and a prompt
requeued after a failure keeps its epoch, so "done exactly once per epoch" can be checked
(`duplicated` counts the violations; it stays 0 unless the driver completes a ticket twice)."""

from __future__ import annotations

import random
from collections import deque

Entry = tuple[int, str]  # (epoch, prompt id)


class Ledger:
    def __init__(self, prompt_ids: list[str], seed: int = 0):
        if not prompt_ids:
            raise ValueError("the dataset has no prompts")
        self._ids = list(prompt_ids)
        self._rng = random.Random(seed)
        self._queue: deque[Entry] = deque()
        self.in_flight: dict[int, list[Entry]] = {}  # ticket -> its (epoch, prompt id) entries
        self.done = 0  # prompts whose episodes reached the learner
        self.requeued = 0  # prompts handed back after a failure
        self.handed_out = 0
        self.duplicated = 0  # prompts done a second time in the same epoch (a driver bug if ever > 0)
        self.epoch = 0
        self._done_in: dict[int, set[str]] = {}  # epoch -> prompt ids done in it (one set per epoch)
        self._next_ticket = 0

    @property
    def ids(self) -> list[str]:
        """The dataset's prompt ids, in dataset order."""
        return list(self._ids)

    def _refill(self) -> None:
        order = list(self._ids)
        self._rng.shuffle(order)
        self.epoch += 1
        self._queue.extend((self.epoch, p) for p in order)

    def take(self, n: int) -> tuple[int, list[str]]:
        """Hand out n prompts (requeued ones first; epochs wrap, reshuffled); returns (ticket, prompt ids)."""
        out: list[Entry] = []
        while len(out) < n:
            if not self._queue:
                self._refill()
            out.append(self._queue.popleft())
        ticket = self._next_ticket
        self._next_ticket += 1
        self.in_flight[ticket] = out
        self.handed_out += n
        return ticket, [p for _, p in out]

    def complete(self, ticket: int) -> None:
        for epoch, p in self.in_flight.pop(ticket):
            seen = self._done_in.setdefault(epoch, set())
            self.duplicated += p in seen
            seen.add(p)
            self.done += 1

    def requeue(self, ticket: int) -> None:
        """The ticket's rollout was lost: its prompts go to the front of the queue, in their order."""
        entries = self.in_flight.pop(ticket)
        self._queue.extendleft(reversed(entries))
        self.requeued += len(entries)

    def state_dict(self) -> dict:
        """Everything needed to go on exactly where this ledger is (JSON-safe). Prompts in flight count as
        requeued: a resumed run generates them again, at the front of the queue, in their epoch."""
        queue = [e for t in sorted(self.in_flight, reverse=True) for e in reversed(self.in_flight[t])][::-1]
        return {"ids": self._ids, "rng": _rng_state(self._rng), "queue": [list(e) for e in queue + list(self._queue)],
                "done": self.done, "requeued": self.requeued + len(queue), "handed_out": self.handed_out,
                "duplicated": self.duplicated, "epoch": self.epoch, "next_ticket": self._next_ticket,
                "done_in": {str(k): sorted(v) for k, v in self._done_in.items()}}

    @classmethod
    def from_state(cls, state: dict) -> "Ledger":
        led = cls(state["ids"])
        led.load_state(state)
        return led

    def load_state(self, state: dict) -> None:
        """Go back to `state` (a `state_dict`) in place: what a learner restart does with its checkpoint's
        ledger (tickets in flight now are forgotten; their prompts are in `state`'s queue or done there)."""
        self._ids = list(state["ids"])
        self._rng.setstate(_rng_from(state["rng"]))
        self._queue = deque((int(e), str(p)) for e, p in state["queue"])
        self.in_flight = {}
        self.done, self.requeued, self.handed_out = state["done"], state["requeued"], state["handed_out"]
        self.duplicated, self.epoch, self._next_ticket = state["duplicated"], state["epoch"], state["next_ticket"]
        self._done_in = {int(k): set(v) for k, v in state["done_in"].items()}

    def done_in_epoch(self, epoch: int) -> int:
        return len(self._done_in.get(epoch, ()))

    def counts(self) -> dict[str, float]:
        in_flight = sum(len(v) for v in self.in_flight.values())
        assert self.handed_out == self.done + in_flight + self.requeued, "ledger does not balance"
        return {"ledger/handed_out": self.handed_out, "ledger/done": self.done, "ledger/in_flight": in_flight,
                "ledger/requeued": self.requeued, "ledger/duplicated": self.duplicated, "ledger/epoch": self.epoch,
                "ledger/epoch_done": self.done_in_epoch(self.epoch)}


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
