"""MLflow tracking of every vigorl command (train, sft, eval, mcts). The driver logs; actors never talk to MLflow
(one writer, no locks).

Where (`resolve_uri`): `tracking.uri` given on the command line, else MLFLOW_TRACKING_URI, else a recipe's
`tracking.uri`, else the project's store `runs/mlflow.db` (under VIGORL_HOME or the current directory; artifacts
beside it in `runs/mlartifacts`), shared by every command so their runs compare in one UI. The experiment
(`resolve_experiment`) follows the same order with MLFLOW_EXPERIMENT_NAME and the command's default
(DEFAULT_EXPERIMENT). Called as a library (no `invocation` from the CLI), a config's value wins over the
environment, as `mlflow.set_experiment` in code does.

Each run is named COMMAND-RECIPE-<first 6 of its id> and tagged `vigorl.*` (command, recipe, model, model
fingerprint, data, task, mode, version, git commit). Lineage: every exported model dir (SFT `out/model`, RL
`checkpoints/step_N`) and every MCTS `out` (carried on by `vigorl linearize` / `to-multiturn`) holds RUN_FILE,
`vigorl_run.json` {run_id, tracking_uri (redacted), step, command, ...}; a run whose model or data holds one tags
`vigorl.source_run` / `vigorl.source_uri` and links to it in its description, so MCTS -> SFT -> GRPO -> eval is
one chain. Credentials in a URI (user:password@, token query parameters) are redacted wherever it is printed,
logged or written (`redact`).

An unreachable tracking server does not end a run: every write (metrics, params, tags, artifacts) goes through a
`_Writer` thread that keeps a failed write at the head of its queue and retries it with backoff (1 s doubling to
30 s), printing one warning per outage and one line when the server is back; a call waits for its write only
while the writer is idle and healthy (so errors that are bugs, such as an invalid metric name, still raise in the
caller), never during an outage. At the end of the run the queue is flushed: the wait goes on while writes
succeed and gives up after `tracking.flush_timeout_s` without one, with a warning saying how many were lost.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from configs.schema import TrainConfig, to_flat_dict

RUN_FILE = "vigorl_run.json"  # the lineage file of an exported model dir or an MCTS / SFT-data dir
DEFAULT_EXPERIMENT = {"train": "vigorl", "sft": "vigorl", "mcts": "vigorl", "eval": "vigorl-eval"}
# MLflow 3's UI opens an experiment by its kind: without this tag it infers one and shows vigorl's under GenAI
# "Evaluation runs"; custom_model_development opens them under "Model training" (mlflow/server/js, ExperimentKind).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
DEFAULT_STORE = "runs"  # the project's store dir (mlflow.db, mlartifacts/), under VIGORL_HOME or the current dir
BACKOFF_S = (1.0, 30.0)  # a failed write is retried after 1 s, doubling up to 30 s
SYNC_WAIT_S = 10.0  # how long a call waits for its own write while the writer is healthy and idle
# Query parameters that carry credentials (Databricks / Azure SAS / S3 presigned URLs, tokens of any service).
_SECRET_PARAMS = re.compile(r"token|secret|password|passwd|pwd|key|sig|signature|credential|auth", re.I)
# MlflowException codes that mean "try again later" (a server down, restarting, overloaded or timing out); any
# other code is a deterministic error (a bug or a refused value) and is not retried.
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "IO_ERROR", "SERVICE_UNDER_MAINTENANCE",
                    "WORKSPACE_TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "REQUEST_LIMIT_EXCEEDED",
                    "RESOURCE_EXHAUSTED", "COULD_NOT_ACQUIRE_LOCK"}

# What the CLI was asked (`invocation`): the command, its recipe files, and which of tracking.uri /
# tracking.experiment were given on the command line. Empty when a job's run() is called as a library.
_INVOCATION: dict = {}


def invocation(command: str, recipes: list[str] | None, overrides: list[str], resume: bool = False) -> None:
    """Record how the CLI was called, for the run name (the recipe) and for the precedence of the command line
    over MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME over a recipe's values. `resume`: the config is the run's
    own (OUT/config.yaml), whose tracking.uri is where its MLflow run is: it wins over the environment."""
    _INVOCATION.clear()
    _INVOCATION.update(command=command, recipes=[str(r) for r in recipes or []], resume=resume,
                       given={o.split("=", 1)[0].strip() for o in overrides if "=" in o})


def redact(uri: str) -> str:
    """`uri` with its credentials replaced by ***: the password of user:password@ (a lone user:token@ too) and
    the values of query parameters named like token / key / secret / password / signature."""
    if not uri or "://" not in uri:
        return uri
    # by hand, not urlsplit/urlunsplit, which turn sqlite:////abs/path into sqlite://abs/path
    scheme, rest = uri.split("://", 1)
    rest, hash_, fragment = rest.partition("#")
    rest, qmark, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        authority = f"{userinfo.split(':', 1)[0]}:***@{host}" if ":" in userinfo else f"***@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMS.search(k) for k, _ in pairs):
            query = urlencode([(k, "***" if _SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*")
    return f"{scheme}://{authority}{slash}{path}{qmark}{query}{hash_}{fragment}"


def default_store() -> Path:
    """The project's store dir: runs/ under VIGORL_HOME, else under the current directory (refused inside the
    working dir Ray unpacks for a job, which Ray deletes: cluster/home.py)."""
    from cluster.home import resolve

    return Path(resolve(DEFAULT_STORE, "tracking.uri (the default store runs/mlflow.db)")).resolve()


def _given(key: str) -> bool | None:
    """Whether `key` was given on the command line; None when not called through the CLI or resuming (the
    config's value wins then)."""
    return (key in _INVOCATION["given"]) if _INVOCATION and not _INVOCATION["resume"] else None


def resolve_uri(value: str) -> tuple[str, bool]:
    """(tracking URI, whether it is the default store) for a config's `tracking.uri` (see the module doc)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    given = _given("tracking.uri")
    if value and given is not False:  # on the command line, or a library call's config
        return value, False
    if env:
        return env, False
    if value:  # a recipe's
        return value, False
    return f"sqlite:///{default_store() / 'mlflow.db'}", True


def resolve_experiment(value: str, command: str) -> str:
    """The experiment name for a config's `tracking.experiment` and the command (see the module doc)."""
    env = os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
    if value and _given("tracking.experiment") is not False:
        return value
    return env or value or DEFAULT_EXPERIMENT.get(command, "vigorl")


def command_of(cfg) -> str:
    """train / sft / eval / mcts, from the config's schema."""
    from configs import schema

    for cls, name in ((schema.TrainConfig, "train"), (schema.SFTConfig, "sft"), (schema.EvalConfig, "eval"),
                      (schema.MCTSJobConfig, "mcts")):
        if isinstance(cfg, cls):
            return name
    return _INVOCATION.get("command") or type(cfg).__name__.lower()


def _data_path(cfg) -> str:
    data = getattr(cfg, "data", "")
    return data if isinstance(data, str) else str(getattr(data, "path", ""))


def _recipe_label(cfg) -> str:
    """The run name's middle: the first recipe that is not a resource layout (its file stem), else the
    benchmark / task / data dir name."""
    for r in _INVOCATION.get("recipes", []):
        p = Path(r)
        if p.parent.name != "layouts" and p.name != "config.yaml":  # config.yaml: --resume's own copy
            return p.stem
    data = getattr(cfg, "data", None)
    return (getattr(cfg, "benchmark", "") or getattr(data, "task", "")
            or (Path(data).name if isinstance(data, str) else ""))


def git_commit() -> str:
    """The commit of vigorl's own checkout ("" when installed from a wheel or git is missing)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        return ""
    try:
        p = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("vigorl")
    except PackageNotFoundError:
        return "unknown"


# ---- lineage files --------------------------------------------------------------------------------------

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
        _warn(f"[mlflow] {f}: not a readable lineage file ({e}); its run is not linked")
        return None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str) or not info["run_id"]:
        _warn(f"[mlflow] {f}: no run_id in it; its run is not linked")
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
    data = _data_path(cfg)
    if data and Path(data).exists() and (info := read_run_file(data)):
        found["data"] = info
    return found


# ---- GPUs of the actors' nodes ----------------------------------------------------------------------------

def parse_nvidia_smi(text: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,
    nounits` as dicts (a value nvidia-smi reports as [N/A] is left out)."""
    gpus = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        g: dict = {"index": int(cells[0])}
        for name, cell in zip(("util", "used_mib", "total_mib"), cells[1:]):
            try:
                g[name] = float(cell)
            except ValueError:  # "[N/A]", "[Not Supported]"
                pass
        gpus.append(g)
    return gpus


def node_gpus() -> list[dict]:
    """This node's GPUs from `nvidia-smi` (every GPU of the node, whatever CUDA_VISIBLE_DEVICES says: NVML lists
    them all); [] without one. Runs as a zero-CPU Ray task pinned to each node of a role."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        p = subprocess.run([exe, "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(p.stdout) if p.returncode == 0 else []


def gpu_metrics(roles: dict[str, list[str]], per_node: dict[str, list[dict]]) -> dict[str, float]:
    """system/<role>/gpu_<i>_{utilization_percentage, memory_usage_megabytes, memory_usage_percentage} (MLflow's
    own GPU metric names) for the GPUs of the nodes each role's actors run on; with a role on several nodes,
    system/<role>/<node id's first 8>/gpu_... A node shared by two roles reports its GPUs under both."""
    out: dict[str, float] = {}
    for role, nodes in roles.items():
        nodes = sorted(set(n for n in nodes if n))
        for node in nodes:
            prefix = f"system/{role}/" + (f"{node[:8]}/" if len(nodes) > 1 else "")
            for g in per_node.get(node, []):
                key = f"{prefix}gpu_{g['index']}_"
                if "util" in g:
                    out[key + "utilization_percentage"] = g["util"]
                if "used_mib" in g:
                    out[key + "memory_usage_megabytes"] = g["used_mib"] * 1.048576  # MiB -> MB, as MLflow's
                    if g.get("total_mib"):
                        out[key + "memory_usage_percentage"] = 100.0 * g["used_mib"] / g["total_mib"]
    return out


def ready_nodes(ray, refs: list) -> list[str]:
    """The node ids among `refs` (actors' `node_id` calls) that have arrived; never waits."""
    if not refs:
        return []
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    found = []
    for ref in ready:
        try:
            found.append(ray.get(ref))
        except ray.exceptions.RayError:  # the actor died before saying where it runs
            continue
    return found


# ---- the writer -------------------------------------------------------------------------------------------

def _warn(line: str) -> None:
    from cluster.raystart import say

    say(line)


def transient(e: BaseException) -> bool:
    """Whether a failed MLflow call is worth retrying: the server unreachable, restarting, overloaded or timing
    out, or a database busy; not a refused value or a bug."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return e.error_code in _TRANSIENT_CODES
    try:
        from sqlalchemy.exc import OperationalError  # a database server down, sqlite "database is locked"
    except ImportError:  # pragma: no cover - sqlalchemy comes with mlflow
        OperationalError = ()  # noqa: N806
    return isinstance(e, (OSError, TimeoutError) + ((OperationalError,) if OperationalError else ()))


class _Op:
    __slots__ = ("what", "fn", "done", "error", "waiting")

    def __init__(self, what: str, fn):
        self.what, self.fn, self.done, self.error, self.waiting = what, fn, threading.Event(), None, False


class _Writer:
    """A thread that runs MLflow writes in order (see the module doc): a transient failure keeps the write at the
    head of the queue and retries it with backoff; `close` flushes."""

    def __init__(self, name: str, where: str, backoff_s: tuple[float, float] = BACKOFF_S):
        self.where, self.backoff_s = where, backoff_s
        self._ops: collections.deque[_Op] = collections.deque()
        self._cond = threading.Condition()
        self._closing = self._give_up = False
        self.outage_since: float | None = None  # monotonic time of the first failure of the outage in progress
        self.outages = 0
        self.written = 0  # writes done (the flush's measure of progress)
        self.lost: list[str] = []  # what the flush gave up on, or a deterministic error nobody waited for
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, what: str, fn, wait_s: float = 0.0) -> None:
        """Queue `fn` (a write); wait for it up to `wait_s` s when the writer is idle and healthy, re-raising its
        error if it is not transient."""
        op = _Op(what, fn)
        with self._cond:
            if self._closing:
                raise RuntimeError(f"MLflow writer {self._thread.name}: {what} after the run ended")
            op.waiting = wait_s > 0 and not self._ops and self.outage_since is None
            self._ops.append(op)
            self._cond.notify_all()
        if op.waiting:  # until written, an outage begins (the writer takes over) or wait_s passes
            deadline = time.monotonic() + wait_s
            while not op.done.wait(0.05):
                if self.outage_since is not None or time.monotonic() > deadline:
                    break
            with self._cond:  # the writer sets an error under this lock, and reports it itself once not waited for
                op.waiting = False
                error = op.error
            if error is not None:
                raise error

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._ops)

    def _loop(self) -> None:
        delay = self.backoff_s[0]
        while True:
            with self._cond:
                while not self._ops and not self._closing:
                    self._cond.wait()
                if not self._ops or self._give_up:
                    return
                op = self._ops[0]
            try:
                op.fn()
            except Exception as e:  # noqa: BLE001 - sorted below: retried when transient, else handed back
                if transient(e):
                    if self.outage_since is None:
                        self.outage_since, self.outages = time.monotonic(), self.outages + 1
                        _warn(f"[mlflow] WARNING: the tracking server {self.where} is not reachable ({_short(e)}); "
                              f"the run goes on, its metrics wait in memory and are retried until it is back")
                    with self._cond:
                        self._cond.wait(delay)  # a close that gives up wakes it
                        if self._give_up:
                            return
                    delay = min(delay * 2, self.backoff_s[1])
                    continue
                with self._cond:
                    self._ops.popleft()
                    op.error = e
                    if not op.waiting:
                        self.lost.append(f"{op.what}: {_short(e)}")
                        _warn(f"[mlflow] WARNING: {op.what} refused by {self.where}, not retried: {_short(e)}")
                op.done.set()
                continue
            with self._cond:
                self._ops.popleft()
                self.written += 1
                left = len(self._ops)
            op.done.set()
            delay = self.backoff_s[0]
            if self.outage_since is not None:
                _warn(f"[mlflow] the tracking server {self.where} is back after "
                      f"{time.monotonic() - self.outage_since:.0f} s; writing what waited ({left} left)")
                self.outage_since = None

    def close(self, timeout_s: float) -> list[str]:
        """Write what is queued: wait while the server answers (a slow upload included), give up after
        `timeout_s` s of an outage without a write. Returns what was lost (the writes given up on, and refused
        writes nobody waited for)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        last, idle_since = self.written, time.monotonic()
        while self._thread.is_alive():
            self._thread.join(0.5)
            if self.written != last:
                last, idle_since = self.written, time.monotonic()
            elif self.outage_since is not None and time.monotonic() - idle_since > timeout_s:
                with self._cond:
                    self._give_up = True
                    self.lost += [op.what for op in self._ops]
                    self._ops.clear()
                    self._cond.notify_all()
                self._thread.join(timeout_s + 5)
                break
        return self.lost


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


# ---- system metrics -----------------------------------------------------------------------------------------

class _SystemMetrics:
    """Every `interval_s` (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, default 10 s, as `log_system_metrics`) the
    driver node's CPU, memory, disk and network (MLflow's own monitors: system/cpu_utilization_percentage, ...)
    and, once `watch` names them, the GPUs of the nodes the actors run on (`gpu_metrics`), logged through the
    run's writer with a step counter: so an outage delays them rather than ending them, as MLflow's
    SystemMetricsMonitor would. A last sample is logged at `stop`."""

    def __init__(self, log, first_step: int = 0):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.log, self.step = log, first_step
        self.monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        self.interval_s = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10.0)
        self.ray = self.roles = None
        self._gpu_warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vigorl-system-metrics", daemon=True)
        self._thread.start()

    def watch(self, ray, roles) -> None:
        """Sample the GPUs of `roles()` ({role: [Ray node id]}) too, when the cluster has any GPU."""
        try:
            if ray.cluster_resources().get("GPU", 0) > 0:
                self.ray, self.roles = ray, roles
        except Exception as e:  # noqa: BLE001 - Ray's errors vary by version; GPU metrics are optional
            _warn(f"[mlflow] no GPU metrics: cannot read the Ray cluster's resources ({_short(e)})")

    def sample(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for m in self.monitors:
            m.collect_metrics()
            values.update({f"system/{k}": float(v) for k, v in m.aggregate_metrics().items()})
            m.clear_metrics()
        if self.ray is not None:
            values |= self._gpus()
        return values

    def _gpus(self) -> dict[str, float]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        try:
            roles = self.roles()
            gpu_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU")}
            nodes = sorted({n for ids in roles.values() for n in ids if n in gpu_nodes})
            task = ray.remote(num_cpus=0)(node_gpus)
            refs = {n: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                    for n in nodes}
            return gpu_metrics(roles, {n: ray.get(r, timeout=60) for n, r in refs.items()})
        except Exception as e:  # noqa: BLE001 - a node gone meanwhile is the fault handling's business, not ours
            if not self._gpu_warned:
                self._gpu_warned = True
                _warn(f"[mlflow] GPU metrics of the actors' nodes skipped: {_short(e)}")
            return {}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._log()

    def _log(self) -> None:
        try:
            values = self.sample()
        except Exception as e:  # noqa: BLE001 - psutil's errors (a disk gone) must not end the run
            _warn(f"[mlflow] system metrics skipped: {_short(e)}")
            return
        self.log(values, self.step)
        self.step += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 120)
        self._log()


# ---- the run ------------------------------------------------------------------------------------------------

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
                                      f"not reachable at the start of the run: {_short(e)}") from e
            raise
        flush = cfg.tracking.flush_timeout_s
        self._flush_timeout_s = flush
        self._writer = _Writer("vigorl-mlflow", self.uri)
        self._uploads = _Writer("vigorl-mlflow-uploads", self.uri)  # checkpoints: never ahead of the metrics
        self._upload_client = MlflowClient(self._uri)
        self._finished = False
        if not run_id:
            self._log_start()
        self._system = None
        if cfg.tracking.system_metrics:
            self._system = _SystemMetrics(self.metrics, self._next_system_step(run_id))

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
            raise ValueError(f"MLflow run {run_id} (the checkpoint's) is not in {self.uri}: {_short(e)}; resume "
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
        if recipes := _INVOCATION.get("recipes"):
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
                    _warn(f"[mlflow] no model fingerprint tag: {_short(e)}")
        if data := _data_path(cfg):
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
            x for x in (self.command, _recipe_label(self.cfg), run.info.run_id[:6]) if x)
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
        """End the run: the last system sample, every queued write (see `_Writer.close`), then its status."""
        if self._finished:
            return
        self._finished = True
        if self._system is not None:
            self._system.stop()
        self._writer.submit("the run's end", lambda: self.client.set_terminated(self.run_id, status))
        waiting = self._writer.pending + self._uploads.pending
        if waiting > 1 and (self._writer.outage_since or self._uploads.outage_since):
            _warn(f"[mlflow] writing {waiting} buffered item(s) to {self.uri} before exiting (gives up after "
                  f"{self._flush_timeout_s:g} s without progress: tracking.flush_timeout_s)")
        lost = self._uploads.close(self._flush_timeout_s) + self._writer.close(self._flush_timeout_s)
        if lost:
            _warn(f"[mlflow] WARNING: {len(lost)} write(s) to {self.uri} were lost (run {self.run_id}): "
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


