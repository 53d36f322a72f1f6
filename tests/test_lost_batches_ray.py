"""A rollout batch whose object is gone before the learner reads it (its node died with the object store that
held it) is left out of the step and its prompts go back to the ledger, instead of failing the learner step.
Real Ray with a real lost node: a two-node local cluster (`ray.cluster_utils.Cluster`), one batch made on the
second node (large enough to live in its object store, not inlined), that node removed; then the learner's own
fetch rule (`LearnerActor._fetch`) and the driver's settlement (`RolloutQueue.settle`) with a real ledger."""

from types import SimpleNamespace

import pyarrow as pa
import pytest


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    away = cluster.add_node(num_cpus=1, resources={"away": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    yield ray, cluster, away
    ray.shutdown()
    cluster.shutdown()


def test_a_lost_batch_is_left_out_and_its_prompts_requeued(two_nodes):
    from cluster.ledger import Ledger
    from cluster.rollout_queue import Chunk, RolloutQueue
    from learner.actor import LearnerActor

    ray, cluster, away = two_nodes

    @ray.remote(resources={"away": 1}, max_retries=0)  # as an actor's call: not re-run elsewhere
    def rollout(k: int) -> pa.RecordBatch:
        return pa.record_batch({"x": [k] * 200_000})  # 1.6 MB: in the node's object store

    refs = [ray.put(pa.record_batch({"x": [0]})), rollout.remote(1), ray.put(pa.record_batch({"x": [2]}))]
    ray.wait([refs[1]], fetch_local=False)  # made, on the other node
    cluster.remove_node(away)
    got, lost = LearnerActor._fetch(SimpleNamespace(world_size=1), refs)
    assert lost == [1] and [b.column(0).to_pylist() for b in got] == [[0], [2]]

    ledger = Ledger(["a", "b", "c", "d", "e", "f"], seed=0)
    taken = []
    for slot, ref in enumerate(refs):
        ticket, ids = ledger.take(2)
        taken.append((Chunk(ticket, slot, ref, None), ids))
    queue = RolloutQueue(SimpleNamespace(), ledger, chunk=2, capacity=3)
    chunks, stats = queue.settle([c for c, _ in taken], [{"k": 0}, {"k": 1}, {"k": 2}], lost)
    assert [c.slot for c in chunks] == [0, 2] and stats == [{"k": 0}, {"k": 2}]
    counts = ledger.counts()
    assert (counts["ledger/done"], counts["ledger/requeued"], counts["ledger/in_flight"]) == (4, 2, 0)
    assert ledger.take(2)[1] == taken[1][1]  # the lost batch's prompts come back first, in order
    assert counts["ledger/duplicated"] == 0
