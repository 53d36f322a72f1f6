"""Lineage files: every exported model dir (SFT `out/model`, RL `checkpoints/step_N`) and every MCTS `out`
(carried on by `vigorl linearize` / `to-multiturn`) holds RUN_FILE, `vigorl_run.json` {run_id, tracking_uri
(redacted), step, command, ...}; a run whose model or data holds one (`sources`) tags `vigorl.source_run` /
`vigorl.source_uri` and links to it in its description (cluster/tracking.py), so MCTS -> SFT -> GRPO -> eval is
one chain in MLflow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cluster.tracking_store import data_path
from cluster.tracking_writer import warn

RUN_FILE = "vigorl_run.json"  # the lineage file of an exported model dir or an MCTS / SFT-data dir


def read_run_file(path: str | Path) -> dict | None:
    """The RUN_FILE of a dir (or of a file's dir), or None when there is none. A file that is not a JSON object
    with a run_id is reported (named) and ignored: lineage is a label, not a reason to stop a run."""
    p = Path(path)
    f = (p if p.is_dir() else p.parent) / RUN_FILE
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        warn(f"[mlflow] {f}: not a readable lineage file ({e}); its run is not linked")
        return None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str) or not info["run_id"]:
        warn(f"[mlflow] {f}: no run_id in it; its run is not linked")
        return None
    return info


def write_run_file(directory: str | Path, info: dict) -> Path:
    path = Path(directory) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def carry_run_file(source: str | Path, out: str | Path) -> bool:
    """Copy the lineage file of `source` (a dir, or a file's dir: an MCTS run's trees.jsonl) into `out`, so data
    made from an MCTS run (`vigorl linearize`, `to-multiturn`) still names that run. Returns whether there was one."""
    info = read_run_file(source)
    if info is not None:
        write_run_file(out, info)
    return info is not None


def sources(cfg) -> dict[str, dict]:
    """The vigorl runs this run starts from: {"model": info} when model.path holds RUN_FILE (an SFT model or an
    RL checkpoint), {"data": info} when the data dir does (MCTS trees carried on by linearize / to-multiturn)."""
    found = {}
    model = getattr(getattr(cfg, "model", None), "path", "")
    if model and Path(model).is_dir() and (info := read_run_file(model)):
        found["model"] = info
    data = data_path(cfg)
    if data and Path(data).exists() and (info := read_run_file(data)):
        found["data"] = info
    return found
