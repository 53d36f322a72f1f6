"""Ray start-up for every vigorl job (connect to a cluster, or start a local one on this machine), and where
the processes' output goes: the driver's own lines on the console (`say`, above any progress bar), each
actor's and engine's output in its own file under out/logs/ unless the job runs with --verbose (`log_file`
names it; the actor redirects itself with `actors.process.redirect_output`)."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path


def say(line: str) -> None:
    """A driver line on the console, printed above a running progress bar (tqdm) rather than through it."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def log_file(out: str, name: str, verbose: bool) -> str:
    """Where an actor's output goes: out/logs/NAME.log (absolute: an actor's working dir may differ), or ""
    (the console, through Ray's log streaming) with --verbose."""
    return "" if verbose else str(Path(out).resolve() / "logs" / f"{name}.log")


def init_ray(address: str, cpus: float, verbose: bool = True):
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray on 127.0.0.1 with `cpus` CPUs. The
    vLLM CPU settings of this process travel to every worker. Not verbose: Ray's own INFO lines are off."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind 127.0.0.1
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
                                      "VLLM_ENABLE_V1_MULTIPROCESSING", "TOKENIZERS_PARALLELISM") if k in os.environ}
    level = logging.INFO if verbose else logging.WARNING
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, logging_level=level)
    else:
        ray.init(num_cpus=max(1, math.ceil(cpus)), include_dashboard=False, runtime_env={"env_vars": env},
                 log_to_driver=True, logging_level=level)
    return ray
