"""The out-dir guards of the job commands (run by `cluster.prelaunch` on the driver, before any job code):
nothing an earlier run left in `out` is deleted or mixed with this run's without being asked.
- train: a new run (no `--resume`) into an `out` holding resumable checkpoints (OUT/resume/step_N, complete)
  or HF exports (OUT/checkpoints/step_N) stops, offering `--resume` or `--overwrite`; `--overwrite` removes
  OUT/resume, OUT/checkpoints and OUT/lineage. With `--resume` the checkpoint is found and checked here
  (cluster.resume.latest / check: model fingerprint, learner layout).
- eval, sft, mcts record the settings that make their outputs what they are in OUT/<cmd>_settings.json
  (`settings`); a rerun into an `out` that holds outputs (eval: items.jsonl lines; mcts: trees.jsonl lines;
  sft: OUT/model) made with other settings stops with an error naming each differing key, its recorded and
  its new value; with the same settings it resumes (eval, mcts) or trains again (sft) as before. Outputs
  with no settings file (an older vigorl) are refused too: nobody can tell what made them.
  `--overwrite` starts afresh: OUT/items.jsonl, summary.json, gallery/ (eval), trees.jsonl, failed.jsonl
  (mcts), model/, summary.json (sft) are removed.
Removals happen last, once every check above has passed; `dry_run` deletes and writes nothing and prints
what a run would do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

SETTINGS_FILE = "{cmd}_settings.json"  # OUT/eval_settings.json, OUT/sft_settings.json, OUT/mcts_settings.json


class PrelaunchError(ValueError):
    """An output guard refused the run: names the out dir, what is there, and how to go on (--resume,
    --overwrite, another out=)."""


@dataclass
class Plan:
    """What the run will remove and write in `out` once every check has passed."""

    remove: list[Path] = field(default_factory=list)
    write: dict[Path, str] = field(default_factory=dict)

    def apply(self, cmd: str) -> None:
        """Remove `remove`, then write `write` (each file through a temp file and a rename), saying so as `cmd`."""
        for p in self.remove:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        if self.remove:
            print(f"[{cmd}] --overwrite: removed {', '.join(str(p) for p in self.remove)}")
        for path, text in self.write.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)


def guard(cmd: str, cfg, overwrite: bool) -> Plan:
    """The output guard of `cmd` (module doc): raises PrelaunchError / ResumeError, or returns what the run
    removes and writes once every check has passed."""
    if cmd == "train":
        return _train_guard(cfg, overwrite)
    if cmd in ("eval", "mcts", "sft"):
        return _settings_guard(cmd, cfg, overwrite)
    return Plan()


def _train_guard(cfg, overwrite: bool) -> Plan:
    from cluster import resume

    out = Path(cfg.out)
    if cfg.resume:
        if overwrite:
            raise PrelaunchError(f"--resume and --overwrite: go on from {out}'s checkpoint (--resume) or start "
                                 "afresh there (--overwrite), not both")
        resume.check(resume.latest(out), cfg)  # ResumeError: no checkpoint, another model or learner layout
        return Plan()
    done = resume.complete_dirs(out)
    exports = sorted(p for p in (out / "checkpoints").glob("step_*") if p.is_dir()) if out.is_dir() else []
    if not (done or exports):
        return Plan()  # a save cut short alone is never loaded (resume.latest), and this run's saves prune it
    if not overwrite:
        what = ([f"{len(done)} resumable checkpoint(s) in {out / resume.RESUME_DIR} (newest {done[-1].name})"] if done
                else []) + ([f"{len(exports)} HF export(s) in {out / 'checkpoints'}"] if exports else [])
        go_on = f"go on from the newest with `vigorl train --resume {out}`, " if done else ""
        raise PrelaunchError(f"out={out} holds an earlier run's {' and '.join(what)}: {go_on}start afresh there with "
                             "--overwrite (removes them), or give another out=")
    _refuse_live_run(out)
    return Plan(remove=[p for p in (out / resume.RESUME_DIR, out / "checkpoints", out / "lineage") if p.exists()])


def _refuse_live_run(out: Path) -> None:
    """--overwrite never removes the checkpoints of a run still going on in `out` (its OUT/driver.json names a
    live process on this host)."""
    from cluster.control import DRIVER_FILE

    try:
        driver = json.loads((out / DRIVER_FILE).read_text())
        pid, host = int(driver["pid"]), driver["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no run there (or a file no run wrote)
    try:
        os.kill(pid, 0)
        alive = host == socket.gethostname()
    except ProcessLookupError:
        alive = False
    except PermissionError:  # a process of another user: alive
        alive = host == socket.gethostname()
    if alive:
        raise PrelaunchError(f"out={out}: a run is going on there (pid {pid} on {host}, {out / DRIVER_FILE}): stop "
                             f"it first (`vigorl stop {out}`)")


def _plain(v):
    return v.value if isinstance(v, Enum) else v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


def _flat(obj, prefix: str, skip: tuple[str, ...] = ()) -> dict:
    from configs.load import to_flat_dict

    return {k: _plain(v) for k, v in to_flat_dict(obj, prefix).items() if k[len(prefix):] not in skip}


def _digest(path: str, unescape: bool) -> str:
    """A prompt file as its content's sha256 (its path may differ between runs, its text is what counts)."""
    if not path:
        return ""
    p = Path(path)
    return ("sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else f"missing: {path}") + (
        " (unescaped)" if unescape else "")


NOT_DOWNLOADED = "(a Hub model not downloaded yet)"  # a dry run's fingerprint of it: not compared (`diff`)


def _fingerprint(path: str) -> str:
    """cluster.resume.model_fingerprint of a model dir; NOT_DOWNLOADED for a Hub id a dry run left as it is."""
    from cluster.resume import model_fingerprint
    from data_gen.hub import is_model_dir

    return model_fingerprint(path) if is_model_dir(path) else NOT_DOWNLOADED


def settings(cmd: str, cfg) -> tuple[dict, dict]:
    """(settings, info) of an eval, mcts or sft run: `settings` are compared between runs into one out (the
    keys are config keys, or model_fingerprint / teacher.model_fingerprint); `info` (the models as given) only
    explains a difference. Left out: placement, throughput, tracking, how many items (limit), dtype.
    eval: what scores an item — the model, items (data, benchmark), mode, judge, sampling (not its seed: another
    draw from the same distribution), episodes per item, prompt and system prompt, zoom geometry, image bounds,
    budgets; data.task only picks defaults (those are compared themselves). mcts: teacher, search, judge, data, the
    policy's image bounds (the tree coordinates' frame), seed. sft: the base model and the data."""
    if cmd == "eval":
        r = cfg.rollout
        s = {"model_fingerprint": _fingerprint(cfg.model.path), "benchmark": cfg.benchmark or "prompts.parquet",
             "benchmark_file": cfg.benchmark_file, "judge": _plain(cfg.judge), "judge_thinking": cfg.judge_thinking,
             **_flat(cfg.data, "data.", skip=("task",)), "data.path": str(Path(cfg.data.path).resolve()),
             **_flat(cfg.sampling, "sampling.", skip=("seed",)), **_flat(cfg.zoom, "zoom."),
             **_flat(r, "rollout.", skip=("system_prompt_file", "system_prompt_unescape", "train_forced_prefix")),
             "rollout.system_prompt": _digest(r.system_prompt_file, r.system_prompt_unescape),
             **_flat(cfg.model, "model.", skip=("path", "source", "dtype"))}
        return s, {"model": cfg.model.source or cfg.model.path, "model_path": cfg.model.path}
    if cmd == "mcts":
        t = cfg.teacher
        s = {**_flat(t, "teacher.", skip=("model_path", "model_source", "tensor_parallel_size", "gpus", "cpus",
                                          "max_model_len", "prompt_file", "prompt_unescape")),
             "teacher.prompt": _digest(t.prompt_file, t.prompt_unescape),
             "teacher.model_fingerprint": _fingerprint(t.model_path) if str(t.kind) == "vllm" else "",
             **_flat(cfg.search, "search."), **_flat(cfg.data, "data."),
             "data.path": str(Path(cfg.data.path).resolve()), "judge": _plain(cfg.judge), "seed": cfg.seed,
             "model.min_pixels": cfg.model.min_pixels, "model.max_pixels": cfg.model.max_pixels}
        return s, {"teacher": t.model_source or t.model_path}
    if cmd == "sft":
        s = {"model_fingerprint": _fingerprint(cfg.model.path), "data": str(Path(cfg.data).resolve())}
        for key in ("dataset", "image_root", "format"):  # how the data is read, where the config has these keys
            if hasattr(cfg, key):
                s[key] = _plain(getattr(cfg, key))
        return s, {"model": cfg.model.source or cfg.model.path, "model_path": cfg.model.path}
    raise ValueError(f"settings: no recorded settings for {cmd!r}")


# per command: (outputs removed by --overwrite, the output whose presence makes the settings binding, its name)
OUTPUTS = {"eval": (("items.jsonl", "summary.json", "gallery"), "items.jsonl", "item line(s)"),
           "mcts": (("trees.jsonl", "failed.jsonl"), "trees.jsonl", "tree(s)"),
           "sft": (("model", "summary.json"), "model", "fine-tuned model")}


def _read(cmd: str, path: Path) -> list:
    """What there is of an output: the lines of items.jsonl / trees.jsonl read as the job reads them (a corrupt
    line is the same error naming file and line; a half-written last line does not count, the job warns and cuts
    it), the files in the sft model dir; [] when absent."""
    if cmd == "sft":
        return list(path.iterdir()) if path.is_dir() else []
    from data_gen.records import read_jsonl
    from data_gen.traces import read_trees

    def item(line) -> None:  # cluster.eval_job.read_items's check
        if not isinstance(line, dict) or "item_id" not in line or "correct" not in line:
            raise ValueError("no item_id / correct")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the job warns about a half-written last line, once
        return read_trees(path) if cmd == "mcts" else read_jsonl(path, item, "an item line")


def diff(recorded: dict, now: dict, info_was: dict, info_now: dict) -> list[str]:
    """'key: recorded -> now' for each setting that differs; keys only one side has are not compared (a key
    added to or removed from vigorl's settings since the out was written), nor a fingerprint a dry run could not
    take. A model's fingerprint is shown with the model as given."""
    out = []
    for key in sorted(set(recorded) & set(now)):
        was, new = recorded[key], now[key]
        if was == new or new == NOT_DOWNLOADED:
            continue
        if key.endswith("model_fingerprint") and was and new:
            who = "teacher" if key.startswith("teacher.") else "model"
            was, new = f"{was[:12]} ({info_was.get(who, '?')})", f"{new[:12]} ({info_now.get(who, '?')})"
        out.append(f"{key}: {was!r} -> {new!r}" if isinstance(was, str) or isinstance(new, str) else
                   f"{key}: {was} -> {new}")
    return out


def _settings_guard(cmd: str, cfg, overwrite: bool) -> Plan:
    out = Path(cfg.out)
    record = out / SETTINGS_FILE.format(cmd=cmd)
    removed, binding, what = OUTPUTS[cmd]
    now, info = settings(cmd, cfg)
    plan = Plan(write={record: json.dumps({"settings": now, "info": info}, indent=1) + "\n"})
    if overwrite:  # whatever is there, corrupt or not
        plan.remove = [p for p in [out / name for name in removed] + [record] if p.exists() or p.is_symlink()]
        return plan
    found = _read(cmd, out / binding)
    n = len(found)
    if not n:
        return plan
    fresh = f"--overwrite to start afresh (removes {', '.join(removed)}), or give another out="
    if not record.is_file():
        judges = ""
        if cmd == "eval":  # items carry their judge (an older vigorl's only check)
            seen = {x.get("judge", "reward") for x in found}
            judges = f" (judge {', '.join(sorted(seen))}; this run: judge={_plain(cfg.judge)})"
        raise PrelaunchError(f"out={out} holds {n} {what} in {out / binding}{judges} but no {record.name}: what "
                             f"made them (model, data, settings) is unknown, so this run would mix with them. "
                             f"Rerun with {fresh}")
    try:
        was = json.loads(record.read_text())
        recorded, info_was = was["settings"], was.get("info", {})
    except (ValueError, KeyError, TypeError) as e:
        raise PrelaunchError(f"{record}: unreadable ({e}); rerun with {fresh}") from None
    changed = diff(recorded, now, info_was, info)
    if changed:
        raise PrelaunchError(f"out={out} holds {n} {what} made with other settings than this run's "
                             f"({record}):\n  " + "\n  ".join(changed) + f"\nRerun with the same settings to "
                             f"{'go on' if cmd != 'sft' else 'train again'}, with {fresh}")
    return plan
