"""Waits on actors with a deadline and a message naming the actor and what it waited for. Without one, a
layout that asks for more GPUs than the cluster has waits forever for actors Ray can never place, and a
stuck learner call looks like a slow step."""

from __future__ import annotations


def resources(ray) -> str:
    """What the Ray cluster has and has free, for a message."""
    total, free = ray.cluster_resources(), ray.available_resources()
    return ", ".join(f"{total.get(r, 0.0):g} {r} ({free.get(r, 0.0):g} free)" for r in ("GPU", "CPU"))


def get(ray, refs, timeout_s: float, what: str, key: str):
    """`ray.get(refs)` within `timeout_s` (0: no deadline), else a TimeoutError naming `what` (the actor and
    the call) and the config `key` that sets the deadline, with the cluster's resources: an actor Ray cannot
    place (too few GPUs or CPUs for the layout) shows here as a start that never ends."""
    try:
        return ray.get(refs, timeout=timeout_s or None)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what}: no answer after {key}={timeout_s:g}s; the Ray cluster has {resources(ray)}. "
                           "An actor waiting for resources the cluster does not have never starts (a layout's "
                           "GPUs: cluster.learner_ranks x learner_gpus + rollout_actors x rollout_gpus)") from None
