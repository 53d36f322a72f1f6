"""A Hugging Face Hub id as model.path, end to end on the real stack: the tiny model is put into an HF cache laid
out as huggingface_hub lays it out (models--org--name/snapshots/<commit>/, refs/main), the Hub is off
(HF_HUB_OFFLINE=1), and `vigorl train` (to a checkpoint), `vigorl sft` and `vigorl eval` all take
`model.path=org/name`: resolved once on the driver, every actor and the resume fingerprint get the snapshot dir,
the id stays in model.source. Then the output guards at the CLI: a new train run into that out and an eval rerun
with another model are refused before Ray starts."""

import json
from pathlib import Path

from conftest import hf_cache, vigorl

ROOT = Path(__file__).resolve().parent.parent
REPO = "vigorl-test/tiny-vl"


def sft_rows(root: Path) -> None:
    """Two single-turn sharegpt rows (what `vigorl linearize` writes) with their images."""
    from PIL import Image

    rows = []
    for i in range(2):
        Image.new("RGB", (224, 112), (40 * i, 90, 160)).save(root / f"{i}.png")
        rows.append({"question_id": f"q{i}", "images": [f"{i}.png"], "image_size": [224, 112], "messages": [
            {"role": "system", "content": "S."}, {"role": "user", "content": "<image>Where is the square?"},
            {"role": "assistant", "content": f"<think>\nat ({10 + i}, 20)\n</think>\n<answer> blue </answer>"}]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hub_id_through_train_sft_eval(tmp_path, monkeypatch):
    from cluster.resume import model_fingerprint
    from data_gen.tiny_model import make_tiny_model

    cache = tmp_path / "hf" / "hub"
    rev = hf_cache(make_tiny_model(tmp_path / "src", vocab="small"), cache, REPO)
    snap = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / rev
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the CLI subprocesses inherit these
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, run = tmp_path / "data", tmp_path / "run"

    train = ["train", "--config", ROOT / "configs" / "local_cpu.yaml", f"out={run}", f"model.path={REPO}", "make_tiny=''",
             f"data.path={data}", "make_data=4", "loop.steps=1", "loop.prompts_per_step=2", "rollout.group_size=2",
             "sampling.max_tokens_per_turn=64", "tracking.picture_every=0"]
    out = vigorl(*train, timeout=900).stdout
    assert f"model.path={REPO} -> {snap}" in out and "[train] step 1/1" in out
    state = json.loads((run / "resume" / "step_00001" / "state.json").read_text())
    assert state["model_fingerprint"] == model_fingerprint(snap)
    assert state["config"]["model.path"] == str(snap) and state["config"]["model.source"] == REPO
    assert (run / "checkpoints" / "step_00001" / "model.safetensors").is_file()
    assert not (ROOT / REPO.split("/")[0]).exists()  # nothing looked for (or built) under the id in the cwd
    again = vigorl(*train, check=False)  # a new run into that out: stopped before Ray, checkpoints kept
    assert again.returncode == 2 and f"vigorl train --resume {run}" in again.stderr
    assert (run / "resume" / "step_00001" / "complete").is_file()

    sft_data = tmp_path / "sft_data"
    sft_data.mkdir()
    sft_rows(sft_data)
    vigorl("sft", "--config", ROOT / "configs" / "sft_local.yaml", f"out={tmp_path / 'sft'}", f"model.path={REPO}",
           f"data={sft_data}", "batch_size=2", "max_steps=1", timeout=900)
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["base_model"] == REPO and summary["steps"] == 1
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()

    ev = ["eval", "--config", ROOT / "configs" / "eval_local.yaml", f"out={tmp_path / 'eval'}", f"data.path={data}",
          "limit=2", "rollout.guided=true", "rollout.min_zooms=1", "sampling.max_tokens_per_turn=64", "gallery=0"]
    vigorl(*ev, f"model.path={REPO}", timeout=900)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["model"] == REPO and summary["model_path"] == str(snap) and summary["overall"]["n"] == 2
    settings = json.loads((tmp_path / "eval" / "eval_settings.json").read_text())
    assert settings["settings"]["model_fingerprint"] == model_fingerprint(snap)
    other_model = tmp_path / "other"  # another model: its config differs (refused before it is ever loaded)
    other_model.mkdir()
    (other_model / "config.json").write_text(json.dumps(json.loads((snap / "config.json").read_text()) | {"x": 1}))
    other = vigorl(*ev, f"model.path={other_model}", check=False)
    assert other.returncode == 2 and "made with other settings" in other.stderr, other.stderr[-3000:]
    assert f"({REPO})' -> " in other.stderr and len((tmp_path / "eval" / "items.jsonl").read_text().splitlines()) == 2
