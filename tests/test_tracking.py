"""cluster/tracking.py without Ray: where runs go (tracking.uri, MLFLOW_TRACKING_URI, the project's store), what
they are named and tagged, lineage files, redaction, the writer's retries, GPU metric names. The runs are real
MLflow runs in sqlite stores under tmp paths; the end-to-end checks (a train -> eval chain, a tracking server
killed mid-run) are in test_tracking_ray.py."""

import json
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from cluster import tracking
from configs.jobs import EvalConfig, SFTConfig
from configs.schema import TrainConfig


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No CLI invocation recorded, no MLFLOW_* from conftest or the user: each test sets what it needs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("VIGORL_HOME", raising=False)
    tracking.INVOCATION.clear()
    yield
    tracking.INVOCATION.clear()


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One sqlite store for the module's runs (creating a store's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def tracker(cfg, uri, **kw):
    cfg.tracking.uri = uri
    cfg.tracking.system_metrics = kw.pop("system_metrics", False)
    return tracking.Tracker(cfg, **kw)


@pytest.mark.parametrize("uri, shown", [
    ("sqlite:////tmp/a/mlflow.db", "sqlite:////tmp/a/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://alice:s3cret@mlflow.example.com/", "https://alice:***@mlflow.example.com/"),
    ("https://ghp_token@mlflow.example.com", "https://***@mlflow.example.com"),
    ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("https://h/api?access_token=abc&x=1", "https://h/api?access_token=***&x=1"),
    ("https://h/?sig=zz&api_key=k#frag", "https://h/?sig=***&api_key=***#frag"),
    ("databricks", "databricks"),
    ("", ""),
])
def test_credentials_are_redacted(uri, shown):
    assert tracking.redact(uri) == shown


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    # a library call: the config's value, then the environment, then the project's store under the cwd
    assert tracking.resolve_uri("") == (default, True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_uri("") == ("http://env:5000", False)
    assert tracking.resolve_uri("http://cfg:5000") == ("http://cfg:5000", False)
    # the CLI: the command line, then the environment, then a recipe's value
    tracking.invocation("train", ["configs/grpo_spatial.yaml"], ["loop.steps=2"])
    assert tracking.resolve_uri("http://recipe:5000") == ("http://env:5000", False)
    tracking.invocation("train", ["configs/grpo_spatial.yaml"], ["tracking.uri=http://cli:5000"])
    assert tracking.resolve_uri("http://cli:5000") == ("http://cli:5000", False)
    tracking.invocation("train", ["runs/x/config.yaml"], [], resume=True)  # the run's own config: its store
    assert tracking.resolve_uri("sqlite:////x/mlflow.db") == ("sqlite:////x/mlflow.db", False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracking.invocation("train", ["configs/grpo_spatial.yaml"], [])
    assert tracking.resolve_uri("http://recipe:5000") == ("http://recipe:5000", False)
    # VIGORL_HOME moves the project's store with the other relative paths (cluster/home.py)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("VIGORL_HOME", str(home))
    assert tracking.resolve_uri("") == (f"sqlite:///{home / 'runs' / 'mlflow.db'}", True)


def test_experiment_precedence(monkeypatch):
    assert tracking.resolve_experiment("", "train") == "vigorl"
    assert tracking.resolve_experiment("", "eval") == "vigorl-eval"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    assert tracking.resolve_experiment("", "eval") == "mine"
    assert tracking.resolve_experiment("cfg", "eval") == "cfg"  # a library call's config wins
    tracking.invocation("train", ["configs/grpo_spatial.yaml"], [])
    assert tracking.resolve_experiment("vigorl-grpo-spatial", "train") == "mine"  # over a recipe's
    tracking.invocation("train", ["configs/grpo_spatial.yaml"], ["tracking.experiment=x"])
    assert tracking.resolve_experiment("x", "train") == "x"  # the command line over the environment


def test_default_store_is_the_projects(tmp_path, monkeypatch):
    """No tracking.uri, no MLFLOW_TRACKING_URI: runs/mlflow.db under the working dir, artifacts beside it, the
    experiment tagged so MLflow 3's UI opens it under "Model training"; a second command shares the store."""
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig()
    cfg.tracking.system_metrics = False
    t = tracking.Tracker(cfg)
    t.artifact(Path(__file__), "code")
    t.finish()
    sft = SFTConfig()
    sft.tracking.system_metrics = False
    s = tracking.Tracker(sft)
    s.finish()
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    assert t.uri == s.uri == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    client = mlflow.MlflowClient(t.uri)
    exp = client.get_experiment_by_name("vigorl-eval")
    assert exp.tags[tracking.KIND_TAG] == "custom_model_development"
    assert exp.artifact_location == (tmp_path.resolve() / "runs" / "mlartifacts").as_uri()
    assert (tmp_path / "runs" / "mlartifacts" / t.run_id / "artifacts" / "code" / Path(__file__).name).is_file()
    assert client.get_experiment_by_name("vigorl").experiment_id == s.experiment_id
    assert {r.info.run_id for r in client.search_runs([exp.experiment_id, s.experiment_id])} == {t.run_id, s.run_id}


def test_mlflow_env_vars_are_honoured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "elsewhere" / "mlflow.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    cfg = TrainConfig()
    cfg.tracking.system_metrics = False
    t = tracking.Tracker(cfg)
    t.finish()
    assert not (tmp_path / "runs").exists()
    run = mlflow.MlflowClient(f"sqlite:///{store}").get_run(t.run_id)
    assert mlflow.MlflowClient(f"sqlite:///{store}").get_experiment(run.info.experiment_id).name == "from-env"


def test_run_name_tags_params_config_metrics_images(tmp_path, uri):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"0" * 10)
    cfg = TrainConfig()
    cfg.model.path, cfg.data.path, cfg.data.task, cfg.data.mode = str(model), str(tmp_path / "data"), "spatial", "single_turn"
    tracking.invocation("train", ["configs/grpo_spatial.yaml", "configs/layouts/gpu1.yaml"], ["loop.steps=2"])
    t = tracker(cfg, uri, system_metrics=True)
    t.metrics({"reward/mean": 0.5, "pass@4": 1, "skipped": None}, 1)
    t.metrics({"reward/mean": 0.75}, 2)
    for step in (1, 2):
        t.image(Image.new("RGB", (16, 16), "red"), key="episodes", step=step)
    t.finish()
    client = mlflow.MlflowClient(uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert re.fullmatch(r"train-grpo_spatial-[0-9a-f]{6}", run.info.run_name) and t.run_id.startswith(run.info.run_name[-6:])
    tags = run.data.tags
    assert tags["vigorl.command"] == "train" and tags["vigorl.recipe"].startswith("configs/grpo_spatial.yaml")
    assert tags["vigorl.model"] == str(model) and len(tags["vigorl.model_fingerprint"]) == 64
    assert tags["vigorl.data"] == str(tmp_path / "data") and tags["vigorl.task"] == "spatial"
    assert tags["vigorl.mode"] == "single_turn" and tags["vigorl.version"] == tracking.version()
    assert tags.get("vigorl.git_commit", "") == tracking.git_commit()
    assert "vigorl.source_run" not in tags
    assert run.data.params["loop.steps"] == str(cfg.loop.steps) and run.data.params["tracking.uri"] == uri
    config = client.download_artifacts(t.run_id, "config.yaml", str(tmp_path))
    assert "picture_every:" in Path(config).read_text()
    assert [m.value for m in client.get_metric_history(t.run_id, "reward/mean")] == [0.5, 0.75]
    assert run.data.metrics["pass_4"] == 1.0 and "skipped" not in run.data.metrics
    assert "system/cpu_utilization_percentage" in run.data.metrics  # the last sample, at finish
    images = [a.path for a in client.list_artifacts(t.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [1, 2]


def test_lineage_from_a_model_and_from_mcts_data(tmp_path, uri):
    """An exported model dir's vigorl_run.json makes the next run's vigorl.source_run, linked in its description;
    MCTS trees' lineage travels with linearize / to-multiturn output."""
    cfg = TrainConfig()
    first = tracker(cfg, uri)
    export = tmp_path / "checkpoints" / "step_00002"
    first.write_run_file(export, step=2)
    first.finish()
    info = json.loads((export / tracking.RUN_FILE).read_text())
    assert info["run_id"] == first.run_id and info["step"] == 2 and info["command"] == "train"
    assert info["tracking_uri"] == uri

    ev = EvalConfig()
    ev.model.path = str(export)
    second = tracker(ev, uri)
    second.finish()
    tags = mlflow.MlflowClient(uri).get_run(second.run_id).data.tags
    assert tags["vigorl.source_run"] == tags["vigorl.source_model_run"] == first.run_id
    assert tags["vigorl.source_uri"] == uri
    assert f"#/experiments/{first.experiment_id}/runs/{first.run_id}" in tags["mlflow.note.content"]

    mcts_out = tmp_path / "mcts"
    mcts_cfg = TrainConfig()
    m = tracker(mcts_cfg, uri)
    m.write_run_file(mcts_out)
    m.finish()
    (mcts_out / "trees.jsonl").write_text("")
    lin, mt = tmp_path / "lin", tmp_path / "mt"
    assert tracking.carry_run_file(mcts_out / "trees.jsonl", lin) and tracking.carry_run_file(lin, mt)
    assert not tracking.carry_run_file(tmp_path / "nothing", tmp_path / "x")
    sft = SFTConfig()
    sft.data = str(mt)
    s = tracker(sft, uri)
    s.finish()
    tags = mlflow.MlflowClient(uri).get_run(s.run_id).data.tags
    assert tags["vigorl.source_run"] == tags["vigorl.source_data_run"] == m.run_id


def test_a_bad_lineage_file_is_named_and_ignored(tmp_path, capsys):
    (tmp_path / tracking.RUN_FILE).write_text("{not json")
    assert tracking.read_run_file(tmp_path) is None
    assert str(tmp_path / tracking.RUN_FILE) in capsys.readouterr().out


def test_checkpoints_are_an_option(tmp_path, uri):
    ckpt = tmp_path / "step_00001"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    cfg = TrainConfig()
    t = tracker(cfg, uri)
    assert t.checkpoint(ckpt, "checkpoints/step_00001") is False  # off by default
    cfg.tracking.log_checkpoints = True
    with pytest.raises(FileNotFoundError, match="tracking.log_checkpoints=true: the driver cannot see"):
        t.checkpoint(tmp_path / "on_another_node", "checkpoints/step_00002")
    assert t.checkpoint(ckpt, "checkpoints/step_00001") is True
    t.finish()
    names = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(t.run_id, "checkpoints/step_00001")]
    assert names == ["checkpoints/step_00001/config.json"]


def test_resume_reopens_the_same_run(uri):
    cfg = TrainConfig()
    t = tracker(cfg, uri)
    t.metrics({"x": 1.0}, 1)
    t.finish("FAILED")
    r = tracker(TrainConfig(), uri, run_id=t.run_id, changes=["loop.steps: 2 -> 4"])
    r.metrics({"x": 2.0}, 2)
    r.finish()
    run = mlflow.MlflowClient(uri).get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["vigorl.resumed.1"] == "loop.steps: 2 -> 4"
    with pytest.raises(ValueError, match="is not in"):
        tracker(TrainConfig(), uri, run_id="0" * 32)


# ---- the writer: retried while the server is down, flushed at the end -------------------------------------

class Flaky:
    """A write that fails like an unreachable server (MlflowException INTERNAL_ERROR, what MLflow's REST client
    raises for a refused connection) `failures` times, then succeeds."""

    def __init__(self, failures: int, log: list, name: str):
        self.failures, self.log, self.name = failures, log, name

    def __call__(self):
        if self.failures:
            self.failures -= 1
            raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with "
                                  "exception HTTPConnectionPool: Max retries exceeded")
        self.log.append(self.name)


def test_writes_wait_out_an_outage_in_order(capsys):
    written: list = []
    w = tracking.Writer("test", "http://127.0.0.1:1", backoff_s=(0.01, 0.05))
    w.submit("first", Flaky(5, written, "first"), wait_s=30)  # returns once the outage is seen, not after it
    for k in range(20):
        w.submit(f"m{k}", Flaky(0, written, f"m{k}"), wait_s=30)
    assert w.close(timeout_s=60) == []
    assert written == ["first"] + [f"m{k}" for k in range(20)]
    out = capsys.readouterr().out
    assert out.count("is not reachable") == 1 and out.count("is back after") == 1 and w.outages == 1


def test_a_refused_write_raises_in_the_caller():
    def bad():
        raise MlflowException("Invalid metric name", error_code=INVALID_PARAMETER_VALUE)

    w = tracking.Writer("test", "sqlite://")
    with pytest.raises(MlflowException, match="Invalid metric name"):
        w.submit("bad", bad, wait_s=30)
    assert w.close(timeout_s=10) == []


def test_the_flush_gives_up_and_says_what_is_lost(capsys):
    w = tracking.Writer("test", "http://127.0.0.1:1", backoff_s=(0.01, 0.02))
    for k in range(3):
        w.submit(f"metrics of step {k}", Flaky(10 ** 9, [], "x"))
    lost = w.close(timeout_s=0.5)
    assert lost == [f"metrics of step {k}" for k in range(3)]


def test_transient_or_not():
    assert tracking.transient(MlflowException("down"))  # INTERNAL_ERROR by default
    assert tracking.transient(ConnectionRefusedError())
    assert not tracking.transient(MlflowException("x", error_code=INVALID_PARAMETER_VALUE))
    assert not tracking.transient(ValueError("x"))


# ---- GPU metrics per role ---------------------------------------------------------------------------------

def test_gpu_metrics_by_role():
    smi = "0, 87, 40000, 81559\n1, [N/A], 1000, 81559\n"
    gpus = tracking.parse_nvidia_smi(smi)
    assert gpus == [{"index": 0, "util": 87.0, "used_mib": 40000.0, "total_mib": 81559.0},
                    {"index": 1, "used_mib": 1000.0, "total_mib": 81559.0}]
    m = tracking.gpu_metrics({"learner": ["aaaaaaaaaa"], "rollout": ["aaaaaaaaaa", "bbbbbbbbbb"]},
                             {"aaaaaaaaaa": gpus, "bbbbbbbbbb": gpus[:1]})
    assert m["system/learner/gpu_0_utilization_percentage"] == 87.0
    assert m["system/learner/gpu_0_memory_usage_megabytes"] == pytest.approx(40000 * 1.048576)
    assert m["system/learner/gpu_1_memory_usage_percentage"] == pytest.approx(100 * 1000 / 81559)
    assert "system/learner/gpu_1_utilization_percentage" not in m
    assert m["system/rollout/bbbbbbbb/gpu_0_utilization_percentage"] == 87.0  # a role on two nodes: per node
    assert tracking.parse_nvidia_smi("") == [] and tracking.gpu_metrics({"learner": ["x"]}, {}) == {}
