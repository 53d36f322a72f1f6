"""GPU placement rules over `cluster.*` (configs.schema.ClusterConfig): how weights reach the rollout actors
(NCCL, shared memory or the object store), which placements cannot run, and how many torch threads each
process takes. Checked at load (configs/rules.py) and read by the driver, the pool, the actors and the
GPU memory plan (cluster/plan.py).
"""

from __future__ import annotations

import math

from configs.schema import ClusterConfig


def nccl_sync(c: ClusterConfig) -> bool:
    """Whether weights move by NCCL broadcast from learner rank 0 into the vLLM workers (`auto`: when the
    learner and every rollout actor have whole GPUs of their own), rather than shared memory or the object store.
    Also refuses the placements that cannot run, naming the keys (checked before Ray starts):
    - NCCL refuses two ranks on one GPU ("duplicate GPU"), so `nccl` needs whole GPUs on both sides; a learner
      and vLLM sharing one GPU (fractional gpus) take shared memory;
    - a vLLM engine of tensor-parallel size tp uses tp whole GPUs: rollout_gpus must equal it, or be a
      fraction below 1 with tp = 1 (a GPU shared with the learner)."""
    if c.weight_sync not in ("auto", "nccl", "shm", "object_store"):
        raise ValueError(f"cluster.weight_sync must be auto | nccl | shm | object_store, got {c.weight_sync!r}")
    tp = c.tensor_parallel_size
    if tp < 1 or (c.rollout_gpus > 0 and c.rollout_gpus != tp and not (tp == 1 and c.rollout_gpus < 1)):
        raise ValueError(f"cluster.rollout_gpus={c.rollout_gpus} with cluster.tensor_parallel_size={tp}: a rollout "
                         "actor's vLLM engine needs one whole GPU per tensor-parallel rank (rollout_gpus = "
                         "tensor_parallel_size), or a share of one GPU (rollout_gpus < 1) with tensor_parallel_size=1")
    whole = c.rollout_gpus >= 1 and c.learner_gpus >= 1
    if c.weight_sync == "nccl" and not whole:
        raise ValueError(f"cluster.weight_sync=nccl needs whole GPUs for the learner and every rollout actor "
                         f"(NCCL refuses two ranks on one GPU); got cluster.learner_gpus={c.learner_gpus}, "
                         f"cluster.rollout_gpus={c.rollout_gpus}. On one shared GPU use cluster.weight_sync=auto (shared memory)")
    return c.weight_sync == "nccl" or (c.weight_sync == "auto" and whole)


def shares_gpu(c: ClusterConfig) -> bool:
    """Whether the learner and the rollout actors share GPUs (fractional learner_gpus and rollout_gpus)."""
    return 0 < c.learner_gpus < 1 and 0 < c.rollout_gpus < 1


def shm_sync(c: ClusterConfig) -> bool:
    """Whether rollout actors on learner rank 0's node load weights from its shared-memory file (`auto` without
    NCCL, or `shm`); the others, and every actor with `object_store`, load through the object store."""
    return not nccl_sync(c) and c.weight_sync in ("auto", "shm")


def torch_threads(c: ClusterConfig, role: str, sync: bool) -> int:
    """Threads for one `role` process ("learner" rank or "rollout" actor): `cluster.<role>_threads` when set,
    else the CPUs it reserves (rounded up); in sync mode on CPU, where generation and training take turns,
    an equal share of all the CPUs the run reserves instead, if more (1 learner + 1 actor of 1 CPU each:
    2 threads each, where Ray's OMP_NUM_THREADS=num_cpus gave 1 and left one core idle in every phase).
    Auto assumes the run's processes share a machine, as a local run's do; the caller caps the result at
    the machine's cores. Set the keys explicitly on a multi-node CPU cluster."""
    explicit = getattr(c, f"{role}_threads")
    if explicit < 0:
        raise ValueError(f"cluster.{role}_threads must be >= 0 (0 = auto), got {explicit}")
    if explicit:
        return explicit
    own = c.learner_cpus if role == "learner" else c.rollout_cpus
    n = max(1, math.ceil(own))
    if sync and c.learner_gpus == 0 and c.rollout_gpus == 0:
        total = c.learner_cpus * c.learner_ranks + c.rollout_cpus * c.rollout_actors
        n = max(n, int(total // (c.learner_ranks if role == "learner" else max(1, c.rollout_actors))))
    return n
