"""Shared builders for tests that need a live vLLM engine with the tiny model."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
_EXIT_STATUS = 0
# MLflow: a test that reads a run back gives its command a store of its own (`store(out)`); every other command
# logs to this session's scratch store, never to the checkout's runs/mlflow.db (the default store), which tests
# running side by side would share. The user's own MLFLOW_* settings stay out of the tests.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='vigorl-mlflow-')}/mlflow.db"
os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)


# Tests are marked by what they need, from their file name (DEVELOPERS: test_*_ray.py starts Ray, *_vllm.py a vLLM
# engine, *_gpu.py a CUDA GPU): `make test-fast` runs the rest (`-m "not ray and not vllm and not gpu"`).
NEEDS = (("_ray.py", "ray"), ("_vllm.py", "vllm"), ("_gpu.py", "gpu"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        for suffix, mark in NEEDS:
            if item.path.name.endswith(suffix):
                item.add_marker(getattr(pytest.mark, mark))


def pytest_sessionfinish(session, exitstatus):
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


def pytest_unconfigure(config):
    """Leave with pytest's own status once everything is reported, skipping the interpreter's finalisation:
    with several in-process vLLM engines (OpenMP threads) and Ray having run in this process, C-extension
    teardown at exit can segfault after every test passed (seen once in a full run, 2026-11-26), which
    would turn a green run red by chance. The code under test runs its jobs in subprocesses that exit
    normally; only this test process leaves early."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS)


@dataclass
class Stack:
    root: Path  # tmp dir holding model/ and data/
    model_dir: Path
    llm: object  # vllm.LLM, in this process
    processor: object
    batch: list  # (row, full image as the model sees it, image source) per prompt


def build_stack(tmp_path_factory, name: str, n_prompts: int = 2) -> Stack:
    """A fresh tiny model, `n_prompts` synthetic visual-search prompts and an in-process vLLM engine.
    Each test module builds its own: tests that reload weights must not change another module's engine."""
    from transformers import AutoProcessor

    from actors.engine import make_llm
    from data_gen.formats import read_rows
    from data_gen.images import policy_image
    from data_gen.synthetic import make_dataset
    from data_gen.tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp(name)
    model_dir = make_tiny_model(root / "model", vocab="small")
    make_dataset("visual_search", n_prompts, seed=0, out=root / "data", progress=False)
    llm = make_llm(str(model_dir), max_model_len=8192, seed=0)
    batch = [(r, policy_image(root / "data", r.image), r.image)
             for r in read_rows(root / "data")]
    return Stack(root, model_dir, llm, AutoProcessor.from_pretrained(model_dir), batch)


def release_process_group(env: dict) -> None:
    """After a test's in-process learner (`learner.trainer.Learner`): destroy its process group (its store listens
    on MASTER_PORT), forget DeepSpeed's clone of that group's world (`deepspeed.utils.groups._WORLD_GROUP`, which a
    later in-process learner would otherwise use: "Group ... is not registered"), and restore the env vars it set,
    so that neither later in-process learners nor the commands later tests start from this process see them."""
    import torch
    from deepspeed.utils import groups

    torch.distributed.destroy_process_group()
    groups._WORLD_GROUP = None
    os.environ.clear()
    os.environ.update(env)


def chromium_dom(page: Path, fragment: str = "") -> str:
    """The DOM of a local page after its scripts ran, from headless Chromium (Debian's `chromium`; `.ci/run`
    installs it). Skips the calling test, saying why, where there is none."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium; .ci/run does)")
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def vigorl(*args, check: bool = True, timeout: int = 600):
    """`python -m cluster.cli ARGS` from the repo root, as a user runs it; asserts success unless told not."""
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args)], cwd=root, capture_output=True,
                       text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    return p


def jsonl(path: Path) -> list:
    import json

    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    env: dict  # the environment the cluster's commands run with
    gcs: str  # 127.0.0.1:PORT, for `--address` / cluster.address
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit` and the state API


@pytest.fixture
def ray_head():
    """A `ray start --head` on 127.0.0.1 with 3 logical CPUs (2 rollout actors + 1 learner at most), stopped after."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0")
    gcs, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    # the agent's HTTP port too: its default (52365) is taken by any other Ray on the machine, and an agent
    # that cannot bind takes no jobs
    p = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                        f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=3",
                        f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    try:
        wait_for_job_agent(f"http://127.0.0.1:{dash}")
        yield RayHead(env, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}")
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_job_agent(dashboard: str, timeout_s: float = 180.0) -> None:
    """Return once the head takes jobs: `ray start` returns before the node's dashboard agent has registered,
    and a `ray job submit` meanwhile fails ("No available agent to submit job"). A trivial job that went
    through is the proof."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    client = JobSubmissionClient(dashboard)
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except RuntimeError as e:  # the dashboard's HTTP 500 while no agent is there
            assert time.monotonic() < deadline, f"the Ray head at {dashboard} took no job in {timeout_s:.0f} s: {e}"
            time.sleep(1.0)
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, f"the probe job on {dashboard} is still {status}"
        time.sleep(0.5)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)


def stop_cluster(temp: str) -> None:
    """SIGKILL the processes of the Ray cluster whose --temp-dir is `temp`: those naming it on their command
    line (gcs, raylet, dashboard, agents) and those holding a file under it (workers and actors log there).
    Not `ray stop --force`, which kills every Ray on the machine, other users' and other runs' too."""
    import signal

    def owned(pid: Path) -> bool:
        try:
            if temp in (pid / "cmdline").read_bytes().decode(errors="replace"):
                return True
            return any(os.readlink(fd).startswith(temp) for fd in (pid / "fd").iterdir())
        except OSError:  # gone meanwhile, or not ours to read
            return False

    me = os.getpid()
    for pid in [p for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != me]:
        if owned(pid):
            try:
                os.kill(int(pid.name), signal.SIGKILL)
            except OSError:
                pass


def store(out) -> str:
    """The override that gives a command its own MLflow store, out/mlflow.db (what `runs(out)` reads)."""
    return f"tracking.uri=sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def runs(out):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vigorl-demo")
    return client, client.search_runs([exp.experiment_id])


def lineage_of(client, run, step: int):
    import pyarrow.parquet as pq

    return pq.read_table(client.download_artifacts(run.info.run_id, f"lineage/step_{step:05d}.parquet"))


def hf_cache(model_dir, cache, repo: str = "vigorl-test/tiny-vl", rev: str = "") -> str:
    """Put the files of `model_dir` into the HF hub cache `cache` as huggingface_hub lays a download out
    (file_download.py): models--org--name/blobs/<hash> holds each file, snapshots/<commit>/<file> is a relative
    symlink to its blob, refs/main names the commit. Returns the commit (40 hex digits)."""
    import hashlib

    rev = rev or hashlib.sha1(repo.encode()).hexdigest()
    base = Path(cache) / ("models--" + repo.replace("/", "--"))
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / rev / f.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(rev)
    return rev


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """The `vigorl` train / eval / sft runs that test_formats_ray, test_hub_ray and test_tracking_ray each read
    their part of (tests/shared_runs.py): every launch costs 30-45 s here, so each is made once a session."""
    from shared_runs import Shared

    return Shared(tmp_path_factory.mktemp("shared"))
