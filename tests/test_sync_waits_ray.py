"""Driver-side waits on real Ray actors (a small stand-in for the engine's calls: the waits are the driver's,
not the engine's): a weight load's timeout counts from when the load starts, not from when it was queued behind
an actor's running rollout; a load that does not finish under NCCL is an error naming what timed out; scaling
down under NCCL is refused like growth."""

import time

import pytest

from configs.load import load
from configs.schema import TrainConfig


@pytest.fixture(scope="module")
def ray_local():
    import sys

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    yield ray
    ray.shutdown()


class Engine:
    """Calls run in order, one at a time, as a RolloutActor's do."""

    def rollout(self, seconds: float) -> str:
        time.sleep(seconds)
        return "batch"

    def load(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def pool_of(ray, actors, *overrides):
    from cluster.pool import RolloutPool

    pool = RolloutPool.__new__(RolloutPool)  # the driver's bookkeeping around real actors (no engines started)
    pool.ray, pool.cfg, pool.slots, pool.restarts, pool._nodes = ray, load(TrainConfig, None, list(overrides)), actors, 0, {}
    pool.publisher = None  # no learner: a failed load is the actor's (RolloutPool._learner_lost)
    return pool


NCCL = ("cluster.weight_sync=nccl", "cluster.learner_gpus=1", "cluster.rollout_gpus=1")


def test_the_load_timeout_starts_when_the_queued_rollout_ends(ray_local):
    ray = ray_local
    a = ray.remote(num_cpus=0)(Engine).remote()
    pool = pool_of(ray, [a], *NCCL, "cluster.sync_timeout_s=4", "cluster.rollout_timeout_s=60")
    rollout = a.rollout.remote(8.0)  # async: a rollout already running on the actor
    loads = [a.load.remote(0.1)]  # queued behind it: done ~8 s from now, 0.1 s after it starts
    assert pool.load_all(loads, {0: [rollout]}) == [0.1]


def test_a_load_that_does_not_end_under_nccl_names_what_timed_out(ray_local):
    from cluster.pool import SyncTimeout

    ray = ray_local
    a = ray.remote(num_cpus=0)(Engine).remote()
    pool = pool_of(ray, [a], *NCCL, "cluster.sync_timeout_s=1")
    with pytest.raises(SyncTimeout, match=r"slot 0 had not received the new weights cluster.sync_timeout_s=1s "
                                          r"after the loads started"):
        pool.load_all([a.load.remote(30.0)], {})
    ray.kill(a)


def test_scaling_down_under_nccl_is_refused(ray_local, capsys):
    from cluster.rollout_queue import RolloutQueue

    ray = ray_local
    actors = [ray.remote(num_cpus=0)(Engine).remote() for _ in range(2)]
    pool = pool_of(ray, actors, *NCCL)
    queue = RolloutQueue.__new__(RolloutQueue)
    queue.pool, queue.chunks, queue.next_slot = pool, [], 0
    queue.resize(1)
    assert len(pool) == 2 and "removing a rollout actor from an NCCL weight-sync group is not supported" in \
        capsys.readouterr().out


def test_an_actor_the_cluster_cannot_place_is_an_error_naming_it_not_a_hang(ray_local):
    """A layout that asks for GPUs this cluster does not have: the learner rank never starts; the wait ends at
    its deadline with the actor, the key and the cluster's resources named."""
    from cluster import waits

    ray = ray_local
    rank = ray.remote(num_gpus=1)(Engine).remote()  # no GPU in this cluster: Ray never places it
    with pytest.raises(TimeoutError, match=r"learner rank 0 starting: no answer after cluster.start_timeout_s=2s; "
                                           r"the Ray cluster has 0 GPU \(0 free\)"):
        waits.get(ray, rank.load.remote(0.0), 2.0, "learner rank 0 starting", "cluster.start_timeout_s")
    ray.kill(rank)
