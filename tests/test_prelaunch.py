"""Before Ray starts (cluster/prelaunch.py, data_gen/hub.py), without a cluster: Hub ids resolve from an offline HF
cache laid out as huggingface_hub lays it out; a new train run into an out with checkpoints stops (and a bad
data.path leaves them there, even with --overwrite); eval / sft / mcts outs refuse a rerun with another model or
other settings, naming each difference; --dry-run deletes and writes nothing."""

import json
from pathlib import Path

import pytest

from cluster import prelaunch as pre
from cluster import resume
from cluster.cli import main
from cluster.outdir import PrelaunchError
from configs.jobs import EvalConfig, MCTSJobConfig, SFTConfig
from configs.load import load
from configs.released import official_defaults
from configs.schema import TrainConfig
from conftest import hf_cache
from data_gen import hub

ROOT = Path(__file__).resolve().parent.parent
REPO = "vigorl-test/tiny-vl"


def fake_model(path, hidden=8):
    """config.json and a weight file: all the resolver and the fingerprint read."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An HF cache holding REPO (two commits: main, and an older one), offline, as the environment says."""
    cache = tmp_path / "hf" / "hub"
    old = hf_cache(fake_model(tmp_path / "src-old", hidden=4), cache, REPO, rev="1" * 40)
    main_rev = hf_cache(fake_model(tmp_path / "src"), cache, REPO)  # last: refs/main names it
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, main_rev, old


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data_gen.synthetic import make_dataset

    root = tmp_path_factory.mktemp("data")
    make_dataset("visual_search", 3, seed=0, out=root, progress=False)
    return root


# ---- the resolver ----------------------------------------------------------------------------------------

def test_hub_id_resolves_from_an_offline_cache(offline_cache):
    cache, rev, old = offline_cache
    snap = cache / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert hub.resolve_model(REPO) == snap / rev
    assert hub.resolve_model(f"{REPO}@main") == snap / rev
    assert hub.resolve_model(f"{REPO}@{old}") == snap / old  # a commit
    assert json.loads((hub.resolve_model(f"{REPO}@{old}") / "config.json").read_text()) == {"hidden_size": 4}
    assert hub.cache_id(snap / rev) == REPO and hub.cache_id(cache) is None


def test_a_dry_run_reads_a_cached_model_without_the_hub(offline_cache, monkeypatch):
    cache, rev, _ = offline_cache
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online, but download=False (--dry-run) never asks the Hub for a cached one
    assert hub.resolve_model(REPO, download=False).name == rev


def test_hf_home_is_the_cache_root_when_hf_hub_cache_is_unset(tmp_path, monkeypatch):
    hf_cache(fake_model(tmp_path / "src"), tmp_path / "home" / "hub", REPO)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_cache() == tmp_path / "home" / "hub"
    assert hub.resolve_model(REPO).parent.parent.parent == tmp_path / "home" / "hub"


def test_a_model_nowhere_is_named_with_the_cache(offline_cache, tmp_path):
    cache, _, _ = offline_cache
    with pytest.raises(hub.ModelNotFound) as e:
        hub.resolve_model("other-org/missing-model@v2")
    assert "other-org/missing-model at revision v2" in str(e.value) and str(cache) in str(e.value)
    assert "HF_HUB_OFFLINE=1" in str(e.value) and "hf download other-org/missing-model" in str(e.value)
    with pytest.raises(hub.ModelNotFound, match="is not a model dir"):
        hub.resolve_model(tmp_path / "nowhere")  # an absolute path: never a Hub id
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.ModelNotFound, match="no config.json"):
        hub.resolve_model(tmp_path / "empty")
    assert hub.resolve_model(fake_model(tmp_path / "m")) == (tmp_path / "m").resolve()


def test_hub_id_shape():
    assert hub.split_id("Qwen/Qwen2.5-VL-7B-Instruct") == ("Qwen/Qwen2.5-VL-7B-Instruct", None)
    assert hub.split_id("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    for bad in ("/abs/path", "./org/name", "~/m", "a/b/c", "org--x/name", "org/..", "name", ""):
        assert hub.split_id(bad) is None, bad


def test_prelaunch_puts_the_local_dir_in_the_config_and_keeps_the_id(offline_cache, data, tmp_path):
    cache, rev, _ = offline_cache
    cfg = load(EvalConfig, None, [f"model.path={REPO}", f"data.path={data}", f"out={tmp_path / 'e'}"])
    pre.prelaunch("eval", official_defaults(cfg))
    assert Path(cfg.model.path) == cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / rev
    assert cfg.model.source == REPO
    pre.prelaunch("eval", cfg)  # again, as `--resume` reads OUT/config.yaml: the source stays the id
    assert cfg.model.source == REPO and Path(cfg.model.path).name == rev
    # the fingerprint reads the snapshot's files (symlinks into blobs/), not REPO/config.json in the cwd
    assert resume.model_fingerprint(cfg.model.path) == resume.model_fingerprint(fake_model(tmp_path / "same"))
    mcts = load(MCTSJobConfig, None, ["teacher.kind=vllm", f"teacher.model_path={REPO}@main",
                                      f"data.path={data}", f"out={tmp_path / 'm'}"])
    pre.prelaunch("mcts", mcts, dry_run=True)
    assert Path(mcts.teacher.model_path).name == rev and mcts.teacher.model_source == f"{REPO}@main"


def test_a_model_the_job_builds_is_not_looked_up(tmp_path, capsys):
    cfg = load(TrainConfig, None, ["make_tiny=small", "make_data=4", f"model.path={tmp_path}/org/x",
                                   f"data.path={tmp_path}/data", f"out={tmp_path}/run"])
    pre.prelaunch("train", cfg, dry_run=True)
    assert cfg.model.path == str(tmp_path / "org" / "x") and not (tmp_path / "org").exists()
    assert "the job builds it" in capsys.readouterr().out


# ---- train: checkpoints are never removed without --overwrite, nor before the checks pass -------------------

def checkpoint(out, step=3):
    """A complete resumable checkpoint as cluster.resume.save leaves it, and its HF export."""
    d = out / resume.RESUME_DIR / f"step_{step:05d}"
    (d / "learner").mkdir(parents=True)
    (d / resume.STATE).write_text(json.dumps({"step": step, "config": {}, "model_fingerprint": "x"}))
    (d / resume.COMPLETE).write_text("now\n")
    fake_model(out / "checkpoints" / f"step_{step:05d}")
    return d


def test_new_run_into_checkpoints_stops_and_a_bad_data_path_leaves_them(tmp_path, data, capsys, monkeypatch):
    import cluster.raystart

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster.raystart, "init_ray", no_ray)
    out, model = tmp_path / "run", fake_model(tmp_path / "model")
    ck = checkpoint(out)
    args = ["train", f"out={out}", f"model.path={model}"]
    assert main(args + [f"data.path={data}"]) == 2
    err = capsys.readouterr().err
    assert f"out={out} holds an earlier run's 1 resumable checkpoint(s)" in err
    assert f"vigorl train --resume {out}" in err and "--overwrite" in err
    with pytest.raises(FileNotFoundError, match=f"data.path: {tmp_path / 'typo'} does not exist"):
        main(args + [f"data.path={tmp_path / 'typo'}", "--overwrite"])
    assert (ck / resume.COMPLETE).is_file() and (out / "checkpoints" / "step_00003" / "config.json").is_file()
    cfg = load(TrainConfig, None, args[1:] + [f"data.path={data}"])
    pre.prelaunch("train", cfg, overwrite=True, dry_run=True)  # says what it would remove, removes nothing
    assert f"would remove {out / 'resume'}" in capsys.readouterr().out and ck.is_dir()
    with pytest.raises(PrelaunchError, match="--resume and --overwrite"):
        pre.prelaunch("train", load(TrainConfig, None, args[1:] + ["resume=true"]), overwrite=True)
    pre.prelaunch("train", cfg, overwrite=True)
    assert not (out / "resume").exists() and not (out / "checkpoints").exists()
    pre.prelaunch("train", cfg)  # nothing left: a new run goes ahead


def test_a_save_cut_short_alone_does_not_stop_a_new_run_and_stays(tmp_path, data):
    out = tmp_path / "run"
    cut = out / resume.RESUME_DIR / "step_00001"
    cut.mkdir(parents=True)
    cfg = load(TrainConfig, None, [f"out={out}", f"model.path={fake_model(tmp_path / 'm')}",
                                   f"data.path={data}"])
    pre.prelaunch("train", cfg)
    assert cut.is_dir()


def test_overwrite_never_removes_a_live_runs_checkpoints(tmp_path, data):
    import os
    import socket

    out = tmp_path / "run"
    checkpoint(out)
    (out / "driver.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": "r"}))
    cfg = load(TrainConfig, None, [f"out={out}", f"model.path={fake_model(tmp_path / 'm')}",
                                   f"data.path={data}"])
    with pytest.raises(PrelaunchError, match="a run is going on there"):
        pre.prelaunch("train", cfg, overwrite=True)
    assert (out / "resume").is_dir()


def test_bad_first_image_is_named(tmp_path):
    from data_gen.images import ImageError
    from data_gen.synthetic import make_dataset

    rows = make_dataset("visual_search", 2, seed=1, out=tmp_path / "d", progress=False)
    (tmp_path / "d" / rows[0].image).write_bytes(b"not a png")
    cfg = load(TrainConfig, None, [f"out={tmp_path}/run", f"model.path={fake_model(tmp_path / 'm')}",
                                   f"data.path={tmp_path / 'd'}"])
    with pytest.raises(ImageError, match=f"row {rows[0].prompt_id!r}.*corrupt"):
        pre.prelaunch("train", cfg)


# ---- eval / sft / mcts: another model or other settings into the same out ----------------------------------

def eval_cfg(out, model, data, *overrides):
    cfg = load(EvalConfig, str(ROOT / "configs" / "eval_local.yaml"),
               [f"out={out}", f"model.path={model}", f"data.path={data}", *overrides])
    return official_defaults(cfg)


def test_eval_rerun_with_another_model_or_settings_is_refused(tmp_path, data, capsys):
    out, a, b = tmp_path / "eval", fake_model(tmp_path / "a"), fake_model(tmp_path / "b", hidden=16)
    pre.prelaunch("eval", eval_cfg(out, a, data), dry_run=True)
    assert not out.exists()  # a dry run writes nothing
    pre.prelaunch("eval", eval_cfg(out, a, data))
    recorded = json.loads((out / "eval_settings.json").read_text())
    assert recorded["info"]["model"] == str(a) and recorded["settings"]["sampling.temperature"] == 0.5
    (out / "items.jsonl").write_text(json.dumps({"item_id": "x", "correct": True, "judge": "official"}) + "\n")
    pre.prelaunch("eval", eval_cfg(out, fake_model(tmp_path / "a-copy"), data))  # same model elsewhere: resumes
    with pytest.raises(PrelaunchError) as e:
        pre.prelaunch("eval", eval_cfg(out, b, data, "sampling.temperature=0.7", "judge=reward"))
    msg = str(e.value)
    assert f"out={out} holds 1 item line(s) made with other settings" in msg
    fp_a, fp_b = resume.model_fingerprint(a)[:12], resume.model_fingerprint(b)[:12]
    assert f"model_fingerprint: '{fp_a} ({tmp_path / 'a-copy'})' -> '{fp_b} ({b})'" in msg
    assert "sampling.temperature: 0.5 -> 0.7" in msg and "judge: 'official' -> 'reward'" in msg
    assert "--overwrite" in msg and (out / "items.jsonl").is_file()
    with pytest.raises(PrelaunchError, match="zoom.half_size: 182 -> 100"):
        pre.prelaunch("eval", eval_cfg(out, a, data, "zoom.half_size=100"))
    # through the CLI: one line, exit status 2, before Ray
    assert main(["eval", "--config", str(ROOT / "configs" / "eval_local.yaml"), f"out={out}", f"model.path={b}",
                 f"data.path={data}"]) == 2
    assert "model_fingerprint" in capsys.readouterr().err
    pre.prelaunch("eval", eval_cfg(out, b, data), overwrite=True)  # starts afresh: old items gone, b recorded
    assert not (out / "items.jsonl").exists()
    assert json.loads((out / "eval_settings.json").read_text())["info"]["model"] == str(b)


def test_eval_items_without_recorded_settings_are_refused(tmp_path, data):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "items.jsonl").write_text(json.dumps({"item_id": "x", "correct": True, "judge": "reward"}) + "\n")
    with pytest.raises(PrelaunchError, match=r"judge reward; this run: judge=official\) but no eval_settings"):
        pre.prelaunch("eval", eval_cfg(out, fake_model(tmp_path / "a"), data))


def test_sft_and_mcts_outs_keep_their_settings(tmp_path, data):
    a, b = fake_model(tmp_path / "a"), fake_model(tmp_path / "b", hidden=16)
    (tmp_path / "sft_data").mkdir()
    sft = lambda m: load(SFTConfig, None, [f"out={tmp_path / 's'}", f"model.path={m}",  # noqa: E731
                                          f"data={tmp_path / 'sft_data'}"])
    pre.prelaunch("sft", sft(a))
    fake_model(tmp_path / "s" / "model")  # what the run exported
    pre.prelaunch("sft", sft(a))  # same base model and data: trains again, as before
    with pytest.raises(PrelaunchError, match="model_fingerprint"):
        pre.prelaunch("sft", sft(b))
    pre.prelaunch("sft", sft(b), overwrite=True)
    assert not (tmp_path / "s" / "model").exists()

    mcts = lambda *o: load(MCTSJobConfig, None, [f"out={tmp_path / 'm'}", f"data.path={data}",  # noqa
                                                 *o])
    pre.prelaunch("mcts", mcts())
    (tmp_path / "m" / "trees.jsonl").write_text('{"question_id": "q", "nodes": []}\n')
    pre.prelaunch("mcts", mcts("workers=4", "limit=2"))  # placement and how many: not settings, it resumes
    with pytest.raises(PrelaunchError, match="search.simulations: 8 -> 20"):
        pre.prelaunch("mcts", mcts("search.simulations=20"))


def test_overwrite_keeps_the_checkpoints_of_a_layout_whose_memory_plan_cannot_fit(tmp_path, data):
    """The GPU memory plan is one of the checks --overwrite waits for (cluster/plan.py)."""
    import shutil

    from cluster.plan import PlanError

    out, model = tmp_path / "run", tmp_path / "model"
    model.mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "configs/models/qwen2_5_vl_7b/config.json", model)
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    ck = checkpoint(out)
    cfg = load(TrainConfig, None, [f"out={out}", f"model.path={model}", f"data.path={data}",
                                   "cluster.learner_gpus=1", "cluster.rollout_gpus=1",
                                   "learner.zero_stage=2"])
    with pytest.raises(PlanError, match="DOES NOT FIT"):
        pre.prelaunch("train", official_defaults(cfg), overwrite=True)
    assert (ck / resume.COMPLETE).is_file() and (out / "checkpoints" / "step_00003").is_dir()
