"""Resumable checkpoints of `vigorl train`, and `vigorl train --resume OUT_DIR`.

Every `tracking.checkpoint_every` steps (and at the end) the driver writes, beside the HF export in
OUT/checkpoints/step_N/ (and every `tracking.resume_every` steps without an export):

    OUT/resume/step_N/
      learner/      DeepSpeed `save_checkpoint` (tag "learner"; with its `latest` and zero_to_fp32.py beside
                    it): weights, optimizer moments, step counters (each rank its ZeRO partition); client
                    state: the weight version and the learner's torch RNG
      state.json    the driver's: step, ledger (queue order, cursor, epoch, shuffling RNG, what each epoch
                    has done; prompts in flight go back to the queue's front), MLflow run id, model
                    fingerprint, the resolved config
      complete      written last: a directory without it is a save cut short and is never loaded

Resume loads the newest complete one; so does a learner restart within a run (cluster/train.py). The learner goes on with the same weights, moments and LR step; the
rollout actors get its weights before they generate; sampling seeds come from the ledger ticket
(`actors.rollout.turn_seed`), so a sync run resumed after step N trains on the samples the uninterrupted
run would have. Older checkpoints beyond `tracking.keep_resume` are deleted (HF exports are kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

RESUME_DIR = "resume"
COMPLETE = "complete"
STATE = "state.json"
CONFIG_FILE = "config.yaml"  # the run's resolved config, written at start: what `--resume` reads by default
# Keys whose change makes the learner's checkpoint unloadable: refused on resume.
# (The model is checked by its fingerprint, the dataset by its prompt ids against the ledger's.)
FIXED_KEYS = ("learner.zero_stage", "cluster.learner_ranks", "learner.freeze_vision")


class ResumeError(ValueError):
    """`--resume` cannot go on: no checkpoint, or a config that changes the model or the learner's layout."""


@dataclass
class Checkpoint:
    path: Path  # OUT/resume/step_N
    state: dict  # its state.json

    @property
    def step(self) -> int:
        return int(self.state["step"])


def model_fingerprint(model_path: str | Path) -> str:
    """sha256 of the model dir's config.json and the names and sizes of its weight files: a different model
    (architecture or checkpoint) under the same path changes it; hashing the weights themselves would take
    minutes on a 7B model."""
    root = Path(model_path)
    h = hashlib.sha256((root / "config.json").read_bytes())
    for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def step_dir(out: str | Path, step: int) -> Path:
    return Path(out).resolve() / RESUME_DIR / f"step_{step:05d}"


def step_dirs(out: str | Path) -> list[Path]:
    """Every OUT/resume/step_N directory, complete or not, by step (numerically: step_100000 after 99999)."""
    root = Path(out) / RESUME_DIR
    found = [p for p in root.glob("step_*") if p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def complete_dirs(out: str | Path) -> list[Path]:
    """The complete resumable checkpoints in `out`, oldest first."""
    return [p for p in step_dirs(out) if (p / COMPLETE).is_file()]


def latest(out: str | Path) -> Checkpoint:
    """The newest complete checkpoint of the run in `out` (a half-written one is skipped)."""
    found = complete_dirs(out)
    if not found:
        cut = step_dirs(out)
        raise ResumeError(f"{out}: no complete resumable checkpoint in {Path(out) / RESUME_DIR}/"
                          + (f" ({', '.join(p.name for p in cut)}: cut short, no '{COMPLETE}' marker)" if cut else "")
                          + "; a run writes one every tracking.checkpoint_every (and tracking.resume_every) steps "
                          "and at its end")
    return Checkpoint(found[-1], json.loads((found[-1] / STATE).read_text()))


def check(ckpt: Checkpoint, cfg) -> list[str]:
    """Refuse a config that changes the model or the learner's layout (ResumeError naming the key); return
    the other changed keys as 'key: old -> new' lines (the user asked for them: printed, not refused)."""
    from configs.load import to_flat_dict

    now = {k: str(v) for k, v in to_flat_dict(cfg).items()}
    was = ckpt.state["config"]
    if not (Path(cfg.model.path) / "config.json").is_file():
        raise ResumeError(f"model.path={cfg.model.path}: no model there (the checkpoint {ckpt.path} was trained "
                          f"from model.path={was.get('model.path')})")
    if model_fingerprint(cfg.model.path) != ckpt.state["model_fingerprint"]:
        raise ResumeError(f"model.path={cfg.model.path} is not the model the checkpoint {ckpt.path} was trained "
                          f"from (model.path={was.get('model.path')}): its config.json or weight files differ")
    for key in FIXED_KEYS:
        if now.get(key) != was.get(key):
            raise ResumeError(f"{key} changed from {was.get(key)} to {now.get(key)}: the checkpoint {ckpt.path} "
                              f"cannot be resumed with another {key}")
    if cfg.loop.steps <= ckpt.step:
        raise ResumeError(f"the checkpoint {ckpt.path} is at step {ckpt.step} and loop.steps={cfg.loop.steps}: "
                          f"nothing left to train (raise loop.steps to go on)")
    skip = {"resume", "verbose", "cluster.address"}
    return [f"{k}: {was.get(k)} -> {now.get(k)}" for k in sorted(set(now) | set(was))
            if k not in skip and now.get(k) != was.get(k)]


def save(ray, learners: list, out: str | Path, step: int, state: dict, keep: int) -> Path:
    """Write step `step`'s resumable checkpoint (the learner's on every rank, then the driver's state, then
    the marker), then delete what `keep` no longer needs. Returns its directory."""
    path = step_dir(out, step)
    shutil.rmtree(path, ignore_errors=True)  # a save of this step cut short by an earlier run
    path.mkdir(parents=True)
    ray.get([r.save_state.remote(str(path)) for r in learners])
    _write_atomic(path / STATE, json.dumps(state | {"step": step}, indent=1))
    _write_atomic(path / COMPLETE, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    prune(out, keep)
    return path


def prune(out: str | Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (at least 1); delete older complete ones and every
    cut-short one older than the newest complete."""
    done = complete_dirs(out)
    if not done:
        return
    kept, newest = set(done[-max(1, keep):]), int(done[-1].name[5:])
    for p in step_dirs(out):
        if p not in kept and int(p.name[5:]) < newest:
            shutil.rmtree(p)


def write_config(cfg, out: str | Path) -> Path:
    """OUT/config.yaml: the run's resolved config (what `vigorl train --resume OUT` starts from), with
    resume off, so `--config OUT/config.yaml` alone starts afresh."""
    from omegaconf import OmegaConf

    conf = OmegaConf.structured(cfg)
    conf.resume = False
    path = Path(out) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, OmegaConf.to_yaml(conf))
    return path


def clear(out: str | Path) -> int:
    """Remove every resumable checkpoint in `out` (complete or cut short); returns how many. HF exports stay.
    A new run no longer does this by itself: it stops before Ray starts, and `--overwrite` removes OUT/resume,
    OUT/checkpoints and OUT/lineage once every check has passed (cluster/prelaunch.py)."""
    found = step_dirs(out)
    for p in found:
        shutil.rmtree(p)
    return len(found)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
