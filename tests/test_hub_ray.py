"""A Hugging Face Hub id as model.path, end to end on the real stack: the tiny model is put into an HF cache laid
out as huggingface_hub lays it out (models--org--name/snapshots/<commit>/, refs/main), the Hub is off
(HF_HUB_OFFLINE=1), and `vigorl train` (to a checkpoint), `vigorl sft` and `vigorl eval` all take
`model.path=org/name`: resolved once on the driver, every actor and the resume fingerprint get the snapshot dir,
the id stays in model.source. Then the output guards at the CLI: a new train run into that out and an eval rerun
with another model are refused before Ray starts.

The three runs are the session's shared ones (tests/shared_runs.py: mixed_train, sft, bench_eval), which
test_formats_ray and test_tracking_ray read too: every run there names the model by the Hub id, so no launch is
made for the id alone; the refusals are this file's own commands (no Ray, no launch)."""

import json

from shared_runs import REPO, ROOT


def test_a_hub_id_trains_to_a_checkpoint_and_a_new_run_into_it_is_refused(shared):
    from cluster.resume import model_fingerprint

    run, snap = shared.mixed_train["out"], shared.snap
    out = shared.mixed_train["stdout"]
    assert f"model.path={REPO} -> {snap}" in out and "[train] step 1/1" in out
    state = json.loads((run / "resume" / "step_00001" / "state.json").read_text())
    assert state["model_fingerprint"] == model_fingerprint(snap)
    assert state["config"]["model.path"] == str(snap) and state["config"]["model.source"] == REPO
    assert (run / "checkpoints" / "step_00001" / "model.safetensors").is_file()
    assert not (ROOT / REPO.split("/")[0]).exists()  # nothing looked for (or built) under the id in the cwd
    again = shared.vigorl(*shared.train_args, check=False)  # a new run into that out: stopped before Ray, checkpoints kept
    assert again.returncode == 2 and f"vigorl train --resume {run}" in again.stderr
    assert (run / "resume" / "step_00001" / "complete").is_file()


def test_a_hub_id_fine_tunes(shared):
    summary = json.loads((shared.sft["out"] / "summary.json").read_text())
    assert summary["base_model"] == REPO and summary["steps"] == 2
    assert (shared.sft["out"] / "model" / "model.safetensors").is_file()


def test_a_hub_id_evaluates_and_a_rerun_with_another_model_is_refused(shared, tmp_path):
    from cluster.resume import model_fingerprint

    ev, snap = shared.bench_eval, shared.snap
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["model"] == REPO and summary["model_path"] == str(snap) and summary["overall"]["n"] == 2
    settings = json.loads((ev / "eval_settings.json").read_text())
    assert settings["settings"]["model_fingerprint"] == model_fingerprint(snap)
    other_model = tmp_path / "other"  # another model: its config differs (refused before it is ever loaded)
    other_model.mkdir()
    (other_model / "config.json").write_text(json.dumps(json.loads((snap / "config.json").read_text()) | {"x": 1}))
    other = shared.vigorl(*shared.bench_eval_args(other_model), check=False)
    assert other.returncode == 2 and "made with other settings" in other.stderr, other.stderr[-3000:]
    assert f"({REPO})' -> " in other.stderr and len((ev / "items.jsonl").read_text().splitlines()) == 2
