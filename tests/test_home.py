"""Relative paths of a command resolve against VIGORL_HOME, never inside the working dir Ray unpacks for a job
(cluster/home.py); no Ray here: the job's working dir is a directory named as Ray names it."""

from pathlib import Path

import pytest

from cluster.cli import main
from cluster.home import HomeError, anchor_paths, in_ray_working_dir, resolve
from configs.jobs import EvalConfig, MCTSJobConfig, SFTConfig
from configs.load import load
from configs.schema import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ray_pkg(tmp_path, monkeypatch):
    """A job's working dir as Ray 2.60 unpacks it, as the current dir, with no VIGORL_HOME."""
    pkg = tmp_path / "ray" / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    pkg.mkdir(parents=True)
    monkeypatch.chdir(pkg)
    monkeypatch.delenv("VIGORL_HOME", raising=False)
    return pkg


def test_ray_working_dir_is_recognised(tmp_path, ray_pkg):
    assert in_ray_working_dir() and in_ray_working_dir(ray_pkg / "sub")
    assert not in_ray_working_dir(tmp_path) and not in_ray_working_dir(tmp_path / "working_dir_files")


def test_relative_paths_in_a_ray_job_without_home_are_refused_naming_the_key(ray_pkg):
    cfg = load(TrainConfig, None, ["out=/abs/run", "model.path=runs/models/tiny"])  # out absolute: model is next
    with pytest.raises(HomeError, match=r"model\.path=runs/models/tiny is a relative path.*VIGORL_HOME.*\$PWD"):
        anchor_paths(cfg, "train")
    # `org/name` with nothing there is a Hub id for the model resolver; the data path is then the relative one
    with pytest.raises(HomeError, match=r"^data\.path=runs/data/visual_search is a relative path"):
        anchor_paths(load(TrainConfig, None, ["out=/abs/run", "model.path=Qwen/Qwen2.5-VL-7B-Instruct"]), "train")
    with pytest.raises(HomeError, match=r"^out=runs/train"):
        anchor_paths(load(TrainConfig), "train")


def test_every_path_field_resolves_under_home(tmp_path, monkeypatch, ray_pkg):
    home = tmp_path / "home"
    (home / "runs" / "tiny-model").mkdir(parents=True)
    monkeypatch.setenv("VIGORL_HOME", str(home))
    cfg = anchor_paths(load(TrainConfig, None, ["rollout.system_prompt_file=prompts/p.txt",
                                                "tracking.uri=sqlite:///runs/mlflow.db"]), "train")
    assert (cfg.out, cfg.model.path, cfg.data.path) == (f"{home}/runs/train", f"{home}/runs/tiny-model",
                                                        f"{home}/runs/data/visual_search")
    assert cfg.rollout.system_prompt_file == f"{home}/prompts/p.txt"
    assert cfg.tracking.uri == f"sqlite:///{home}/runs/mlflow.db"
    sft = anchor_paths(load(SFTConfig, None, ["model.path=/models/m", "val_dataset=sft/val.json"]), "sft")
    assert (sft.out, sft.data, sft.model.path) == (f"{home}/runs/sft", f"{home}/runs/sft_data", "/models/m")
    assert sft.val_dataset == f"{home}/sft/val.json"  # a file; an entry name of dataset_info.json stays a name
    assert anchor_paths(load(SFTConfig, None, ["val_dataset=chains_val"]), "sft").val_dataset == "chains_val"
    mcts = anchor_paths(load(MCTSJobConfig, None, ["teacher.prompt_file=t.jinja"]), "mcts")
    assert mcts.teacher.prompt_file == f"{home}/t.jinja" and mcts.teacher.model_path == ""  # "" stays unset
    ev = anchor_paths(load(EvalConfig, None, ["tracking.uri=http://127.0.0.1:5000"]), "eval")
    assert ev.tracking.uri == "http://127.0.0.1:5000" and ev.out == f"{home}/runs/eval"


def test_hub_ids_are_left_to_the_model_resolver_unless_a_local_path_or_a_build_says_otherwise(tmp_path, monkeypatch,
                                                                                            ray_pkg):
    home = tmp_path / "home"
    (home / "models" / "mine").mkdir(parents=True)
    monkeypatch.setenv("VIGORL_HOME", str(home))
    hub = anchor_paths(load(EvalConfig, None, ["model.path=Qwen/Qwen2.5-VL-7B-Instruct@main",
                                               "data.path=org/set@test"]))
    assert hub.model.path == "Qwen/Qwen2.5-VL-7B-Instruct@main" and hub.data.path == "org/set@test"
    (home / "data" / "saved").mkdir(parents=True)  # a `datasets` save_to_disk dir with a split
    assert anchor_paths(load(EvalConfig, None, ["data.path=data/saved@test"])).data.path == f"{home}/data/saved@test"
    assert anchor_paths(load(EvalConfig, None, ["model.path=models/mine"])).model.path == f"{home}/models/mine"
    built = anchor_paths(load(TrainConfig, None, ["model.path=runs/new-tiny", "make_tiny=small"]), "train")
    assert built.model.path == f"{home}/runs/new-tiny"  # does not exist yet: the run builds it there
    assert resolve("~/x", "out") == str(Path.home() / "x") and resolve("/a/b", "out") == "/a/b"


def test_a_plain_local_run_keeps_its_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIGORL_HOME", raising=False)
    cfg = anchor_paths(load(TrainConfig), "train")
    assert (cfg.out, cfg.model.path) == ("runs/train", "runs/tiny-model")


def test_a_bad_home_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VIGORL_HOME", "relative/dir")
    with pytest.raises(HomeError, match="VIGORL_HOME='relative/dir' must be an absolute path"):
        anchor_paths(load(TrainConfig))
    monkeypatch.setenv("VIGORL_HOME", str(tmp_path / "missing"))
    with pytest.raises(HomeError, match="existing directory"):
        anchor_paths(load(TrainConfig))


def test_the_cli_refuses_before_anything_starts_and_resolves_resume(tmp_path, monkeypatch, ray_pkg, capsys):
    assert main(["train", "--config", str(ROOT / "configs/local_cpu.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vigorl train: out=runs/train is a relative path") and "VIGORL_HOME" in err
    assert main(["train", "--resume", "runs/train"]) == 2
    assert "--resume=runs/train is a relative path" in capsys.readouterr().err
    home = tmp_path / "home"
    (home / "runs" / "train").mkdir(parents=True)
    monkeypatch.setenv("VIGORL_HOME", str(home))
    assert main(["train", "--resume", "runs/train"]) == 2  # found under the home: its missing config.yaml is named
    assert f"--resume {home}/runs/train: no config.yaml there" in capsys.readouterr().err
