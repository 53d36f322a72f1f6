"""The trajectory record: schema derived from the dataclass, round trips through Arrow IPC and through
the Ray object store (zero-copy), per-token arrays checked for one length."""

import dataclasses
import os

import pyarrow as pa
import pytest

from actors.trajectory import SCHEMA, ImageRef, Trajectory, from_batch, to_batch


def make(i: int, n: int = 7) -> Trajectory:
    return Trajectory(
        episode_id=f"ep-{i}", group_id=f"g-{i // 2}", prompt_id=f"p-{i // 2}", weight_version=3 + i,
        token_ids=list(range(100 + i, 100 + i + n)), loss_mask=[0, 0, 0] + [1] * (n - 3),
        logprobs=[0.0, 0.0, 0.0] + [-0.5 - 0.25 * k for k in range(n - 3)], prompt_len=3,
        reward=1.08, reward_format=1.2, reward_accuracy=1.0, reward_coordinate=1.0, reward_diversity=0.2,
        advantage=0.5 - i, num_turns=3, points=[(10, 20), (300, 40)],
        images=[ImageRef("images/a.png", 1008, 756),
                ImageRef("images/a.png", 1008, 756, point=(10, 20), half_size=182, out_size=672)],
        end="answer")


def test_schema_is_derived_from_the_dataclass():
    assert SCHEMA.names == [f.name for f in dataclasses.fields(Trajectory)]
    assert SCHEMA.field("token_ids").type == pa.list_(pa.int32())
    assert SCHEMA.field("loss_mask").type == pa.list_(pa.int8())
    assert SCHEMA.field("logprobs").type == pa.list_(pa.float32())
    assert SCHEMA.field("points").type == pa.list_(pa.list_(pa.int64(), 2))
    img = SCHEMA.field("images").type.value_type
    assert isinstance(img, pa.StructType) and img.field("point").nullable


def test_arrow_ipc_round_trip():
    trajs = [make(i) for i in range(4)]
    sink = pa.BufferOutputStream()
    batch = to_batch(trajs)
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    back = from_batch(pa.ipc.open_stream(sink.getvalue()).read_all())
    assert back == trajs
    assert back[0].images[1].point == (10, 20) and back[0].points[0] == (10, 20)


def test_per_token_arrays_must_share_one_length():
    with pytest.raises(ValueError, match="ep-x: per-token arrays differ"):
        dataclasses.replace(make(0), episode_id="ep-x", logprobs=[0.0])
    with pytest.raises(ValueError, match="prompt_len"):
        dataclasses.replace(make(0), prompt_len=99)


def test_wrong_schema_is_refused():
    batch = to_batch([make(0)]).drop_columns(["advantage"])
    with pytest.raises(ValueError, match=r"missing \['advantage'\]"):
        from_batch(batch)


def test_ray_object_store_round_trip():
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        trajs = [make(i) for i in range(5)]
        batch = ray.get(ray.remote(to_batch).remote(trajs))  # built in a worker, moved through the store
        assert isinstance(batch, pa.RecordBatch)
        assert from_batch(batch) == trajs
        ref = ray.put(to_batch(trajs))
        assert from_batch(ray.get(ref)) == trajs
    finally:
        ray.shutdown()


def test_sliced_batches_and_empty_token_arrays():
    trajs = [make(i, n=3 + i) for i in range(4)]
    assert from_batch(to_batch(trajs).slice(1, 2)) == trajs[1:3]
    empty = dataclasses.replace(make(0), token_ids=[], loss_mask=[], logprobs=[], prompt_len=0)
    assert from_batch(to_batch([empty, trajs[0]])) == [empty, trajs[0]]
    table = pa.Table.from_batches([to_batch(trajs[:2]), to_batch(trajs[2:])])  # chunked columns
    assert from_batch(table) == trajs
