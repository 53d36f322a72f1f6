"""The vLLM teacher (any local model dir) on the tiny random model: the teacher prompt of docs/algorithm.md §6, a
search over its outputs that completes with a well-formed tree (a random model writes garbage steps; the
tree still records them), and a `vigorl mcts` job whose teacher server is killed and replaced."""

from actors.teacher import RemoteTeacher, VLLMTeacher
from data_gen.mcts import MCTSConfig, search
from data_gen.teachers import MCTS_SYSTEM_PROMPTS, mcts_messages, parse_output


def test_teacher_prompt_and_parsing():
    msgs = mcts_messages("SYS", 4, "What colour?", ["<think> a (1, 2) </think>", "b (3, 4)"], force_final=True)
    assert msgs[0] == {"role": "system", "content": "SYS\n- There should be at least 4 thoughts before providing "
                                                    "the final answer."}
    text = msgs[1]["content"][1]["text"]
    assert text == "What colour?\n\nPrevious thought 1: a (1, 2)\n\nPrevious thought 2: b (3, 4)"
    assert msgs[1]["content"][0] == {"type": "image"} and "final answer" in msgs[2]["content"]
    assert parse_output("<think> x (1, 2) </think>").answer is None
    assert parse_output("<think> y </think>\n<answer> B. red </answer>") == parse_output("<think> y </think>\n"
                                                                                           "<answer>red</answer>")


def test_vllm_teacher_search_on_the_tiny_model(tmp_path):
    from data_gen.images import policy_image
    from data_gen.synthetic import make_dataset
    from data_gen.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    row = make_dataset("visual_search", 1, seed=0, out=tmp_path / "data", progress=False)[0]
    image = policy_image(tmp_path / "data", row.image)
    server = VLLMTeacher(str(model), max_tokens=24, max_model_len=4096)
    teacher = RemoteTeacher(server, "visual_search", image, None, 3)
    assert teacher.system == MCTS_SYSTEM_PROMPTS["visual_search"]
    tree = search(row.question, image, teacher, lambda a: float(a == row.gold),
                  MCTSConfig(simulations=2, children=2, rollouts_per_child=1, rollout_steps=2))
    nodes = tree.to_json()
    assert len(nodes) >= 2 and nodes[0]["visits"] >= 2 and server.calls == teacher.calls >= 3
    assert all(len(n["rollouts"]) == 1 for n in nodes[1:3])


def test_a_killed_teacher_server_is_replaced_and_nothing_is_lost(tmp_path):
    """`vigorl mcts` with the vLLM teacher server (the tiny model) SIGKILLed once the first tree is written: the
    search worker's call fails with the server's ActorDiedError, the job starts a new server, the question in
    flight is searched again on a new worker, and every question ends as a tree; `faults/teacher_restarts` 1."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    import mlflow
    from conftest import jsonl, store

    from data_gen.tiny_model import make_tiny_model

    root = Path(__file__).resolve().parent.parent
    n = 6
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "mcts"
    p = subprocess.Popen([sys.executable, "-m", "cluster.cli", "mcts", "--config", str(root / "configs" / "mcts_local.yaml"),
                          f"out={out}", f"data.path={tmp_path / 'data'}", f"make_data={n}", "workers=1",
                          "worker_cpus=0.5", "teacher.kind=vllm", f"teacher.model_path={model}", "teacher.max_tokens=24",
                          "teacher.max_model_len=4096", "search.simulations=2", "search.children=2",
                          "search.rollouts_per_child=1", "search.rollout_steps=2", "restart_backoff_s=1", store(out)],
                         cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)  # keeps the pipe drained
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not (out / "trees.jsonl").is_file() or not (out / "trees.jsonl").read_text().count("\n"):
            assert p.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.05)
        server = teacher_pids(p.pid)
        assert len(server) == 1, server
        os.kill(server[0], signal.SIGKILL)
        done_at_kill = (out / "trees.jsonl").read_text().count("\n")
        assert p.wait(timeout=900) == 0, "".join(lines)[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    reader.join(timeout=60)  # the job's output is closed: the reader has every line
    text = "".join(lines)
    assert done_at_kill < n  # the precondition: questions were left to search after the kill
    assert "[mcts] fault: the vLLM teacher server died" in text and f"[mcts] done: {n} trees, 0 failed" in text, text[-3000:]
    assert sorted(t["question_id"] for t in jsonl(out / "trees.jsonl")) == sorted({t["question_id"] for t in
                                                                                     jsonl(out / "trees.jsonl")})
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    m = client.search_runs([client.get_experiment_by_name("vigorl-mcts").experiment_id])[0].data.metrics
    assert m["faults/teacher_restarts"] == 1 and m["faults/actor_restarts"] >= 1 and m["mcts/questions_done"] == n


def teacher_pids(parent: int) -> list[int]:
    """The vLLM teacher server's process (Ray titles it `ray::VLLMTeacher...`) under the job's driver."""
    import psutil

    found = []
    for proc in psutil.Process(parent).children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::VLLMTeacher"):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found
