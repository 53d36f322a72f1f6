"""`vigorl scale` and `vigorl stop` without Ray: the request files a running driver reads, and the errors that
name bad input."""

import json

from cluster.cli import main
from cluster.control import DRIVER_FILE, driver_file, request_scale, requested_scale, stop_requested


def test_scale_request_reaches_the_run_and_bad_input_is_named(tmp_path, capsys):
    assert main(["scale", str(tmp_path), "--rollout-actors", "2"]) == 2  # no run there
    assert f"{tmp_path}: no `vigorl train` run in progress there" in capsys.readouterr().err
    (tmp_path / DRIVER_FILE).write_text(json.dumps({"pid": 1}))
    assert main(["scale", str(tmp_path), "--rollout-actors", "0"]) == 2
    assert "--rollout-actors must be >= 1, got 0" in capsys.readouterr().err
    assert requested_scale(tmp_path) is None
    assert main(["scale", str(tmp_path), "--rollout-actors", "3"]) == 0
    request_scale(tmp_path, 2)  # the newest request wins
    assert requested_scale(tmp_path).k == 2 and not list(tmp_path.rglob("*.tmp"))


def test_stop_request_reaches_the_run_and_a_new_run_drops_old_requests(tmp_path, capsys):
    assert main(["stop", str(tmp_path)]) == 2  # no run there
    assert f"{tmp_path}: no `vigorl train` run in progress there" in capsys.readouterr().err
    with driver_file(str(tmp_path), "run-1"):
        assert not stop_requested(tmp_path)
        assert main(["stop", str(tmp_path)]) == 0 and stop_requested(tmp_path)
        request_scale(tmp_path, 2)
    assert not (tmp_path / DRIVER_FILE).exists()
    with driver_file(str(tmp_path), "run-2"):  # a new run in the same dir starts without them
        assert not stop_requested(tmp_path) and requested_scale(tmp_path) is None
