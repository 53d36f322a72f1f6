"""Ray start-up for every vigorl job: connect to a cluster, or start a local one on this machine."""

from __future__ import annotations

import math
import os


def init_ray(address: str, cpus: float):
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray on 127.0.0.1 with `cpus` CPUs. The
    vLLM CPU settings of this process travel to every worker."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind 127.0.0.1
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
                                      "VLLM_ENABLE_V1_MULTIPROCESSING", "TOKENIZERS_PARALLELISM") if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(num_cpus=max(1, math.ceil(cpus)), include_dashboard=False, runtime_env={"env_vars": env},
                 log_to_driver=True)
    return ray
