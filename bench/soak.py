"""`make soak`: backpressure and memory under a slow learner. A benchmark, never part of the tests.

An async `vigorl train` on the tiny model, `--steps` steps (default 300), whose learner sleeps `--delay` seconds
every step (`loop.learner_delay_s`) so the rollout actor runs ahead into the queue's bound; turns of up to
`--tokens` tokens (the demo recipe's 256: long enough for episodes to zoom, which makes new tensor shapes), and
only the last step is checkpointed. The run logs,
per step, `ledger/in_flight` and the resident memory of the driver, the rollout actor and the learner
(`memory/*_rss_mb`, read at the end of each process's step) to its own MLflow run. This script reads them back
and checks:

  queue bounded   ledger/in_flight never above loop.max_queue steps' worth of prompts
  memory flat     per process, over the last half of the steps: the mean RSS of its last fifth is within 2 %
                  of the mean of its first fifth (`drift`), i.e. no growth once the run is warm

It writes OUT/soak.json and OUT/soak.png (the three RSS curves and the queue) and logs both to the run.

    python -m bench.soak [--steps 300] [--delay 1] [--tokens 256] [--out runs/soak] [--analyse RUN_ID]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench.common import ROOT, metric_series, run_id, sqlite_uri, vigorl

MEMORY = ("memory/driver_rss_mb", "memory/rollout_rss_mb", "memory/learner_rss_mb")
MAX_QUEUE, PER_STEP = 2, 2  # loop.max_queue, loop.prompts_per_step of the soak run
FLAT = 0.02  # the largest drift (`drift`) that counts as flat


def drift(values: list[float]) -> float:
    """Growth over the last half of `values`: (mean of its last fifth - mean of its first fifth) / the latter.
    The first half is warm-up (engine caches, allocator arenas, the image cache filling up)."""
    v = values[len(values) // 2:]
    k = max(1, len(v) // 5)
    first, last = sum(v[:k]) / k, sum(v[-k:]) / k
    return (last - first) / first


def soak(out: Path, steps: int, delay: float, tokens: int, max_queue: int = MAX_QUEUE,
         per_step: int = PER_STEP) -> dict:
    shutil.rmtree(out / "run", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    log = vigorl("train", "--config", ROOT / "configs/local_cpu.yaml", f"out={out / 'run'}",
                 f"model.path={out / 'model'}", f"data.path={out / 'data'}", "make_data=16", "loop.mode=async",
                 f"loop.steps={steps}", f"loop.learner_delay_s={delay}", f"loop.max_queue={max_queue}",
                 f"loop.prompts_per_step={per_step}", f"sampling.max_tokens_per_turn={tokens}",
                 "tracking.picture_every=0", "tracking.checkpoint_every=0", log=out / "train.log")
    return analyse(out, run_id(log), max_queue * per_step, {"delay_s": delay, "tokens_per_turn": tokens})


def analyse(out: Path, rid: str, bound: int, settings: dict | None = None) -> dict:
    """The checks on run `rid` in out/run/mlflow.db; writes out/soak.json (with the run's `settings`) and
    out/soak.png, also to the run."""
    import mlflow

    uri = sqlite_uri(out / "run")
    series = metric_series(uri, rid, MEMORY + ("ledger/in_flight", "time/step_s", "episode/zooms"))
    result = {"steps": len(series["time/step_s"]), "minutes": round(sum(series["time/step_s"]) / 60, 1),
              "queue_max": max(series["ledger/in_flight"]), "queue_bound": bound,
              "queue_bounded": max(series["ledger/in_flight"]) <= bound,
              "zooms_per_episode": round(sum(series["episode/zooms"]) / max(1, len(series["episode/zooms"])), 2),
              "rss_mb_first_half_last": {k.split("/")[1]: [round(series[k][0], 1), round(series[k][len(series[k]) // 2], 1),
                                                           round(series[k][-1], 1)] for k in MEMORY},
              "rss_drift_last_half": {k.split("/")[1]: round(drift(series[k]), 4) for k in MEMORY}, "run_id": rid}
    result["memory_flat"] = all(abs(d) <= FLAT for d in result["rss_drift_last_half"].values())
    result |= settings or {}
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    figure(series, bound, out / "soak.png")
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.log_artifact(rid, str(out / "soak.json"))
    client.log_artifact(rid, str(out / "soak.png"))
    return result


def figure(series: dict, bound: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for k in MEMORY:
        a.plot(series[k], label=k.split("/")[1])
    a.set_ylabel("RSS (MiB)")
    a.legend()
    b.plot(series["ledger/in_flight"], label="prompts in flight")
    b.axhline(bound, color="red", linestyle="--", label="bound (max_queue steps)")
    b.set_ylim(0, bound + 1)
    b.set_xlabel("step")
    b.set_ylabel("prompts")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--delay", type=float, default=1.0, help="learner sleep per step, seconds")
    p.add_argument("--tokens", type=int, default=256, help="tokens per turn (sampling.max_tokens_per_turn)")
    p.add_argument("--out", default="runs/soak")
    p.add_argument("--analyse", metavar="RUN_ID", help="only check an earlier soak's run in OUT/run (no new run)")
    a = p.parse_args()
    out = Path(a.out).resolve()
    r = analyse(out, a.analyse, MAX_QUEUE * PER_STEP) if a.analyse else soak(out, a.steps, a.delay, a.tokens)
    print(json.dumps(r, indent=2))
    sys.exit(0 if r["queue_bounded"] and r["memory_flat"] else 1)
