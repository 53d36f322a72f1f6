"""What every config module shares: the error a config that cannot run raises, the `Choice` enum that fixes a
field's values, and the "did you mean" of both. Imports no other configs module."""

from __future__ import annotations

import difflib
import sys
from enum import Enum


class ConfigError(ValueError):
    """A config value or key that cannot run, naming the key. Raised at load (`configs.load.load`), by the
    driver's checks before Ray starts, and by an actor constructor's own checks (`actors.actor.check_rollout`):
    an actor whose constructor raises it is not a fault to retry (cluster/pool.py `config_error`), the run
    stops."""


class Choice(str, Enum):
    """A config field with a fixed set of values: OmegaConf refuses any other and lists the valid ones.
    A member *is* its value wherever a str is used (==, `in`, dict keys, f-strings, str(), json, MLflow
    params, `config.yaml` written by OmegaConf, which writes the name), so code comparing with "sync" and
    YAML written before keep working. `choice()` makes name = value, which also keeps Enum's hash (of the
    name) equal to the plain string's."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def choice(name: str, *values: str) -> type:
    """A `Choice` enum of `values` (the functional form: `async` and `raise` are Python keywords). The enum
    belongs to the calling module (as Enum's own functional API finds it), so pickle (Ray) finds it there."""
    module = sys._getframe(1).f_globals["__name__"]
    return Choice(name, [(v, v) for v in values], module=module, qualname=name)


def did_you_mean(bad: str, valid, prefix: str = "") -> str:
    """' (did you mean 'x'?)' for the closest of `valid` to `bad` (difflib), or ''."""
    close = difflib.get_close_matches(str(bad), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
