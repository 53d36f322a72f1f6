"""The vLLM teacher (any local model dir) on the tiny random model: the teacher prompt of docs/algorithm.md §6 and a
search over its outputs that completes with a well-formed tree (a random model writes garbage steps; the
tree still records them)."""

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
