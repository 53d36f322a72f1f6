"""MLflow tracking: a local sqlite store by default, any tracking URI by config. The driver logs; actors
never talk to MLflow (one writer, no locks)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from configs.schema import TrainConfig, to_flat_dict


class Tracker:
    def __init__(self, cfg: TrainConfig, run_id: str | None = None, changes: tuple[str, ...] | list[str] = ()):
        """A new MLflow run, or (`run_id`: `vigorl train --resume`) the same run again, its params as they
        were (MLflow params are immutable); `changes` (config keys changed on resume) go to a tag."""
        import logging

        import mlflow

        for name in ("mlflow", "alembic"):  # their INFO lines ("Creating initial MLflow database tables...") are noise
            logging.getLogger(name).setLevel(logging.WARNING)

        out = Path(cfg.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        self.uri = cfg.tracking.uri or f"sqlite:///{out / 'mlflow.db'}"
        mlflow.set_tracking_uri(self.uri)
        exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            location = None if cfg.tracking.uri else (out / "mlartifacts").as_uri()
            mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location)
        mlflow.set_experiment(cfg.tracking.experiment)
        if run_id:
            try:
                self.run = mlflow.start_run(run_id=run_id)
            except mlflow.exceptions.MlflowException as e:
                raise ValueError(f"MLflow run {run_id} (the checkpoint's) is not in {self.uri}: {e}") from e
            n = sum(k.startswith("vigorl.resumed") for k in self.run.data.tags)
            mlflow.set_tag(f"vigorl.resumed.{n + 1}", "; ".join(changes) or "same config")
            self.mlflow = mlflow
            return
        self.run = mlflow.start_run(run_name=cfg.tracking.run_name or None)
        params = {k: str(v)[:500] for k, v in to_flat_dict(cfg).items()}
        for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(list(params.items())[i:i + 100]))
        self.mlflow = mlflow

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in values.items() if v is not None}
        self.mlflow.log_metrics(clean, step=step)

    def image(self, image, name: str) -> None:
        self.mlflow.log_image(image, artifact_file=name)

    def artifacts(self, local_dir: str | Path, path: str) -> None:
        self.mlflow.log_artifacts(str(local_dir), artifact_path=path)

    def finish(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)

    def ui_command(self) -> str:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {mlflow_bin} ui --backend-store-uri {self.uri} "
                f"--host 127.0.0.1 --port 5000")


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
