"""The episode ledger: every prompt handed out is accounted for — done, in flight, or requeued — so a
lost actor loses nothing and nothing is trained twice. Pure bookkeeping in the driver."""

from __future__ import annotations

import random
from collections import deque


class Ledger:
    def __init__(self, prompt_ids: list[str], seed: int = 0):
        if not prompt_ids:
            raise ValueError("the dataset has no prompts")
        self._ids = list(prompt_ids)
        self._rng = random.Random(seed)
        self._queue: deque[str] = deque()
        self.in_flight: dict[int, list[str]] = {}  # ticket -> prompt ids
        self.done = 0  # prompts whose episodes reached the learner
        self.requeued = 0  # prompts handed back after a failure
        self.handed_out = 0
        self.epoch = 0
        self._next_ticket = 0

    def _refill(self) -> None:
        order = list(self._ids)
        self._rng.shuffle(order)
        self._queue.extend(order)
        self.epoch += 1

    def take(self, n: int) -> tuple[int, list[str]]:
        """Hand out n prompts (epochs wrap, reshuffled); returns (ticket, prompt ids)."""
        out = []
        while len(out) < n:
            if not self._queue:
                self._refill()
            out.append(self._queue.popleft())
        ticket = self._next_ticket
        self._next_ticket += 1
        self.in_flight[ticket] = out
        self.handed_out += n
        return ticket, out

    def complete(self, ticket: int) -> None:
        self.done += len(self.in_flight.pop(ticket))

    def requeue(self, ticket: int) -> None:
        """The ticket's rollout was lost: its prompts go to the front of the queue."""
        ids = self.in_flight.pop(ticket)
        self._queue.extendleft(reversed(ids))
        self.requeued += len(ids)

    def counts(self) -> dict[str, float]:
        in_flight = sum(len(v) for v in self.in_flight.values())
        assert self.handed_out == self.done + in_flight + self.requeued, "ledger does not balance"
        return {"ledger/handed_out": self.handed_out, "ledger/done": self.done, "ledger/in_flight": in_flight,
                "ledger/requeued": self.requeued, "ledger/epoch": self.epoch}
