"""The benchmark scripts' shared plumbing (bench/common.py) on a real MLflow store and a real child interpreter."""

import pytest

from bench.common import child_result, metric_series, run_id, sqlite_uri, vigorl


def test_run_id_is_the_last_one_a_job_printed():
    out = "[train] MLflow run " + "a" * 32 + " (resumed)\n...\n[train] done; MLflow run " + "0123456789abcdef" * 2 + "\n"
    assert run_id(out) == "0123456789abcdef" * 2
    assert run_id("no run here") == ""


def test_a_job_logs_its_output_and_a_failure_names_the_log(tmp_path, capsys):
    out = vigorl("--help", log=tmp_path / "help.log")
    assert out.startswith("usage: vigorl") and (tmp_path / "help.log").read_text() == out
    with pytest.raises(RuntimeError, match=r"`vigorl no-such-command` failed \(2\); last lines of .*bad.log(.|\n)*"
                                           r"invalid choice: 'no-such-command'"):
        vigorl("no-such-command", log=tmp_path / "bad.log")
    assert capsys.readouterr().out == ""  # only a job's own "[...]" lines echo


def test_metric_series_are_in_step_order(tmp_path):
    import mlflow

    uri = sqlite_uri(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    rid = client.create_run(client.create_experiment("bench-common")).info.run_id
    for step, value in [(2, 0.5), (0, 1.5), (1, 2.5)]:  # logged out of order, as a resumed run may
        client.log_metric(rid, "time/step_s", value, step=step)
    assert metric_series(uri, rid, ("time/step_s", "absent")) == {"time/step_s": [1.5, 2.5, 0.5], "absent": []}
    with pytest.raises(ValueError, match="no MLflow run id to read time/step_s"):
        metric_series(uri, run_id("a job that printed no run"), ("time/step_s",))


def test_child_result_reads_the_tagged_json_line_and_names_a_failure(tmp_path, monkeypatch):
    (tmp_path / "peer_ok.py").write_text('print("warming up")\nprint("TRL " + \'{"rate": 2.5}\')\n')
    (tmp_path / "peer_bad.py").write_text('import sys\nprint("TRL {}")\nsys.exit("no GPU here")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert child_result("peer_ok", [], "TRL", "the peer run", timeout=60) == {"rate": 2.5}
    with pytest.raises(RuntimeError, match=r"the peer run failed \(exit 1\)(.|\n)*no GPU here"):
        child_result("peer_bad", [], "TRL", "the peer run", timeout=60)
