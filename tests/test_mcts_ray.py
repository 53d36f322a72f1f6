"""`vigorl mcts` end to end as a Ray job on this machine: the scripted teacher over synthetic visual search,
trees written line by line in the documented format, a question whose teacher raises recorded as failed,
MLflow metrics, and resume after a killed job (a half-written last line dropped, nothing searched twice)."""

from pathlib import Path

import pytest
from conftest import jsonl, store, vigorl

ROOT = Path(__file__).resolve().parent.parent
N = 8  # questions; the last one's scene is broken, so its teacher raises


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data_gen.rows import write_rows
    from data_gen.synthetic import make_dataset

    root = tmp_path_factory.mktemp("mcts_data")
    rows = make_dataset("visual_search", N, seed=5, out=root, progress=False)
    rows[-1].meta = "{}"  # the scripted teacher cannot read this scene
    write_rows(rows, root)
    return root, [r.prompt_id for r in rows]


def mcts(out, data_dir, *overrides, check=True):
    return vigorl("mcts", "--config", ROOT / "configs" / "mcts_local.yaml", f"out={out}", f"data.path={data_dir}",
                  "workers=2", store(out), *overrides, check=check)


def test_trees_failures_and_metrics(tmp_path, data):
    data_dir, ids = data
    p = mcts(tmp_path, data_dir)
    trees = jsonl(tmp_path / "trees.jsonl")
    assert sorted(t["question_id"] for t in trees) == sorted(ids[:-1])
    failed = jsonl(tmp_path / "failed.jsonl")
    assert [f["question_id"] for f in failed] == [ids[-1]] and "meta" in failed[0]["reason"]
    for t in trees:
        assert {"question_id", "task", "image", "question", "gold", "nodes"} <= set(t)
        nodes = t["nodes"]
        assert nodes[0]["parent"] is None and nodes[0]["depth"] == 0 and nodes[0]["text"] == ""
        for n in nodes:
            assert set(n) == {"id", "parent", "depth", "text", "coord", "terminal", "answer", "visits", "value",
                              "rollouts"}
            assert n["id"] == nodes.index(n)
            if n["parent"] is not None:
                assert nodes[n["parent"]]["depth"] == n["depth"] - 1 and not nodes[n["parent"]]["terminal"]
            assert n["terminal"] == (n["answer"] is not None)
            for r in n["rollouts"]:
                assert set(r) == {"steps", "answer", "reward"} and isinstance(r["steps"], list)
        assert nodes[0]["visits"] > 0 and any(r["reward"] >= 1.0 for n in nodes for r in n["rollouts"])
    assert "[mcts] done: 7 trees, 1 failed" in p.stdout

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("vigorl-mcts").experiment_id])[0]
    m = run.data.metrics
    assert m["mcts/questions_done"] == 7 and m["mcts/questions_failed"] == 1 and m["mcts/correct_path_frac"] == 1.0
    assert m["mcts/teacher_calls"] > 7 and m["mcts/seconds_per_question"] > 0
    assert "mcts/correct_chains_per_question" in m


def test_resume_after_a_killed_job(tmp_path, data):
    data_dir, ids = data
    killed = mcts(tmp_path, data_dir, "crash_after=3", check=False)
    assert killed.returncode == 17  # died mid-run, no cleanup
    assert len(jsonl(tmp_path / "trees.jsonl")) == 3
    with open(tmp_path / "trees.jsonl", "a") as f:
        f.write('{"question_id": "' + ids[4] + '", "nodes": [{"id": 0, "par')  # the line being written
    p = mcts(tmp_path, data_dir)
    assert "half-written last line" in p.stderr and "3 already in" in p.stdout
    trees = jsonl(tmp_path / "trees.jsonl")  # every line parses: the partial one was cut off
    assert sorted(t["question_id"] for t in trees) == sorted(ids[:-1])  # each once


def test_corrupt_line_names_file_and_line(tmp_path, data):
    data_dir, ids = data
    (tmp_path / "trees.jsonl").write_text('{"question_id": "a", "nodes": []}\nnot json\n'
                                          '{"question_id": "b", "nodes": []}\n')
    p = mcts(tmp_path, data_dir, check=False)
    assert p.returncode != 0 and f"{tmp_path / 'trees.jsonl'} line 2: not a tree line" in p.stderr
