"""The work queue `vigorl eval` and `vigorl mcts` share (cluster/workqueue.py): what is left after a resume,
how many workers start, one unit in flight per worker with the next handed out before a result is written,
results in completion order, an error ending the loop, a dead worker replaced and its unit handed out again
(bounded), lines on disk, the fault injection's exit. The Ray end of it runs in tests/test_eval_ray.py and
tests/test_mcts_ray.py."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.workqueue import (CRASH_EXIT, Faults, WorkerFailed, append_lines, chunks, pending, run_queue,
                               start_workers)

ROOT = Path(__file__).resolve().parent.parent


class InOrder:
    """`ray.wait` / `ray.get` over refs that finish in the order they were submitted (a deterministic Ray)."""

    import ray.exceptions as exceptions  # Ray's own error classes: what a dead worker raises

    def __init__(self):
        self.values: dict[int, object] = {}
        self.killed: list = []

    def put(self, value) -> int:
        self.values[len(self.values)] = value
        return len(self.values) - 1

    def wait(self, refs, num_returns, timeout=None):
        assert num_returns == 1
        return [min(refs)], sorted(refs)[1:]

    def kill(self, worker, no_restart):
        self.killed.append(worker)

    def get(self, ref):
        if isinstance(self.values[ref], Exception):
            raise self.values[ref]
        return self.values[ref]


def test_pending_keeps_order_and_drops_done():
    rows = [SimpleNamespace(prompt_id=i) for i in "abcde"]
    assert [r.prompt_id for r in pending(rows, {"b", "d", "zz"})] == ["a", "c", "e"]


def test_chunks_and_worker_count():
    assert chunks(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]] and chunks([], 3) == []
    with pytest.raises(ValueError, match="size 0"):
        chunks(["a"], 0)
    started = []
    assert start_workers(lambda i: started.append(i) or f"w{i}", 4, 3) == ["w0", "w1", "w2"]  # one per unit at most
    assert start_workers(str, 0, 5) == ["0"] and start_workers(str, 4, 0) == []  # at least one with work; none without


def test_one_in_flight_per_worker_next_unit_before_the_result_is_handled(capsys):
    ray, events = InOrder(), []

    def submit(worker, unit):
        events.append(("submit", worker, unit))
        return ray.put(unit)

    def on_result(unit):
        events.append(("result", unit))
        return len(unit)

    run_queue(ray, ["w0", "w1"], [["a", "b"], ["c"], ["d", "e"], ["f"]], submit, on_result, total=6, desc="t",
              unit="item")
    assert events == [("submit", "w0", ["a", "b"]), ("submit", "w1", ["c"]),
                      ("submit", "w0", ["d", "e"]), ("result", ["a", "b"]),  # w0 is busy again before a is written
                      ("submit", "w1", ["f"]), ("result", ["c"]),
                      ("result", ["d", "e"]), ("result", ["f"])]
    assert "6/6" in capsys.readouterr().out  # the bar counts items on stdout, by on_result's steps


def test_a_worker_error_ends_the_loop():
    ray, handled = InOrder(), []

    def submit(worker, unit):
        return ray.put(RuntimeError(f"{unit} broke") if unit == "b" else unit)

    with pytest.raises(RuntimeError, match="b broke"):
        run_queue(ray, ["w0"], ["a", "b", "c"], submit, lambda u: handled.append(u) or 1, total=3, desc="t",
                  unit="q")
    assert handled == ["a"]


def test_a_dead_worker_is_replaced_and_its_unit_handed_out_again(capsys):
    """Worker w0 dies on unit b (Ray's RayActorError): b goes to the front of the queue, slot 0 gets a new
    worker, which scores b; a slot that keeps dying past `attempts` ends the job with WorkerFailed."""
    ray, handled, calls = InOrder(), [], []
    dead = {"w0"}

    def submit(worker, unit):
        calls.append((worker, unit))
        return ray.put(ray.exceptions.RayActorError() if worker in dead and unit == "b" else unit)

    faults = Faults(replace=lambda slot: f"new{slot}", what="rollout actor", attempts=2, backoff_s=0.0)
    run_queue(ray, ["w0"], ["a", "b", "c"], submit, lambda u: handled.append(u) or 1, total=3, desc="t", unit="q",
              faults=faults)
    assert handled == ["a", "b", "c"] and calls == [("w0", "a"), ("w0", "b"), ("new0", "b"), ("new0", "c")]
    assert ray.killed == ["w0"] and faults.restarts == 1
    assert "fault: rollout actor in slot 0 died (RayActorError)" in capsys.readouterr().out

    always = Faults(replace=lambda slot: "w0", what="rollout actor", attempts=2, backoff_s=0.0)
    with pytest.raises(WorkerFailed, match="slot 0 failed 3 times in a row"):
        run_queue(ray, ["w0"], ["b"], submit, lambda u: 1, total=1, desc="t", unit="q", faults=always)
    assert always.restarts == 2


def test_append_lines_and_crash_point(tmp_path):
    path = tmp_path / "out.jsonl"
    with open(path, "a") as f:
        append_lines(f, [{"id": "a"}, {"id": "b"}])
        append_lines(f, [])
        append_lines(f, [{"id": "c"}])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]
    env = {"PYTHONPATH": str(ROOT)}  # os._exit skips the interpreter's exit: flush what must be seen
    armed = "from cluster.workqueue import crash_point as c; c(2, 3); print('alive', flush=True); c(3, 3); print('x')"
    p = subprocess.run([sys.executable, "-c", armed], capture_output=True, text=True, env=env)
    assert p.returncode == CRASH_EXIT and p.stdout == "alive\n"
    off = "from cluster.workqueue import crash_point as c; c(99, 0); print('never armed')"
    p = subprocess.run([sys.executable, "-c", off], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and p.stdout == "never armed\n"
