"""MLflow tracking of every vigorl command (train, sft, eval, mcts): `Tracker`, one MLflow run, and `job`, the
body of a Ray job that ends it. The driver logs; actors never talk to MLflow (one writer, no locks).

The parts, one job each: where runs go and what they are called (cluster/tracking_store.py: `resolve_uri`,
`resolve_experiment`, `redact`, `invocation`); the writer that survives an outage of the tracking server
(cluster/tracking_writer.py); lineage files, `vigorl_run.json` (cluster/tracking_lineage.py: RUN_FILE); system
and GPU metrics (cluster/tracking_system.py). Their public names are importable from here too.

Each run is named COMMAND-RECIPE-<first 6 of its id> and tagged `vigorl.*` (command, recipe, model, model
fingerprint, data, task, mode, version, git commit); a run whose model or data holds a lineage file tags
`vigorl.source_run` / `vigorl.source_uri` and links to it in its description, so MCTS -> SFT -> GRPO -> eval is
one chain.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from cluster.tracking_lineage import RUN_FILE, carry_run_file, read_run_file, sources, write_run_file
from cluster.tracking_store import (DEFAULT_EXPERIMENT, DEFAULT_STORE, INVOCATION, KIND, KIND_TAG, command_of,
                                    data_path, default_store, git_commit, invocation, recipe_label, redact,
                                    resolve_experiment, resolve_uri, version)
from cluster.tracking_system import SystemMetrics, gpu_metrics, node_gpus, parse_nvidia_smi, ready_nodes
from cluster.tracking_writer import BACKOFF_S, SYNC_WAIT_S, Writer, short, transient, warn
from configs.load import to_flat_dict
from configs.schema import TrainConfig

__all__ = ["BACKOFF_S", "DEFAULT_EXPERIMENT", "DEFAULT_STORE", "INVOCATION", "KIND", "KIND_TAG", "RUN_FILE",
           "SYNC_WAIT_S", "Tracker", "Writer", "carry_run_file", "command_of", "default_store", "git_commit",
           "gpu_metrics", "invocation", "job", "node_gpus", "parse_nvidia_smi", "read_run_file", "ready_nodes",
           "redact", "resolve_experiment", "resolve_uri", "sources", "transient", "version", "write_run_file"]


class Tracker:
    def __init__(self, cfg: TrainConfig, run_id: str | None = None, changes: tuple[str, ...] | list[str] = ()):
        """A new MLflow run, or (`run_id`: `vigorl train --resume`) the same run again, its params as they
        were (MLflow params are immutable); `changes` (config keys changed on resume) go to a tag."""
        import logging

        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines ("Creating initial MLflow database tables...") are noise
            logging.getLogger(name).setLevel(logging.WARNING)
        # MLflow retries a failed HTTP request 7 times with backoff (~4 min) inside each call; the writer retries
        # itself, with its warning, so a call gives up after 2 (a few seconds). A user's setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        self.cfg, self.command = cfg, command_of(cfg)
        self._uri, is_default = resolve_uri(cfg.tracking.uri)
        self.uri = redact(self._uri)  # what is printed, logged and written into lineage files
        if is_default:
            default_store().mkdir(parents=True, exist_ok=True)
        self.client = client = MlflowClient(self._uri)
        try:
            if run_id:  # the run's own experiment, whatever MLFLOW_EXPERIMENT_NAME says now
                self.run = self._reopen(client, run_id, changes)
                self.experiment_id = self.run.info.experiment_id
                self.experiment = client.get_experiment(self.experiment_id).name
            else:
                self.experiment = resolve_experiment(cfg.tracking.experiment, self.command)
                self.experiment_id = self._experiment(client)
                self.run = self._create(client)
        except Exception as e:
            if transient(e):
                raise ConnectionError(f"MLflow tracking server {self.uri} (tracking.uri / MLFLOW_TRACKING_URI) is "
                                      f"not reachable at the start of the run: {short(e)}") from e
            raise
        flush = cfg.tracking.flush_timeout_s
        self._flush_timeout_s = flush
        self._writer = Writer("vigorl-mlflow", self.uri)
        self._uploads = Writer("vigorl-mlflow-uploads", self.uri)  # checkpoints: never ahead of the metrics
        self._upload_client = MlflowClient(self._uri)
        self._finished = False
        if not run_id:
            self._log_start()
        self._system = None
        if cfg.tracking.system_metrics:
            self._system = SystemMetrics(self.metrics, self._next_system_step(run_id))

    # -- start ---------------------------------------------------------------------------------------------

    def _experiment(self, client) -> str:
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = None
            if self._uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd's ./mlruns
                location = (Path(self._uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
            try:
                return client.create_experiment(self.experiment, artifact_location=location, tags={KIND_TAG: KIND})
            except MlflowException as e:  # another command created it meanwhile
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise e
        if KIND_TAG not in exp.tags:  # made by an older vigorl: open it under "Model training" too
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id

    def _reopen(self, client, run_id: str, changes):
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            if transient(e):
                raise
            raise ValueError(f"MLflow run {run_id} (the checkpoint's) is not in {self.uri}: {short(e)}; resume "
                             f"with the tracking.uri / MLFLOW_TRACKING_URI the run was started with") from e
        client.update_run(run_id, status="RUNNING")
        n = sum(k.startswith("vigorl.resumed") for k in run.data.tags)
        client.set_tag(run_id, f"vigorl.resumed.{n + 1}", "; ".join(changes) or "same config")
        return client.get_run(run_id)

    def tags(self) -> dict[str, str]:
        """The run's vigorl.* tags (and MLflow's git commit tag) for this config."""
        from cluster.resume import model_fingerprint

        cfg = self.cfg
        model = getattr(cfg, "model", None)
        tags = {"vigorl.command": self.command, "vigorl.version": version()}
        if recipes := INVOCATION.get("recipes"):
            tags["vigorl.recipe"] = ", ".join(recipes)
        if model is not None:
            tags["vigorl.model"] = getattr(model, "source", "") or model.path  # the Hub id or path as given
            if tags["vigorl.model"] != model.path:
                tags["vigorl.model_path"] = model.path  # where it resolved to
            teacher = getattr(cfg, "teacher", None)
            if teacher is not None:
                tags["vigorl.teacher"] = str(teacher.model_path if teacher.kind == "vllm" else teacher.kind)
            if (Path(model.path) / "config.json").is_file():
                try:
                    tags["vigorl.model_fingerprint"] = model_fingerprint(model.path)
                except OSError as e:
                    warn(f"[mlflow] no model fingerprint tag: {short(e)}")
        if data := data_path(cfg):
            tags["vigorl.data"] = data
        for key, value in (("task", getattr(getattr(cfg, "data", None), "task", "")),
                           ("mode", getattr(getattr(cfg, "data", None), "mode", "")),
                           ("benchmark", getattr(cfg, "benchmark", ""))):
            if value:
                tags[f"vigorl.{key}"] = str(value)
        if commit := git_commit():
            tags["vigorl.git_commit"] = tags["mlflow.source.git.commit"] = commit
        found = sources(cfg)
        for kind, info in found.items():
            tags[f"vigorl.source_{kind}_run"] = info["run_id"]
        if found:
            info = found.get("model") or found["data"]
            tags["vigorl.source_run"] = info["run_id"]
            tags["vigorl.source_uri"] = redact(str(info.get("tracking_uri", "")))
            tags["mlflow.note.content"] = self._source_note(found)
        return tags

    def _source_note(self, found: dict[str, dict]) -> str:
        """The run's description (Markdown in the UI): the runs it started from, as links when in this store."""
        lines = []
        for kind, info in found.items():
            what = {"model": "model", "data": "data"}[kind]
            name = info.get("run_name") or info["run_id"]
            step = f" step {info['step']}" if info.get("step") not in (None, "") else ""
            label = f"`vigorl {info.get('command', '?')}` run {name}{step}"
            if redact(str(info.get("tracking_uri", ""))) == self.uri and info.get("experiment_id"):
                label = f"[{label}](#/experiments/{info['experiment_id']}/runs/{info['run_id']})"
            else:
                label += f" (run id {info['run_id']} in {redact(str(info.get('tracking_uri', '?')))})"
            lines.append(f"- {what} from {label}")
        return "Started from:\n\n" + "\n".join(lines)

    def _create(self, client):
        from mlflow.tracking.context.registry import resolve_tags

        tags = resolve_tags(self.tags())  # + MLflow's own (user, source name and type), as mlflow.start_run adds
        run = client.create_run(self.experiment_id, tags=tags)
        name = self.cfg.tracking.run_name or "-".join(
            x for x in (self.command, recipe_label(self.cfg), run.info.run_id[:6]) if x)
        client.update_run(run.info.run_id, name=name)
        return client.get_run(run.info.run_id)

    def _log_start(self) -> None:
        """The params (the flat config, redacted) and the resolved config as config.yaml."""
        from mlflow.entities import Param
        from omegaconf import OmegaConf

        flat = {k: str(v) for k, v in to_flat_dict(self.cfg).items()}
        flat["tracking.uri"] = redact(flat.get("tracking.uri", ""))
        params = [Param(k, v[:6000]) for k, v in flat.items()]
        for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params
            chunk = params[i:i + 100]
            self._writer.submit("params", lambda c=chunk: self.client.log_batch(self.run_id, params=c), SYNC_WAIT_S)
        conf = OmegaConf.structured(self.cfg)
        conf.tracking.uri = redact(conf.tracking.uri)
        text = OmegaConf.to_yaml(conf)
        self._writer.submit("config.yaml", lambda: self.client.log_text(self.run_id, text, "config.yaml"), SYNC_WAIT_S)

    def _next_system_step(self, run_id: str | None) -> int:
        """A resumed run's system metrics go on after its last step (as MLflow's resume_logging does)."""
        if not run_id:
            return 0
        steps = [m.step for m in self.client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
        return max(steps) + 1 if steps else 0

    # -- the public interface -------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def run_name(self) -> str:
        return self.run.info.run_name

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # when it happened, not when a retry writes it
        clean = [Metric(k.replace("@", "_"), float(v), now, step) for k, v in values.items() if v is not None]
        for i in range(0, len(clean), 1000):  # MLflow caps a batch at 1000 metrics
            chunk = clean[i:i + 1000]
            self._writer.submit(f"metrics of step {step}", lambda c=chunk: self.client.log_batch(self.run_id, metrics=c),
                                SYNC_WAIT_S)

    def tag(self, key: str, value: str) -> None:
        self._writer.submit(f"tag {key}", lambda: self.client.set_tag(self.run_id, key, value), SYNC_WAIT_S)

    def image(self, image, name: str | None = None, *, key: str | None = None, step: int | None = None) -> None:
        """An image: with `key` and `step`, for the UI's image slider (MLflow's `log_image(key=, step=)`: stored
        as images/KEY+step+N+...png); else as the artifact file `name`."""
        if key is None and name is None:
            raise ValueError("Tracker.image needs a name or a key")
        what = f"image {key} step {step}" if key is not None else f"image {name}"
        self._writer.submit(what, lambda: self.client.log_image(
            self.run_id, image, artifact_file=None if key is not None else name, key=key,
            step=step if key is not None else None, synchronous=True), SYNC_WAIT_S)

    def artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """One file as an artifact (written in order with the metrics)."""
        path = str(local_path)
        self._writer.submit(f"artifact {path}", lambda: self.client.log_artifact(self.run_id, path, artifact_path),
                            SYNC_WAIT_S)

    def artifacts(self, local_dir: str | Path, path: str) -> None:
        """A dir's files as artifacts under `path` (written in order with the metrics)."""
        d = str(local_dir)
        self._writer.submit(f"artifacts {d}", lambda: self.client.log_artifacts(self.run_id, d, artifact_path=path),
                            SYNC_WAIT_S)

    def checkpoint(self, local_dir: str | Path, path: str) -> bool:
        """An HF export as artifacts under `path` when `tracking.log_checkpoints` is on (returns whether): uploaded
        by a background thread, off the step loop. The driver uploads, so it must see the learner's files: a
        dir it cannot see is an error naming the fix."""
        if not self.cfg.tracking.log_checkpoints:
            return False
        d = Path(local_dir)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(
                f"tracking.log_checkpoints=true: the driver cannot see the checkpoint {d} (no config.json there on "
                f"this node): the learner wrote it on another node. Put `out` on a filesystem every node shares, "
                f"or set tracking.log_checkpoints=false (the checkpoints stay in {d.parent} on the learner's node)")
        self._uploads.submit(f"checkpoint {d}", lambda: self._upload_client.log_artifacts(
            self.run_id, str(d), artifact_path=path))
        return True

    def run_info(self, step: int | None = None) -> dict:
        """What an exported model dir's RUN_FILE holds: where it came from."""
        return {"run_id": self.run_id, "run_name": self.run_name, "experiment_id": self.experiment_id,
                "experiment": self.experiment, "tracking_uri": self.uri, "step": step, "command": self.command}

    def write_run_file(self, directory: str | Path, step: int | None = None) -> Path:
        """RUN_FILE in `directory` naming this run; a dir an earlier run wrote to too (a resumed `vigorl mcts`)
        keeps the earlier run ids in `earlier_run_ids`."""
        info = self.run_info(step)
        if (prior := read_run_file(directory)) and prior["run_id"] != self.run_id:
            info["earlier_run_ids"] = [*prior.get("earlier_run_ids", []), prior["run_id"]]
        return write_run_file(directory, info)

    def watch_gpus(self, ray, roles) -> None:
        """Log the GPUs of the nodes `roles()` ({role: [Ray node id]}) names as system/<role>/... with the system
        metrics (a no-op on a cluster without GPUs, or with tracking.system_metrics off)."""
        if self._system is not None:
            self._system.watch(ray, roles)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run: the last system sample, every queued write (see `Writer.close`), then its status."""
        if self._finished:
            return
        self._finished = True
        if self._system is not None:
            self._system.stop()
        self._writer.submit("the run's end", lambda: self.client.set_terminated(self.run_id, status))
        waiting = self._writer.pending + self._uploads.pending
        if waiting > 1 and (self._writer.outage_since or self._uploads.outage_since):
            warn(f"[mlflow] writing {waiting} buffered item(s) to {self.uri} before exiting (gives up after "
                  f"{self._flush_timeout_s:g} s without progress: tracking.flush_timeout_s)")
        lost = self._uploads.close(self._flush_timeout_s) + self._writer.close(self._flush_timeout_s)
        if lost:
            warn(f"[mlflow] WARNING: {len(lost)} write(s) to {self.uri} were lost (run {self.run_id}): "
                  + "; ".join(lost[:5]) + (" ..." if len(lost) > 5 else ""))

    def ui_url(self, base: str) -> str:
        """The run's page in the MLflow UI at `base`. MLflow 3.17's UI picks GenAI or "Model training" with a
        global toggle (the `workflowType` URL parameter, then remembered by the browser) and reads the
        experiment's mlflow.experimentKind tag only where that toggle is off (earlier 3.x): the parameter opens
        the run under "Model training" in both (mlflow/server/js, useWorkflowType)."""
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"

    def ui_command(self) -> str:
        """How to look at the run: the server's page of it, or the `mlflow ui` command for a local store and the
        page it then serves (after a shell comment mark, so the line still pastes as a command)."""
        if urlsplit(self._uri).scheme in ("http", "https"):
            return self.ui_url(self.uri)
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {mlflow_bin} ui --backend-store-uri {self.uri} "
                f"--host 127.0.0.1 --port 5000  # then {self.ui_url('http://127.0.0.1:5000')}")


@contextmanager
def job(tracker: Tracker, ray):
    """The body of a Ray job: its MLflow run ends FINISHED, or FAILED on any error (re-raised), and Ray is
    shut down whatever happens."""
    try:
        yield
        tracker.finish()
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        ray.shutdown()


