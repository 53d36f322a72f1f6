"""The whole front half on the tiny model, from the recipes in configs/: `vigorl mcts` (scripted teacher) ->
`vigorl linearize` -> `vigorl to-multiturn` -> `vigorl sft` -> `vigorl train` from the SFT checkpoint, one chain
of MLflow runs linked by `vigorl.source_run`."""

import json
from pathlib import Path

from conftest import store
from conftest import vigorl as _vigorl

ROOT = Path(__file__).resolve().parent.parent


def vigorl(*args):
    return _vigorl(*args, timeout=900).stdout


def test_mcts_linearize_multiturn_sft_train(tmp_path):
    data, mcts, lin, mt, sft = (tmp_path / x for x in ("data", "mcts", "lin", "mt", "sft"))
    mlflow_store = store(tmp_path)  # one store for the whole chain, as the project's default store is
    vigorl("mcts", "--config", ROOT / "configs/mcts_local.yaml", f"out={mcts}", f"data.path={data}", "make_data=4",
           mlflow_store)
    out = vigorl("linearize", mcts / "trees.jsonl", lin)
    assert json.loads(out.split("] ", 1)[1].split(" -> ")[0])["chains"] > 0
    vigorl("to-multiturn", lin, mt, "out_size=336", "min_pixels=3136")  # tiny scenes stay small (no 2.7 MP up-scale)
    rows = [json.loads(x) for x in (mt / "train.jsonl").read_text().splitlines()]
    assert rows and all(len(r["images"]) == 1 + sum(m["content"].count("<tool_call>") for m in r["messages"]
                                                     if m["role"] == "assistant") for r in rows)
    vigorl("make-tiny-model", tmp_path / "model")
    out = vigorl("sft", "--config", ROOT / "configs/sft_local.yaml", f"out={sft}", f"model.path={tmp_path / 'model'}",
                 f"data={mt}", "batch_size=4", "max_steps=1", mlflow_store)
    assert "[sft] done" in out and (sft / "model" / "model.safetensors").is_file()
    out = vigorl("train", "--config", ROOT / "configs/local_cpu.yaml", f"out={tmp_path / 'rl'}",
                 f"model.path={sft / 'model'}", f"data.path={data}", "loop.steps=1", "loop.prompts_per_step=2",
                 "rollout.group_size=2", "sampling.max_tokens_per_turn=96", "tracking.picture_every=0", mlflow_store)
    assert "[train] step 1/1" in out
    # lineage: the MCTS run's id travels with its trees through linearize and to-multiturn into the SFT run's
    # tags, the SFT model's into the GRPO run's
    import mlflow

    client = mlflow.MlflowClient(mlflow_store.split("=", 1)[1])
    by_command = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            by_command[r.data.tags["vigorl.command"]] = r
    mcts_run = json.loads((mcts / "vigorl_run.json").read_text())["run_id"]
    assert json.loads((mt / "vigorl_run.json").read_text())["run_id"] == mcts_run == by_command["mcts"].info.run_id
    assert by_command["sft"].data.tags["vigorl.source_run"] == mcts_run
    assert json.loads((sft / "model" / "vigorl_run.json").read_text())["run_id"] == by_command["sft"].info.run_id
    assert by_command["train"].data.tags["vigorl.source_run"] == by_command["sft"].info.run_id
