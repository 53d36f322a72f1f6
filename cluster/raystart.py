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


ONEDNN_CACHE = 64  # oneDNN primitives each Ray worker keeps (see init_ray); ONEDNN_PRIMITIVE_CACHE_CAPACITY overrides


def say(line: str) -> None:
    """A driver line on the console, printed above a running progress bar (tqdm) rather than through it."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def log_file(out: str, name: str, verbose: bool) -> str:
    """Where an actor's output goes: out/logs/NAME.log (absolute: an actor's working dir may differ), or ""
    (the console, through Ray's log streaming) with --verbose."""
    return "" if verbose else str(Path(out).resolve() / "logs" / f"{name}.log")


def other_local_ray() -> tuple[str, bool] | None:
    """The cluster a `ray start --head` on this machine recorded in Ray's temp dir (RAY_TMPDIR/ray or
    /tmp/ray, `ray_current_cluster`) and whether its GCS still runs; None when there is no such file."""
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    recorded = find_bootstrap_address(None)
    return None if not recorded else (recorded, recorded in find_gcs_addresses())


def loopback_only() -> None:
    """Make the local Ray about to start listen on 127.0.0.1 only. Ray 2.60 has no bind-address option: its
    servers listen on 127.0.0.1 when the node's address is 127.0.0.1 and on every interface otherwise, and it
    turns 127.0.0.1 into the machine's routable address unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
    (ray/_private/services.py `resolve_ip_for_localhost`), a variable ray_constants reads once, when ray is first
    imported — usually before this runs — so the constant is set too, and the variable for the processes Ray
    starts. Never for a run that joins a cluster: nodes of other machines could not join it."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str, cpus: float, verbose: bool = True):
    """Connect to `address` (or RAY_ADDRESS; `auto` joins the cluster `ray start` left on this machine), else
    start a local Ray of this run's own on 127.0.0.1 with `cpus` CPUs, whatever other Ray runs here. The
    vLLM CPU settings of this process travel to every worker. Not verbose: Ray's own INFO lines are off."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
                                      "VLLM_ENABLE_V1_MULTIPROCESSING", "TOKENIZERS_PARALLELISM") if k in os.environ}
    # oneDNN (torch's and vLLM's CPU kernels) caches a compiled primitive per new tensor shape, up to 1024 of them:
    # zoom episodes make new shapes (images per request, sequence lengths) for hundreds of steps, and a CPU
    # rollout actor's memory rose with them (`make soak`, docs/results/soak.md). A small cache bounds it.
    env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))
    level = logging.INFO if verbose else logging.WARNING
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, logging_level=level)
        return ray
    # ray.init() without an address joins the cluster recorded in ray_current_cluster (Ray 2.60,
    # ray._private.services.get_ray_address_from_environment): after a `ray start --head` here, live or
    # dead, a local run would then fail ("When connecting to an existing cluster, num_cpus and num_gpus
    # must not be provided") or hang on a dead GCS. "local" always starts a new one (canonicalize_bootstrap_address).
    other = other_local_ray()
    n = max(1, math.ceil(cpus))
    loopback_only()
    ray.init(address="local", num_cpus=n, include_dashboard=False, runtime_env={"env_vars": env},
             log_to_driver=True, logging_level=level)
    note = "" if other is None else (f"; the {'running' if other[1] else 'stopped'} Ray cluster at {other[0]} that "
                                     "`ray start` recorded on this machine is not used (--address auto joins it)")
    say(f"[ray] started a local Ray for this run ({n} CPU{'s' * (n > 1)}, 127.0.0.1){note}")
    return ray
