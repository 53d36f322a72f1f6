"""On a real local Ray: a rollout actor whose constructor refuses its config (`actors.actor.check_rollout`
raises ConfigError: here a prompt name the driver's own check was bypassed for) is not a fault — the run's
error comes at once, with no replacement started; a constructor failing otherwise (no data at data.path) still
is one, tried `cluster.restart_attempts` times (the fault path tests/test_chaos_ray.py walks end to end).
restart_attempts=2: the least that tells one try from the allowed tries (each try is an actor process start)."""

import pytest


def test_a_config_error_in_an_actor_constructor_is_not_retried(tmp_path):
    from cluster.ledger import Ledger
    from cluster.pool import RolloutPool, StartError
    from cluster.rollout_queue import RolloutQueue
    from cluster.raystart import init_ray
    from configs.base import ConfigError
    from configs.load import load
    from configs.released import official_defaults
    from configs.schema import TrainConfig

    def cfg(*overrides):
        return official_defaults(load(TrainConfig, None, [f"out={tmp_path}", "cluster.rollout_cpus=0",
                                                          "cluster.restart_attempts=2", "cluster.restart_backoff_s=0",
                                                          *overrides]))

    ray = init_ray("", 1, verbose=False)
    try:
        pool = RolloutPool(ray, cfg("rollout.prompt=vigorl_multi_tur"), 1)
        queue = RolloutQueue(pool, Ledger(["p0", "p1"]), chunk=1, capacity=1)
        queue.fill()
        with pytest.raises(ConfigError, match=r"'rollout.prompt': unknown prompt 'vigorl_multi_tur' \(did you mean "
                                              r"'vigorl_multi_turn'\?\)"):
            queue.take(1)
        assert (pool.next_index, pool.restarts) == (1, 0)  # no replacement was started
        with pytest.raises(ConfigError, match="rollout.prompt"):
            pool._started(0)  # a replacement start refuses at its first try
        assert pool.next_index == 2  # one try, where restart_attempts=2 allows two

        faulty = RolloutPool(ray, cfg(f"data.path={tmp_path / 'no-data'}"), 1)
        with pytest.raises(StartError, match=r"(?s)no new actor started in 2 tries.*FileNotFoundError: data.path"):
            faulty._started(0)
        assert faulty.next_index == 3  # the first actor and two replacement tries
    finally:
        ray.shutdown()
