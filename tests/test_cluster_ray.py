"""The cluster commands of the docs, run as written: the bash block of docs/install.md "On a Ray cluster" (token auth on, a
`ray start --head` on 127.0.0.1, `ray job submit --working-dir .` with VIGORL_HOME) in a copy of the repository,
on free ports and a private Ray temp dir; the job's run must land in the submitting dir, not in the working dir
Ray unpacked for it, and a job with relative paths and no VIGORL_HOME is refused. With that head running (and
recorded in the temp dir's ray_current_cluster, as `ray start` records it), a local `vigorl mcts` starts its own
Ray and says so, `--address auto` joins the head, and a stale ray_current_cluster is ignored too.

Every cluster here lives under its own temp dir (RAY_TMPDIR / --temp-dir) and is killed through it at the end
(`conftest.stop_cluster`), never with `ray stop`, which would end every Ray of this user on the machine."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import BIN, free_port, stop_cluster, store

ROOT = Path(__file__).resolve().parent.parent
# a small run: the README's own command with these appended (1 prompt, 2 episodes of <= 64 tokens a turn)
SMALL = ["make_data=2", "loop.prompts_per_step=1", "rollout.group_size=2", "sampling.max_tokens_per_turn=64",
         "tracking.picture_every=0"]


def readme_block() -> str:
    guide = (ROOT / "docs" / "install.md").read_text()  # the README's cluster guide
    section = guide[guide.index("## On a Ray cluster"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def project_copy(dest: Path) -> Path:
    """The repository's files as a user's checkout has them (tracked and new, nothing ignored: no .venv, runs)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def user_env(temp: str) -> dict:
    """A user's shell with the venv on PATH, no Ray auth mode chosen yet, Ray's default temp dir `temp`/ray, and
    no MLflow settings (conftest's scratch store left out: the run's default store is the project copy's own)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "VIGORL_HOME") and not k.startswith("MLFLOW_")}
    return dict(env, PATH=f"{BIN}:{env.get('PATH', '')}", RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0",
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README block run by bash in a copy of the repo: `ray start` gets free ports, 3 CPUs and the private
    temp dir appended, `ray job submit` the head's dashboard port and the small-run overrides. Between the two, a
    trivial job is retried until the head takes one: `ray start` returns before the node's job agent has
    registered, and the dashboard waits only 10 s for it (ray/dashboard/consts.py WAIT_AVAILABLE_AGENT_TIMEOUT)
    before answering "No available agent to submit job, please try again later" — on a loaded machine a user
    retries; the test must not fail by chance."""
    project = project_copy(tmp_path_factory.mktemp("project"))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    gcs, dash = free_port(), free_port()
    script = readme_block()
    start = next(line for line in script.splitlines() if line.startswith("ray start --head"))
    ready = (f"for i in $(seq 120); do ray job submit --address http://127.0.0.1:{dash} -- true >/dev/null 2>&1 "
             "&& break; sleep 1; done")
    script = script.replace(start, start.split("#")[0].rstrip() + f" --port={gcs} --dashboard-port={dash} "
                            f"--dashboard-agent-listen-port={free_port()} --num-cpus=3 --temp-dir={temp}/ray\n{ready}")
    assert script.count("http://127.0.0.1:8265") == 1 and script.rstrip().endswith("loop.steps=2")
    script = script.replace("http://127.0.0.1:8265", f"http://127.0.0.1:{dash}").rstrip() + " " + " ".join(SMALL)
    env = user_env(temp)
    try:
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=project, env=env, capture_output=True,
                           text=True, timeout=900)
        yield dict(p=p, project=project, temp=temp, gcs=f"127.0.0.1:{gcs}", dash=f"http://127.0.0.1:{dash}",
                   env=env, script=script)
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_the_readme_commands_run_a_job_whose_outputs_land_in_the_submitting_dir(readme_run):
    p, project, temp = readme_run["p"], readme_run["project"], readme_run["temp"]
    out = (p.stdout + p.stderr)[-6000:]
    assert p.returncode == 0 and "succeeded" in p.stdout.lower(), out
    run = project / "runs" / "train"
    assert (run / "checkpoints" / "step_00002" / "model.safetensors").is_file(), out  # the run's end checkpoint
    assert (run / "config.yaml").is_file() and (project / "runs" / "tiny-model" / "config.json").is_file()
    assert (project / "runs" / "mlflow.db").is_file(), out  # the default MLflow store, beside the runs
    unpacked = list(Path(temp).glob("ray/session_*/runtime_resources/working_dir_files/*"))
    assert unpacked, "the job ran without Ray's working dir?"
    for pkg in unpacked:  # nothing of the run inside the dir Ray deletes with its session
        assert not (pkg / "runs").exists(), sorted(str(x) for x in (pkg / "runs").rglob("*"))[:20]


def submit(readme_run, *entrypoint: str, runtime_env: dict | None = None) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir .` from the project copy, with the README shell's token auth."""
    env = dict(readme_run["env"], RAY_AUTH_MODE="token")
    extra = ["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []
    return subprocess.run(["ray", "job", "submit", "--address", readme_run["dash"], "--working-dir", ".", *extra,
                           "--", *entrypoint], cwd=readme_run["project"], env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_job_with_relative_paths_and_no_home_is_refused_saying_what_to_pass(readme_run):
    assert readme_run["p"].returncode == 0
    p = submit(readme_run, "python", "-m", "cluster.cli", "train", "--config", "configs/local_cpu.yaml")
    text = p.stdout + p.stderr
    assert p.returncode != 0 and "failed" in text.lower(), text[-3000:]
    assert "vigorl train: out=runs/train is a relative path" in text and '"VIGORL_HOME"' in text, text[-3000:]


def mcts(readme_run, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A small local `vigorl mcts` (scripted teacher, 1 question, 1 worker) from the README's shell."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "mcts", "--config", "configs/mcts_local.yaml", *args, f"out={out}",
         f"data.path={out.parent / 'data'}", "make_data=1", "limit=1", "workers=1", "search.simulations=2",
         store(out)],
        cwd=readme_run["project"], env=env or dict(readme_run["env"], RAY_AUTH_MODE="token"), capture_output=True,
        text=True, timeout=600)


def test_a_local_run_starts_its_own_ray_beside_a_running_head_and_says_so(readme_run, tmp_path):
    assert readme_run["p"].returncode == 0
    recorded = Path(readme_run["temp"], "ray", "ray_current_cluster").read_text().strip()
    assert recorded == readme_run["gcs"]  # what made ray.init() join the head before (num_cpus refused)
    p = mcts(readme_run, tmp_path / "mcts")
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert (f"[ray] started a local Ray for this run (1 CPU, 127.0.0.1); the running Ray cluster at "
            f"{readme_run['gcs']} that `ray start` recorded on this machine is not used") in p.stdout
    assert (tmp_path / "mcts" / "trees.jsonl").is_file()


def test_address_auto_joins_the_head(readme_run, tmp_path):
    assert readme_run["p"].returncode == 0
    p = mcts(readme_run, tmp_path / "mcts", "--address", "auto")
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "[ray] started a local Ray" not in p.stdout and (tmp_path / "mcts" / "trees.jsonl").is_file()
    jobs = subprocess.run(["ray", "list", "jobs", "--address", readme_run["dash"], "--format", "json", "--detail"],
                          env=dict(readme_run["env"], RAY_AUTH_MODE="token"), capture_output=True, text=True,
                          timeout=120)
    assert jobs.returncode == 0, jobs.stderr[-2000:]
    drivers = [j for j in json.loads(jobs.stdout) if j.get("type") == "DRIVER"]
    assert any("cluster.cli mcts" in (j.get("entrypoint") or "") and "--address auto" in j["entrypoint"]
               for j in drivers), drivers


def test_a_stale_ray_current_cluster_is_ignored(tmp_path):
    """A ray_current_cluster left by a head that is gone (its GCS port closed): the local run starts its own."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        dead = f"127.0.0.1:{free_port()}"
        Path(temp, "ray").mkdir()
        Path(temp, "ray", "ray_current_cluster").write_text(dead)
        env = user_env(temp)
        p = mcts({"project": ROOT, "env": env}, tmp_path / "mcts", env=env)
        assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
        assert f"the stopped Ray cluster at {dead} that `ray start` recorded" in p.stdout
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
