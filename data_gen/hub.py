"""Model ids as every command takes them: a local model dir, or a Hugging Face Hub id resolved to one.

`resolve_model(path_or_id)` returns a local directory holding the model's config.json:

- an existing local path: that dir (absolute); it must hold a config.json;
- else a Hub id, `org/name` or `org/name@revision` (a branch, tag or commit): its snapshot dir in the HF cache,
  `<cache>/models--org--name/snapshots/<commit>/` (the layout `huggingface_hub` writes; `refs/<branch>` names
  the commit), downloaded first with `huggingface_hub.snapshot_download` when the Hub can be reached and the
  snapshot is not complete there. With `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) only the cache is
  read, and when the Hub cannot be reached `snapshot_download` falls back to the cache itself; a model not
  there is a `ModelNotFound` naming the id and the cache dir.

The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub` (huggingface_hub's own order,
constants.py), read when called: a process that sets them after importing huggingface_hub is still obeyed.
`cluster.prelaunch` resolves every model of a command once, on the driver, before Ray starts, and puts the local
dir into the config, so actors and every reader of model files (the resume fingerprint included) get a path,
never an id. On a multi-node cluster that dir must exist on every node: a shared HF cache dir (the same
`HF_HUB_CACHE` mounted on all nodes), or a model downloaded beforehand into a shared dir
(`hf download org/name --local-dir /shared/models/name`; `huggingface-cli download` before huggingface_hub 1.0)
and given as that dir.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# huggingface_hub's repo id rule (utils/_validators.py validate_repo_id): `namespace/name` of letters, digits,
# `-`, `_`, `.`, neither part starting with `.` or `-`, no `--` or `..`, at most 96 characters; a vigorl
# `@revision` suffix picks a branch, tag or commit (as `snapshot_download(revision=)`).
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*)(?:@(?P<rev>[\w./-]+))?$", re.ASCII)
CACHE_PREFIX = "models--"  # huggingface_hub file_download.repo_folder_name: models--{org}--{name}


class ModelNotFound(FileNotFoundError):
    """No local model dir and no Hub snapshot for a model path or id; the message names it and where it looked."""


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")  # huggingface_hub constants._is_true


def hub_cache() -> Path:
    """The HF hub cache dir this process uses, from the environment as huggingface_hub reads it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def is_offline() -> bool:
    """HF_HUB_OFFLINE=1 (or the older TRANSFORMERS_OFFLINE=1): the Hub is never asked, only the cache read."""
    return _true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def is_model_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / "config.json").is_file()


def split_id(value: str) -> tuple[str, str | None] | None:
    """`org/name[@revision]` -> (repo id, revision or None); None when `value` is not shaped like a Hub id."""
    m = HUB_ID.match(value or "")
    if m is None or len(m["repo"]) > 96 or "--" in m["repo"] or ".." in m["repo"]:
        return None
    return m["repo"], m["rev"]


def cache_id(path: str | Path) -> str | None:
    """The repo id (`org/name`) of a snapshot dir of the HF cache (`.../models--org--name/snapshots/<rev>`),
    else None. Hub ids never hold `--` (split_id), so each `--` in the folder name is a `/`."""
    p = Path(path)
    repo = p.parent.parent.name
    if p.parent.name != "snapshots" or not repo.startswith(CACHE_PREFIX):
        return None
    return repo[len(CACHE_PREFIX):].replace("--", "/")


def _network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's own errors that `snapshot_download` lets through (a proxy refusing the connection):
    the Hub cannot be reached, so the cache alone is tried. huggingface_hub 1.x uses httpx, 2.x httpx2."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(__import__(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def resolve_model(path_or_id: str | Path, what: str = "model.path", download: bool = True) -> Path:
    """A local model dir for `path_or_id` (see the module doc); `what` names the config key in errors.
    `download=False` (`--dry-run`) writes nothing: a Hub model not in the cache yet is a `NotCached` saying what a
    run would download (the Hub is asked for the file list only). Raises ModelNotFound (a FileNotFoundError)."""
    given = str(path_or_id)
    local = Path(given).expanduser()
    if local.exists():
        if not is_model_dir(local):
            raise ModelNotFound(f"{what}: {given} is not a model dir (no config.json in {local.resolve()})")
        return local.resolve()
    hub = split_id(given)
    if hub is None:
        raise ModelNotFound(f"{what}: {given} is not a model dir (no such directory), nor a Hugging Face Hub id "
                            "(org/name or org/name@revision)")
    repo, rev = hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache, offline = hub_cache(), is_offline()
    try:
        try:
            snap = snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=offline or not download)
        except _network_errors():  # e.g. a proxy that refuses: the cache alone
            snap = snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError as e:  # not in the cache (or incomplete there), and not downloaded now
        if not download and not offline:
            raise _would_download(repo, rev, cache, f"{what}={given}") from None
        why = ("HF_HUB_OFFLINE=1: only the cache is read" if offline
               else f"the Hub could not be reached: {str(e).splitlines()[0][:200]}")
        raise _not_in_cache(repo, rev, cache, f"{what}={given}", why) from None
    except HfHubHTTPError as e:  # no such repo or revision, gated, private, or the Hub failing
        raise _refused(repo, rev, f"{what}={given}", e) from None
    snap = Path(snap).absolute()
    if not is_model_dir(snap):
        raise ModelNotFound(f"{what}={given}: the Hub snapshot {snap} has no config.json (not a transformers model)")
    return snap


class NotCached(ModelNotFound):
    """`resolve_model(download=False)`: the Hub has the model, the cache does not yet; a run downloads it."""


def _at(rev: str | None) -> str:
    return f" at revision {rev}" if rev else ""


def _not_in_cache(repo: str, rev: str | None, cache: Path, key: str, why: str) -> ModelNotFound:
    fetch = f"`hf download {repo}" + (f" --revision {rev}" if rev else "") + f" --cache-dir {cache}`"
    return ModelNotFound(f"{key}: no such local dir, and the Hub model {repo}{_at(rev)} is not in the HF cache "
                         f"{cache} ({why}). Download it where there is network with {fetch} (huggingface_hub's CLI), "
                         "or point HF_HUB_CACHE / HF_HOME at the cache that holds it")


def _refused(repo: str, rev: str | None, key: str, e: Exception) -> ModelNotFound:
    return ModelNotFound(f"{key}: no such local dir, and the Hub refused {repo}{_at(rev)} (no such repo or revision, "
                         f"or a gated/private one: log in with `hf auth login`): {str(e).splitlines()[0][:300]}")


def _would_download(repo: str, rev: str | None, cache: Path, key: str) -> ModelNotFound:
    """NotCached with what a download would fetch, from the Hub's file list (nothing written)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi().model_info(repo, revision=rev, files_metadata=True)
    except HfHubHTTPError as e:
        return _refused(repo, rev, key, e)
    except (OSError, *_network_errors()) as e:
        return _not_in_cache(repo, rev, cache, key, f"the Hub could not be reached: {str(e).splitlines()[0][:200]}")
    files = info.siblings or []
    size = sum(f.size or 0 for f in files) / 2**30
    return NotCached(f"{key}: not in the HF cache {cache} yet; a run downloads {repo}{_at(rev)} (commit "
                     f"{(info.sha or '?')[:12]}, {len(files)} files, {size:.1f} GiB)")
