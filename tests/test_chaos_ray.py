"""Faults on the real stack: an async `vigorl train` run (vLLM-CPU rollout actors, DeepSpeed learner, MLflow)
submitted with `ray job submit --working-dir .` to a `ray start --head` cluster on 127.0.0.1. A rollout
actor's process is SIGKILLed three times and the learner's once, at random points (their pids from Ray's state
API; the learner restarts from its newest resumable checkpoint, `tracking.resume_every`), and the run is
scaled 1 -> 2 -> 1 rollout actors with `vigorl scale` (a request for 3, which the 3-CPU cluster has no room
for, is refused with a console line and the run goes on with 2). Each event waits until the run has taken in the one
before, so every kill is certain to be one restart; then `vigorl stop` ends the run after its step in progress,
with a checkpoint, and the job succeeds; the
ledger balances with no prompt done twice in an epoch; trained samples stay within the staleness bound,
and the actors did run ahead of the learner (the async path, not a sync run in disguise)."""

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import BIN, lineage_of, runs, store

ROOT = Path(__file__).resolve().parent.parent
# Every event waits for the run to take in the one before; after the last, `vigorl stop` ends the run at its
# next step boundary. STEPS only bounds the run: the events are taken in around step 12.
STEPS = 200


def victim(dashboard: str, n_alive: int, killed: list[int], rng: random.Random, running,
           cls: str = "RolloutActor") -> int:
    """A random one of the `n_alive` live actors of class `cls` (waits out one still starting, while
    `running()`)."""
    from ray.util.state import list_actors

    while running():
        found = list_actors(address=dashboard, filters=[("class_name", "=", cls), ("state", "=", "ALIVE")])
        pids = sorted(a.pid for a in found if a.pid not in killed)
        if len(pids) == n_alive:
            return rng.choice(pids)
        time.sleep(0.5)
    raise AssertionError(f"the run ended before its {cls} could be killed")


def read_into(lines: list[str], stream) -> None:
    for line in stream:  # keeps the pipe drained; lines are appended as they arrive
        lines.append(line)


def test_learner_and_actor_kills_and_scaling_mid_run_lose_nothing(ray_head, tmp_path):
    out = tmp_path / "run"
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={ray_head.dashboard}", "--working-dir", str(ROOT), "--",
           sys.executable, "-m", "cluster.cli", "train", "--config", "configs/local_cpu.yaml",
           f"out={out}", f"model.path={tmp_path}/model", f"data.path={tmp_path}/data",
           "make_data=6", f"loop.steps={STEPS}", "loop.mode=async", "loop.max_staleness=1", "loop.max_queue=2",
           "loop.prompts_per_step=2", "rollout.group_size=2", "sampling.max_tokens_per_turn=96",
           "loop.learner_delay_s=0.5", "tracking.picture_every=0", "tracking.checkpoint_every=0",
           "tracking.resume_every=2", "cluster.restart_backoff_s=1", store(out)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    lines: list[str] = []
    threading.Thread(target=read_into, args=(lines, p.stdout), daemon=True).start()
    seed = int(time.time())
    rng = random.Random(seed)
    killed: list[int] = []

    def wait_for(text: str, count: int = 1) -> None:
        while sum(text in x for x in lines) < count:
            assert p.poll() is None, (f"the run ended before {count} x {text!r} (seed {seed})", "".join(lines[-100:]))
            time.sleep(0.2)

    def kill(n_alive: int) -> None:
        time.sleep(rng.uniform(0.0, 1.5))  # a random point: rollout, train or weight load
        pid = victim(ray_head.dashboard, n_alive, killed, rng, lambda: p.poll() is None)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_for(" replaced, at weight version", len(killed))  # noticed and replaced before the next event

    def kill_learner() -> None:
        time.sleep(rng.uniform(0.0, 1.5))  # a random point: training, publishing, checkpointing or idle
        os.kill(victim(ray_head.dashboard, 1, [], rng, lambda: p.poll() is None, cls="LearnerActor"), signal.SIGKILL)
        wait_for("[train] learner restarted at step")  # a new learner group, the actors reloaded

    def scale(k: int, before: int, after: str = "") -> None:
        subprocess.run([sys.executable, "-m", "cluster.cli", "scale", str(out), "--rollout-actors", str(k)],
                       cwd=ROOT, check=True, capture_output=True)
        wait_for(f"rollout actors: {before} -> {after or k}")

    try:
        wait_for(f"[train] step 2/{STEPS}")  # step 2 trained samples generated ahead of it (staleness 1)
        kill(1)
        scale(2, 1)
        kill(2)
        kill_learner()
        scale(3, 2, after="2 (asked for 3)")  # learner + 2 actors use all 3 CPUs
        scale(1, 2)
        kill(1)
        subprocess.run([sys.executable, "-m", "cluster.cli", "stop", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
        assert p.wait(timeout=900) == 0, "".join(lines[-120:])
    finally:
        if p.poll() is None:
            p.kill()
    text = "".join(lines)
    stopped = re.search(rf"\[train\] stop asked for: ending after step (\d+) of {STEPS}", text)
    assert stopped, (seed, text[-3000:])
    steps = int(stopped.group(1))
    assert f"[train] step {steps}/{STEPS}" in text and text.count("[train] fault: rollout actor in slot") == 3, seed
    assert text.count("[train] learner restarted at step") == 1 and "learner rank 0 died" in text, seed
    assert "succeeded" in text.lower()  # the Ray job's own verdict
    assert "scale: no room for another rollout actor (needs 1 CPU, 0 free)" in text
    assert (out / "checkpoints" / f"step_{steps:05d}" / "model.safetensors").is_file()  # the stop's checkpoint

    client, found = runs(out)
    assert len(found) == 1  # the learner's restart stays in the run
    run = found[0]
    m = run.data.metrics
    assert m["faults/actor_restarts"] == 3 and m["cluster/rollout_actors"] == 1 and m["faults/learner_restarts"] == 1
    actors = [x.value for x in client.get_metric_history(run.info.run_id, "cluster/rollout_actors")]
    assert max(actors) == 2 and actors[0] == 1
    # every prompt handed out is done, in flight or requeued; none done twice in its epoch; the rollout kill after
    # the learner's restart costs >= 1 call (the restart rewinds the ledger to its checkpoint, counts included)
    assert m["ledger/handed_out"] == m["ledger/done"] + m["ledger/in_flight"] + m["ledger/requeued"]
    assert m["ledger/duplicated"] == 0 and m["ledger/requeued"] >= 2
    assert m["ledger/done"] == steps * 2  # async: what was trained; the queue ahead is still in flight
    # the steps after the restart's checkpoint are trained again: their metrics twice, the last ones count
    last = lambda key: {x.step: x.value for x in sorted(client.get_metric_history(run.info.run_id, key),  # noqa: E731
                                                        key=lambda x: x.timestamp)}
    stale = last("staleness_max")
    assert sorted(stale) == list(range(1, steps + 1)) and max(stale.values()) <= 1
    assert sum(last("dropped_stale").values()) == 0
    staleness = [v for k in range(1, steps + 1)
                 for v in lineage_of(client, run, k).column("staleness").to_pylist()]
    assert len(staleness) == steps * 2 * 2 and max(staleness) == 1  # per sample; step 2 ran ahead before any kill
    # backpressure: never more than max_queue steps' worth of prompts dispatched and not yet trained on
    in_flight = [x.value for x in client.get_metric_history(run.info.run_id, "ledger/in_flight")]
    assert max(in_flight) > 0 and max(in_flight) <= 2 * 2
