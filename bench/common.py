"""What the benchmark scripts share: a vigorl CLI job run to its end and read back from its MLflow store, and a
peer system run in a fresh interpreter that answers with one `TAG {json}` line on stdout.

Benchmarks read their numbers from the run's own MLflow metrics (the same series a user watches), never from
log text; a peer (TRL) runs in its own interpreter so that its torch threads and imports do not share a process
with ours.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def vigorl(*args, log: Path, echo: bool = True, timeout: float | None = None) -> str:
    """Run `vigorl ARGS`, its output to `log` and returned; with `echo`, the driver's own lines ("[...]") also go
    to the console. A command with an `out=DIR` logs to its own MLflow store DIR/mlflow.db (what the results
    name), not the project's. A job still running after `timeout` seconds is killed, and that is an error."""
    args = tuple(map(str, args))
    outs = [a[4:] for a in args if a.startswith("out=")]
    store = [f"tracking.uri={sqlite_uri(outs[-1])}"] if outs else []
    cmd = [sys.executable, "-m", "cluster.cli", *args, *store]
    lines = []
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, bufsize=1, env=env) as p:
        expired = threading.Event()
        timer = threading.Timer(timeout or 0, lambda: (expired.set(), p.kill()))
        if timeout:
            timer.start()
        for line in p.stdout:
            f.write(line)
            lines.append(line)
            if echo and line.startswith("[") and not line.startswith("[rank"):
                print(line, end="", flush=True)
    timer.cancel()
    if expired.is_set():
        raise RuntimeError(f"`vigorl {' '.join(args)}` ran past its {timeout:.0f} s; last lines of {log}:\n"
                           + "".join(lines[-30:]))
    if p.returncode:
        raise RuntimeError(f"`vigorl {' '.join(args)}` failed ({p.returncode}); last lines of {log}:\n"
                           + "".join(lines[-30:]))
    return "".join(lines)


def run_id(output: str) -> str:
    """The MLflow run id a vigorl job printed ("MLflow run <id>"), "" if none."""
    found = re.findall(r"MLflow run ([0-9a-f]{32})", output)
    return found[-1] if found else ""


def sqlite_uri(directory: Path) -> str:
    """The MLflow tracking URI of a store at `directory`/mlflow.db (absolute: jobs run from the repository root)."""
    return f"sqlite:///{Path(directory).resolve() / 'mlflow.db'}"


def metric_series(uri: str, run_id: str, keys) -> dict[str, list[float]]:
    """{key: the run's values of `key` in step order} for each of `keys`."""
    import mlflow

    if not run_id:
        raise ValueError(f"no MLflow run id to read {', '.join(keys)} from (the job printed no 'MLflow run <id>')")

    client = mlflow.MlflowClient(tracking_uri=uri)
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in keys}


def child_result(module: str, args: list[str], tag: str, what: str, timeout: float) -> dict:
    """Run `python -m MODULE ARGS` in a fresh interpreter; the JSON of its stdout line `TAG {json}`."""
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    line = next((x for x in p.stdout.splitlines() if x.startswith(tag + " ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"{what} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(line[len(tag) + 1:])


def print_settings(stage: str, mine: dict, theirs: dict, peer: str = "TRL", skip=()) -> None:
    """Both sides' settings, a line per key (ours first, then the peer's own keys), under the ratio they explain."""
    for key in [*mine, *(k for k in theirs if k not in mine)]:
        if key not in skip:
            print(f"[{stage}]   {key}: vigorl {mine.get(key, '-')} | {peer} {theirs.get(key, '-')}", flush=True)
