"""The shared-memory weight file (actors.shm): a reader always ends with one whole version, however the
learner's writes fall; layout changes and dead learners' files are handled."""

import os

import pytest
import torch

from actors.shm import WeightFile, WeightReader, sweep


def state(fill: float) -> dict[str, torch.Tensor]:
    return {"embed": torch.full((7, 3), fill), "norm": torch.full((5,), fill, dtype=torch.bfloat16),
            "empty": torch.zeros(0), "step": torch.tensor([int(fill)], dtype=torch.int64)}


def copy_out(into: dict):
    return lambda views: into.update({k: v.clone() for k, v in views.items()})


def test_versions_round_trip(tmp_path):
    f = WeightFile(tmp_path)
    reader, got = WeightReader(), {}
    path = f.write(1, state(1.0))
    assert reader.read(path, copy_out(got)) == 1
    assert all(torch.equal(got[k], v) for k, v in state(1.0).items()) and got["norm"].dtype == torch.bfloat16
    assert f.write(2, state(2.0)) == path  # rewritten in place: the reader keeps its mapping
    assert reader.read(path, copy_out(got)) == 2 and torch.equal(got["embed"], state(2.0)["embed"])
    f.close()
    assert not os.path.exists(path)


def test_a_read_overlapping_a_write_is_redone_and_reports_the_newer_version(tmp_path):
    f = WeightFile(tmp_path)
    path = f.write(1, state(1.0))
    calls, got = [], {}

    def load(views):  # the learner publishes version 2 while this copy runs: the copy is half old, half new
        calls.append(1)
        got["embed"] = views["embed"].clone()
        if len(calls) == 1:
            f.write(2, state(2.0))
        got["norm"] = views["norm"].clone()

    assert WeightReader().read(path, load) == 2
    assert len(calls) == 2 and torch.equal(got["embed"], state(2.0)["embed"])


def test_a_write_in_progress_is_waited_for_then_a_clear_timeout(tmp_path):
    f = WeightFile(tmp_path)
    path = f.write(1, state(1.0))
    f._counters[0] += 1  # a learner that died in the middle of a publish
    with pytest.raises(TimeoutError, match="no whole version to read in 0 s"):
        WeightReader().read(path, copy_out({}), timeout_s=0.05)


def test_layout_change_names_the_tensor(tmp_path):
    f = WeightFile(tmp_path)
    f.write(1, state(1.0))
    changed = state(2.0) | {"embed": torch.zeros(8, 3)}
    with pytest.raises(ValueError, match=r"no longer matches its layout: \('embed', 'float32', \[8, 3\]\)"):
        f.write(2, changed)


def test_sweep_removes_only_dead_learners_files(tmp_path):
    dead = tmp_path / "vigorl-weights-999999999-0000abcd"
    dead.write_bytes(b"x")
    live = WeightFile(tmp_path)  # a new learner's file sweeps first
    live.write(1, state(1.0))
    assert not dead.exists() and live.path.exists()
    dead.write_bytes(b"x")
    assert sweep(tmp_path) == [dead] and live.path.exists()


def test_sweep_leaves_locked_foreign_and_unknown_files(tmp_path, monkeypatch):
    """A dead-looking pid whose file is still locked (its writer lives in another PID namespace, as in containers
    sharing /dev/shm), a file of another user, names that are not vigorl's: all kept, and no error."""
    import fcntl

    locked = tmp_path / "vigorl-weights-999999998-0000abcd"
    locked.write_bytes(b"x")
    fd = os.open(locked, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a live WeightFile holds for its life
    others = [tmp_path / "vigorl-weights-999999997-notmine", tmp_path / "vigorl-weights-x", tmp_path / "vigorl-w"]
    for f in others:
        f.write_bytes(b"x")
    (tmp_path / "vigorl-weights-999999996-0000abcd").symlink_to(tmp_path / "vigorl-w")
    try:
        assert sweep(tmp_path) == [] and locked.exists() and all(f.exists() for f in others)
    finally:
        os.close(fd)
    assert sweep(tmp_path) == [locked]  # its writer gone: the lock is free

    mine = tmp_path / "vigorl-weights-999999995-0000abcd"
    mine.write_bytes(b"x")
    monkeypatch.setattr(os, "getuid", lambda: os.stat(mine).st_uid + 1)  # the file is another user's
    assert sweep(tmp_path) == [] and mine.exists()


def test_a_live_writers_file_is_locked_and_unlocked_at_close(tmp_path):
    import fcntl

    f = WeightFile(tmp_path)
    f.write(1, state(1.0))
    fd = os.open(f.path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the file
    finally:
        os.close(fd)
    assert not f.path.exists() and not list(tmp_path.iterdir())


def test_a_full_shared_memory_is_a_clear_error(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    f = WeightFile(tmp_path)
    with pytest.raises(OSError, match=r"GiB needed, .* GiB free in .*No space left.*weight_sync=object_store"):
        f.write(1, state(1.0))
    assert not f.path.exists()
