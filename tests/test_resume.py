"""Resumable checkpoints without a cluster: which checkpoint `--resume` picks (a save cut short is never
loaded), what it keeps, the config changes it refuses, and the CLI's errors. The kill-and-resume run on the
real stack is in test_train_ray.py."""

import json

import pytest

from actors.rollout import turn_seed
from cluster import resume
from cluster.cli import main
from configs.load import load, to_flat_dict
from configs.schema import TrainConfig


def ckpt_dir(out, step, complete=True, **state):
    d = out / resume.RESUME_DIR / f"step_{step:05d}"
    d.mkdir(parents=True)
    (d / resume.STATE).write_text(json.dumps({"step": step} | state))
    if complete:
        (d / resume.COMPLETE).write_text("now\n")
    return d


def fake_model(path, hidden=8):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


def test_latest_skips_a_save_cut_short(tmp_path):
    ckpt_dir(tmp_path, 1)
    ckpt_dir(tmp_path, 2)
    ckpt_dir(tmp_path, 3, complete=False)
    assert resume.latest(tmp_path).step == 2
    ckpt_dir(tmp_path, 100_000)  # past the 5-digit name: still the newest
    assert resume.latest(tmp_path).step == 100_000


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(resume.ResumeError, match="no complete resumable checkpoint"):
        resume.latest(tmp_path)
    ckpt_dir(tmp_path, 4, complete=False)
    with pytest.raises(resume.ResumeError, match="step_00004: cut short"):
        resume.latest(tmp_path)


def test_prune_keeps_the_newest(tmp_path):
    for s in (1, 2, 3):
        ckpt_dir(tmp_path, s)
    ckpt_dir(tmp_path, 0, complete=False)  # cut short before the newest complete one: goes
    ckpt_dir(tmp_path, 4, complete=False)  # being written after it: stays
    resume.prune(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / resume.RESUME_DIR).iterdir()) == ["step_00002", "step_00003",
                                                                                "step_00004"]


def saved(tmp_path, cfg, step=2):
    state = {"model_fingerprint": resume.model_fingerprint(cfg.model.path),
             "config": {k: str(v) for k, v in to_flat_dict(cfg).items()}}
    ckpt_dir(tmp_path / "run", step, **state)
    return resume.latest(tmp_path / "run")


def test_check_refuses_another_model_or_learner_layout_and_lists_the_rest(tmp_path):
    cfg = load(TrainConfig, None, [f"model.path={fake_model(tmp_path / 'm')}", "loop.steps=5"])
    ck = saved(tmp_path, cfg)
    assert resume.check(ck, cfg) == []
    longer = load(TrainConfig, None, [f"model.path={tmp_path / 'm'}", "loop.steps=9", "learner.lr=2e-6"])
    assert resume.check(ck, longer) == ["learner.lr: 1e-06 -> 2e-06", "loop.steps: 5 -> 9"]
    other = load(TrainConfig, None, [f"model.path={fake_model(tmp_path / 'o', hidden=16)}",
                                     "loop.steps=5"])
    with pytest.raises(resume.ResumeError, match="is not the model the checkpoint"):
        resume.check(ck, other)
    with pytest.raises(resume.ResumeError, match="no model there"):
        resume.check(ck, load(TrainConfig, None, [f"model.path={tmp_path / 'gone'}", "loop.steps=5"]))
    zero3 = load(TrainConfig, None, [f"model.path={tmp_path / 'm'}", "loop.steps=5",
                                     "learner.zero_stage=3"])
    with pytest.raises(resume.ResumeError, match="learner.zero_stage changed from 2 to 3"):
        resume.check(ck, zero3)
    with pytest.raises(resume.ResumeError, match="at step 2 and loop.steps=2: nothing left"):
        resume.check(ck, load(TrainConfig, None, [f"model.path={tmp_path / 'm'}", "loop.steps=2"]))


def test_cli_resume_errors(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err
    cfg = load(TrainConfig, None, [f"model.path={fake_model(tmp_path / 'm')}", f"out={tmp_path / 'run'}"])
    (tmp_path / "run").mkdir()
    resume.write_config(cfg, tmp_path / "run")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2  # before Ray starts
    assert "--resume: " in (err := capsys.readouterr().err) and "no complete resumable checkpoint" in err
    saved(tmp_path, cfg)
    assert main(["train", "--resume", str(tmp_path / "run"), f"model.path={fake_model(tmp_path / 'o', 16)}"]) == 2
    assert "is not the model the checkpoint" in capsys.readouterr().err


def test_turn_seeds_are_fixed_and_distinct():
    # numpy's SeedSequence is stable across versions and platforms: these numbers never change
    assert turn_seed(0, 0, 0, 0) == 821328062 and turn_seed(0, 1, 2, 3) == 1750788034
    seeds = {turn_seed(s, d, e, t) for s in (0, 1) for d in range(3) for e in range(4) for t in range(3)}
    assert len(seeds) == 2 * 3 * 4 * 3 and all(0 <= x < 2**31 for x in seeds)


def test_a_new_run_clears_an_earlier_runs_resume_state_and_the_config_it_writes_starts_afresh(tmp_path):
    ckpt_dir(tmp_path, 50)
    assert resume.clear(tmp_path) == 1 and resume.clear(tmp_path) == 0
    cfg = load(TrainConfig, None, [f"out={tmp_path}", "resume=true", "loop.steps=7"])
    written = load(TrainConfig, str(resume.write_config(cfg, tmp_path)), [])
    assert written.loop.steps == 7 and written.resume is False
