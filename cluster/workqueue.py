"""The resumable work queue over Ray workers that `vigorl eval` (cluster/eval_job.py) and `vigorl mcts`
(cluster/mcts_job.py) share.

A job's output file is its resume state: the job reads the ids already there, `pending` drops those items,
the rest are cut into units of work (`chunks`; one item per unit for MCTS, `batch` items for eval),
`start_workers` starts as many workers as are asked for but never more than there are units, and `run_queue`
keeps one unit in flight per worker, handing each result to the job's `on_result` as it arrives (completion
order), which appends it to the output (`append_lines`) before the next result is read. A job killed at any
point loses at most the units in flight; its rerun skips everything written.

Failures: a unit's own failure (a question whose teacher raised) is the worker's to report as a result; an
error raised by a worker or by `on_result` ends the loop and the job (`cluster.tracking.job` marks the run
FAILED). `crash_point` is the tests' fault injection: die like a killed job after n results.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
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


def run_queue(ray, workers: list, units: Iterable, submit: Callable[[Any, Any], Any],
              on_result: Callable[[Any], int], *, total: int, desc: str, unit: str) -> None:
    """Run every unit on `workers`, one in flight per worker. `submit(worker, unit)` starts one and returns its
    ObjectRef; `on_result(value)` gets each result as it arrives and returns how many items it finished (the
    progress bar's step; the bar counts `total` items in `unit`s, on stdout). A worker is handed its next unit
    before the driver handles the result it just returned, so it never waits on the driver's writes."""
    from tqdm import tqdm

    queue = deque(units)
    in_flight: dict = {}  # ObjectRef -> the worker computing it
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stdout) as bar:
        for w in workers:
            if queue:
                in_flight[submit(w, queue.popleft())] = w
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            w = in_flight.pop(ref)
            if queue:
                in_flight[submit(w, queue.popleft())] = w
            bar.update(on_result(ray.get(ref)))


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
