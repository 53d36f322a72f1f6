"""Where a command's relative paths resolve: `VIGORL_HOME` if set, else the current directory — except inside the
working dir Ray unpacks for a job (`ray job submit --working-dir .`), where they would land in
/tmp/ray/session_*/runtime_resources/working_dir_files/_ray_pkg_*/ and be deleted with the Ray session, out of
reach of `vigorl scale` / `stop` and of the user. There a relative path is refused unless VIGORL_HOME says
where it belongs; the README's submit command passes the submitting dir:

    ray job submit ... --runtime-env-json '{"env_vars": {"VIGORL_HOME": "'"$PWD"'"}}' -- python -m cluster.cli ...

`anchor_paths` rewrites every path field of a loaded config once, in the CLI right after the config loads,
so every later check, the driver and every actor see the same absolute paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

HOME_ENV = "VIGORL_HOME"

# Ray 2.60 unpacks a job's working_dir to <session>/runtime_resources/working_dir_files/<package> (`_ray_pkg_<hash>`
# for an uploaded dir, the archive's name for a remote one; ray/_private/runtime_env/working_dir.py,
# packaging.py) and starts the entrypoint there.
_RAY_PKG = re.compile(r"/runtime_resources/working_dir_files/[^/]+/")
# A Hugging Face Hub model id, `org/name[@revision]` (huggingface_hub's repo id rule: letters, digits, - _ .); left
# for the model resolver (data_gen/hub.py) when no such local dir exists under the home.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# Config fields holding paths (a field a config lacks is skipped). MODEL_KEYS may also hold a Hub model id, and
# data.path a Hub dataset id (`name@split`) or a `datasets` dir with a split (`DIR@split`): a Hub id is left as
# it is when no such local path exists. SFT's val_dataset is a path when it names a file (else an entry name).
PATH_KEYS = ("out", "model.path", "data", "data.path", "data.image_root", "image_root", "rollout.system_prompt_file",
             "teacher.model_path", "teacher.prompt_file")
MODEL_KEYS = ("model.path", "teacher.model_path")


class HomeError(ValueError):
    """A relative path with no root to resolve it against, or a bad VIGORL_HOME."""


def in_ray_working_dir(cwd: str | Path | None = None) -> bool:
    """Whether `cwd` (default: this process's) is a job working dir Ray unpacked into its session dir."""
    return bool(_RAY_PKG.search(str(Path(cwd or os.getcwd()).resolve()) + "/"))


def home() -> Path | None:
    """VIGORL_HOME as an absolute existing directory, or None when unset (relative paths: the current dir)."""
    raw = os.environ.get(HOME_ENV, "")
    if not raw:
        return None
    p = Path(raw).expanduser()
    if not p.is_absolute() or not p.is_dir():
        raise HomeError(f"{HOME_ENV}={raw!r} must be an absolute path of an existing directory (the root that "
                        "relative out, model and data paths resolve against)")
    return p


def resolve(value: str, key: str, root: Path | None = None, hub_ok: bool = False) -> str:
    """`value` of config key `key` as the command should use it: unchanged when empty, a URL or absolute (`~`
    expanded), or (with `hub_ok`) a Hub id with no such local path under the root; else joined to `root`
    (default: VIGORL_HOME); with no root, unchanged, except inside Ray's job working dir, where it is refused."""
    if not value or "://" in value:
        return value
    if value.startswith("~"):
        value = str(Path(value).expanduser())
    if Path(value).is_absolute():
        return value
    root = home() if root is None else root
    if hub_ok and not (Path(root or ".") / value).exists():  # the model resolver / dataset reader decides
        return value
    if root is not None:
        return str(root / value)
    if in_ray_working_dir():
        raise HomeError(
            f"{key}={value} is a relative path, and this job runs in the working dir Ray unpacked for it "
            f"({os.getcwd()}), which Ray deletes with its session: set {HOME_ENV} to the directory relative paths "
            f"mean (ray job submit ... --runtime-env-json '{{\"env_vars\": {{\"{HOME_ENV}\": \"'\"$PWD\"'\"}}}}' "
            f"-- ...), or give {key} as an absolute path")
    return value


def anchor_paths(cfg, cmd: str = ""):
    """Resolve every path field of `cfg` (a loaded config dataclass) with `resolve`, in place; returns
    `cfg`. A model path is a Hub id when it has the `org/name` shape, no such path exists under the root and the
    command does not build it there (`make_tiny`, `vigorl demo`); a data path when it holds `@` (`name@split`)
    and the command does not generate it (`make_data`)."""
    root = home()
    builds_model = bool(getattr(cfg, "make_tiny", "")) or cmd == "demo"
    builds_data = bool(getattr(cfg, "make_data", 0)) or cmd == "demo"
    for key in PATH_KEYS:
        *parents, name = key.split(".")
        obj = cfg
        for part in parents:
            obj = getattr(obj, part, None)
        value = getattr(obj, name, None) if obj is not None else None
        if not isinstance(value, str):  # the config has no such field (or `data` is a section, not a path)
            continue
        hub_ok = key in MODEL_KEYS and not (key == "model.path" and builds_model) and bool(_HUB_ID.match(value))
        if key == "data.path" and "@" in value and not builds_data:  # DIR@split, or a Hub dataset name@split
            base, split = value.rsplit("@", 1)
            local = Path(base).expanduser().is_absolute() or (Path(root or ".") / base).exists()
            setattr(obj, name, f"{resolve(base, key, root)}@{split}" if local else value)
            continue
        setattr(obj, name, resolve(value, key, root, hub_ok))
    val = getattr(cfg, "val_dataset", None)
    if isinstance(val, str) and ("/" in val or val.endswith((".json", ".jsonl", ".parquet"))):
        cfg.val_dataset = resolve(val, "val_dataset", root)
    tracking = getattr(cfg, "tracking", None)
    uri = getattr(tracking, "uri", "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # a relative sqlite file
        tracking.uri = "sqlite:///" + resolve(uri[len("sqlite:///"):], "tracking.uri", root)
    elif uri and "://" not in uri:  # a local path is a file store to MLflow
        tracking.uri = resolve(uri, "tracking.uri", root)
    return cfg
