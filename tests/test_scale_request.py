"""`vigorl scale` without Ray: the request file a running driver reads, and the errors that name bad input."""

import json

from cluster.cli import main
from cluster.pool import DRIVER_FILE, request_scale, requested_scale


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
