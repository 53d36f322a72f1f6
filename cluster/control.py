"""Talking to a running `vigorl train` through its out dir: files the driver reads at every step boundary.

    OUT/driver.json                   written while a run goes on (pid, host, MLflow run id): "a run is here"
    OUT/control/rollout_actors.json   `vigorl scale OUT --rollout-actors K`: the newest request wins
    OUT/control/stop.json             `vigorl stop OUT`: end after the step in progress, with a checkpoint

Files, not RPCs: they need no address or port, work from any node that sees the out dir (and from
`ray job submit`), and a request made while the driver is busy waits for the next step boundary.
Requests left by an earlier run in the same dir are dropped when a run starts.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

DRIVER_FILE = "driver.json"
SCALE_FILE = "control/rollout_actors.json"
STOP_FILE = "control/stop.json"


def _request(out: str | Path, name: str, body: dict) -> Path:
    """Write `body` to OUT/name atomically, for the run in progress in `out`."""
    out = Path(out)
    if not (out / DRIVER_FILE).is_file():
        raise FileNotFoundError(f"{out}: no `vigorl train` run in progress there (no {DRIVER_FILE})")
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body | {"requested_at": time.time()}))
    os.replace(tmp, path)
    return path


def request_scale(out: str | Path, k: int) -> Path:
    """Ask the run writing to `out` for k rollout actors (the newest request wins)."""
    if k < 1:
        raise ValueError(f"--rollout-actors must be >= 1, got {k}")
    return _request(out, SCALE_FILE, {"rollout_actors": k})


def request_stop(out: str | Path) -> Path:
    """Ask the run writing to `out` to end after its step in progress (checkpointed, MLflow run finished)."""
    return _request(out, STOP_FILE, {})


class ScaleRequest(NamedTuple):
    k: int  # rollout actors asked for
    at: float  # when (time.time()): a new request, even for the same k, is a new one


def requested_scale(out: str | Path) -> ScaleRequest | None:
    """The `vigorl scale` request last made for the run in `out`, if any."""
    path = Path(out) / SCALE_FILE
    if not path.is_file():
        return None
    req = json.loads(path.read_text())
    return ScaleRequest(int(req["rollout_actors"]), float(req["requested_at"]))


def stop_requested(out: str | Path) -> bool:
    return (Path(out) / STOP_FILE).is_file()


@contextmanager
def driver_file(out: str, run_id: str):
    """OUT/driver.json while the run goes on: how `vigorl scale` and `vigorl stop` know a run is there.
    Requests an earlier run in the same dir left are dropped: a run starts with cluster.rollout_actors."""
    out = Path(out)
    for name in (SCALE_FILE, STOP_FILE):
        (out / name).unlink(missing_ok=True)
    (out / DRIVER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id}))
    try:
        yield
    finally:
        (out / DRIVER_FILE).unlink(missing_ok=True)
