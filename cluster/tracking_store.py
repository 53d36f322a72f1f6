"""Where vigorl's MLflow runs go and what they are called (cluster/tracking.py logs them).

Where (`resolve_uri`): `tracking.uri` given on the command line, else MLFLOW_TRACKING_URI, else a recipe's
`tracking.uri`, else the project's store `runs/mlflow.db` (under VIGORL_HOME or the current directory; artifacts
beside it in `runs/mlartifacts`), shared by every command so their runs compare in one UI. The experiment
(`resolve_experiment`) follows the same order with MLFLOW_EXPERIMENT_NAME and the command's default
(DEFAULT_EXPERIMENT). Called as a library (no `invocation` from the CLI), a config's value wins over the
environment, as `mlflow.set_experiment` in code does.

Each run is named COMMAND-RECIPE-<first 6 of its id> (`recipe_label`) and tagged with the command, vigorl's
version and git commit (`command_of`, `version`, `git_commit`). Credentials in a URI (user:password@, token
query parameters) are redacted wherever it is printed, logged or written (`redact`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from configs.schema import TrainConfig

DEFAULT_EXPERIMENT = {"train": "vigorl", "sft": "vigorl", "mcts": "vigorl", "eval": "vigorl-eval"}
# MLflow 3's UI opens an experiment by its kind: without this tag it infers one and shows vigorl's under GenAI
# "Evaluation runs"; custom_model_development opens them under "Model training" (mlflow/server/js, ExperimentKind).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
DEFAULT_STORE = "runs"  # the project's store dir (mlflow.db, mlartifacts/), under VIGORL_HOME or the current dir
# Query parameters that carry credentials (Databricks / Azure SAS / S3 presigned URLs, tokens of any service).
_SECRET_PARAMS = re.compile(r"token|secret|password|passwd|pwd|key|sig|signature|credential|auth", re.I)

# What the CLI was asked (`invocation`): the command, its recipe files, and which of tracking.uri /
# tracking.experiment were given on the command line. Empty when a job's run() is called as a library.
INVOCATION: dict = {}


def invocation(command: str, recipes: list[str] | None, overrides: list[str], resume: bool = False) -> None:
    """Record how the CLI was called, for the run name (the recipe) and for the precedence of the command line
    over MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME over a recipe's values. `resume`: the config is the run's
    own (OUT/config.yaml), whose tracking.uri is where its MLflow run is: it wins over the environment."""
    INVOCATION.clear()
    INVOCATION.update(command=command, recipes=[str(r) for r in recipes or []], resume=resume,
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
    return (key in INVOCATION["given"]) if INVOCATION and not INVOCATION["resume"] else None


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
    from configs.jobs import EvalConfig, MCTSJobConfig, SFTConfig

    for cls, name in ((TrainConfig, "train"), (SFTConfig, "sft"), (EvalConfig, "eval"), (MCTSJobConfig, "mcts")):
        if isinstance(cfg, cls):
            return name
    return INVOCATION.get("command") or type(cfg).__name__.lower()


def data_path(cfg) -> str:
    """The config's data path: `data` itself (a string) or `data.path`; "" without one."""
    data = getattr(cfg, "data", "")
    return data if isinstance(data, str) else str(getattr(data, "path", ""))


def recipe_label(cfg) -> str:
    """The run name's middle: the first recipe that is not a resource layout (its file stem), else the
    benchmark / task / data dir name."""
    for r in INVOCATION.get("recipes", []):
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
