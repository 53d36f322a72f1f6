"""The resumable work queue over Ray workers that `vigorl eval` (cluster/eval_job.py) and `vigorl mcts`
(cluster/mcts_job.py) share.

A job's output file is its resume state: the job reads the ids already there, `pending` drops those items,
the rest are cut into units of work (`chunks`; one item per unit for MCTS, `batch` items for eval),
`start_workers` starts as many workers as are asked for but never more than there are units, and `run_queue`
keeps one unit in flight per worker, handing each result to the job's `on_result` as it arrives (completion
order), which appends it to the output (`append_lines`) before the next result is read. A job killed at any
point loses at most the units in flight; its rerun skips everything written.

Failures: a unit's own failure (a question whose teacher raised) is the worker's to report as a result. A
worker that dies or hangs (`Faults`: its process killed, out of memory, its node gone; no result `timeout_s`
after it was handed the unit) costs that worker when the job gives `Faults.replace`: the unit goes back to the
front of the queue and a new worker takes the slot, as a training run's rollout pool does (cluster/pool.py);
after `attempts` replacements in a row on one slot, its next failure ends the job, and a replacement whose constructor refuses the config
(`configs.base.ConfigError`) ends it at once. Any other error raised by a worker or by `on_result` ends the loop
and the job (`cluster.tracking.job` marks the run FAILED). `crash_point` is the tests' fault injection: die like
a killed job after n results.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CRASH_EXIT = 17  # crash_after's exit status (tests/test_eval_ray.py, tests/test_mcts_ray.py expect it)


def pending(rows: Iterable, done_ids: set[str]) -> list:
    """The rows (anything with a `prompt_id`) whose id is not in `done_ids`, in their order."""
    return [r for r in rows if r.prompt_id not in done_ids]


def chunks(items: Sequence, size: int) -> list[list]:
    """`items` cut into consecutive lists of `size` (the last one shorter); none for no items."""
    if size < 1:
        raise ValueError(f"a unit of work needs at least 1 item, got size {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def start_workers(make: Callable[[int], Any], wanted: int, n_units: int) -> list:
    """`make(i)` for each worker index i: `wanted` workers, but no more than there are units (an idle worker
    would only hold resources), at least one when there is work, none when there is none."""
    n = max(1, min(wanted, n_units)) if n_units else 0
    return [make(i) for i in range(n)]


@dataclass
class Faults:
    """What a dead or hung worker costs (None in `run_queue`: any worker error ends the job)."""

    replace: Callable[[int], Any]  # a new worker for slot i (the job's own constructor call)
    what: str  # how the console names a worker ("rollout actor", "MCTS searcher")
    attempts: int = 3  # replacements in a row on one slot; its next failure stops the job (cluster.restart_attempts)
    backoff_s: float = 5.0  # wait before replacement k+1 on a slot: backoff_s * 2**(k-1) (cluster.restart_backoff_s)
    timeout_s: float = 0.0  # a unit not back this long after it was handed out is a hung worker (0: no limit)
    restarts: int = 0  # replacements made (the job's `faults/actor_restarts`)
    # called with the error before each replacement: a job whose workers share a server restarts it here when
    # the error says the server, not the worker, died (cluster/mcts_job.py `TeacherServer`)
    on_fault: Callable[[BaseException], None] | None = None


class WorkerFailed(RuntimeError):
    """A worker slot failed `Faults.attempts` times in a row."""


def run_queue(ray, workers: list, units: Iterable, submit: Callable[[Any, Any], Any],
              on_result: Callable[[Any], int], *, total: int, desc: str, unit: str,
              faults: Faults | None = None) -> None:
    """Run every unit on `workers`, one in flight per worker. `submit(worker, unit)` starts one and returns its
    ObjectRef; `on_result(value)` gets each result as it arrives and returns how many items it finished (the
    progress bar's step; the bar counts `total` items in `unit`s, on stdout). A worker is handed its next unit
    before the driver handles the result it just returned, so it never waits on the driver's writes.
    `faults`: dead or hung workers are replaced and their unit handed out again (see the module doc)."""
    from tqdm import tqdm

    queue, workers = deque(units), list(workers)
    in_flight: dict = {}  # ObjectRef -> (slot, unit, when it was handed out)
    failures = [0] * len(workers)  # failures in a row per slot

    def hand_out(slot: int) -> None:
        if queue:
            u = queue.popleft()
            in_flight[submit(workers[slot], u)] = (slot, u, time.monotonic())

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stdout) as bar:
        for slot in range(len(workers)):
            hand_out(slot)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_poll(in_flight, faults))
            if not ready:  # the oldest unit is overdue: its worker is hung
                ref = min(in_flight, key=lambda r: in_flight[r][2])
                slot, u, _ = in_flight.pop(ref)
                _replace(ray, workers, slot, u, queue, failures, faults, f"hung (no result in {faults.timeout_s:g} s)")
                hand_out(slot)
                continue
            [ref] = ready
            slot, u, _ = in_flight.pop(ref)
            try:
                value = ray.get(ref)
            except _faults(ray, faults) as e:
                from cluster.pool import config_error

                if err := config_error(e):  # its constructor refused the config: the job's error, not a fault
                    raise err from None
                if faults.on_fault is not None:
                    faults.on_fault(e)
                _replace(ray, workers, slot, u, queue, failures, faults, f"died ({type(e).__name__})")
                hand_out(slot)
                continue
            failures[slot] = 0
            hand_out(slot)
            bar.update(on_result(value))


def _faults(ray, faults: Faults | None) -> tuple[type, ...]:
    from cluster.pool import faults as worker_faults

    return worker_faults(ray) if faults else ()


def _poll(in_flight: dict, faults: Faults | None) -> float | None:
    """How long `ray.wait` may block: until the oldest unit in flight is overdue (None: no limit)."""
    if not faults or not faults.timeout_s:
        return None
    oldest = min(t for _, _, t in in_flight.values())
    return max(0.0, oldest + faults.timeout_s - time.monotonic())


def _replace(ray, workers: list, slot: int, unit: Any, queue: deque, failures: list[int], faults: Faults,
             why: str) -> None:
    """The unit back at the front of the queue; slot's worker killed (if it still runs) and a new one started."""
    queue.appendleft(unit)
    failures[slot] += 1
    if failures[slot] > faults.attempts:
        raise WorkerFailed(f"{faults.what} in slot {slot} failed {failures[slot]} times in a row ({why}); "
                           f"giving up (cluster.restart_attempts={faults.attempts})")
    say(f"fault: {faults.what} in slot {slot} {why}; its work is handed out again, starting a replacement")
    ray.kill(workers[slot], no_restart=True)
    if failures[slot] > 1:
        time.sleep(faults.backoff_s * 2 ** (failures[slot] - 2))
    workers[slot] = faults.replace(slot)
    faults.restarts += 1


def append_lines(f, lines: list[dict]) -> None:
    """Append JSON lines to the open file `f` in one write, then flush and fsync: what `on_result` has written
    is on disk before the next result is handled, so a rerun resumes after it."""
    f.write("".join(json.dumps(x) + "\n" for x in lines))
    f.flush()
    os.fsync(f.fileno())


def say(message: str) -> None:
    """Print a line on stdout above the progress bar (tqdm's write; a plain print would break the bar)."""
    from tqdm import tqdm

    tqdm.write(message)


def crash_point(count: int, crash_after: int) -> None:
    """Fault injection for tests (`crash_after`, 0: never): once `count` reaches it, exit at once with status
    CRASH_EXIT, no cleanup, as a killed job would."""
    if crash_after and count >= crash_after:
        os._exit(CRASH_EXIT)
