"""Loading a config: `load(Schema, yaml_path, ["a.b=1", ...])` merges defaults <- YAML <- overrides through
OmegaConf with the dataclass as schema, so an unknown key or a wrong type is an error. `ConfigError` names the
key and lists the valid keys at that level (with a "did you mean"). Values are checked too, all before Ray
starts (configs/rules.py `validate`). `to_flat_dict` flattens a loaded config for MLflow params.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from configs.base import ConfigError, did_you_mean
from configs.rules import validate

T = TypeVar("T")


def _valid_keys(schema: type, dotted: str) -> list[str]:
    """Field names of the dataclass at `dotted` (the parent of the bad key) in `schema`."""
    cls = schema
    for part in [p for p in dotted.split(".") if p]:
        sub = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(sub):
            break
        cls = sub
    return sorted(f.name for f in dataclasses.fields(cls))


def _error(schema: type, e: OmegaConfBaseException, source: str) -> ConfigError:
    """OmegaConf's error `e` from `source` (a file, an override) as a ConfigError naming the key: an unknown key
    lists the valid keys at its level, a bad choice the closest valid value."""
    key = getattr(e, "full_key", None) or ""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    valid = _valid_keys(schema, parent)
    where = f"{parent}." if parent else ""
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) or "not in" in msg:
        return ConfigError(f"{source}: unknown config key {key!r}. Valid keys under '{where or '<top>'}': "
                           f"{', '.join(valid)}{did_you_mean(key.rsplit('.', 1)[-1], valid, where)}")
    if m := _CHOICES_MSG.search(msg):  # a Choice field: OmegaConf lists the valid values
        msg += did_you_mean(m.group(1), [v.strip() for v in m.group(2).split(",")])
    return ConfigError(f"{source}: bad value for config key {key!r}: {msg}")


_CHOICES_MSG = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")


def load(schema: type[T], path: str | Path | list | None = None, overrides: list[str] | None = None) -> T:
    """Defaults from `schema`, then the YAML file(s) in order (a recipe, then e.g. a resource layout from
    configs/layouts/), then `key=value` overrides; returns a `schema` object."""
    cfg = OmegaConf.structured(schema)
    for p in ([] if path is None else path if isinstance(path, list) else [path]):
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        except OmegaConfBaseException as e:
            raise _error(schema, e, str(p)) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise _error(schema, e, f"override {item!r}") from None
    try:
        obj = OmegaConf.to_object(cfg)
    except (ValidationError, OmegaConfBaseException) as e:
        raise _error(schema, e, "config") from None
    validate(obj)  # ranges, registry names, cross-field rules: all before anything starts
    return obj  # type: ignore[return-value]


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """`a.b.c -> value` for logging as run parameters."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(to_flat_dict(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out
