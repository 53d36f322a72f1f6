"""`ray job submit --working-dir . -- vigorl train ...` against a local `ray start --head` on 127.0.0.1."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0")
    gcs, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    p = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                        f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_two_step_run(ray_head, tmp_path):
    env, address = ray_head
    out = tmp_path / "run"
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={address}", "--working-dir", str(ROOT), "--",
           sys.executable, "-m", "cluster.cli", "train", "--config", "configs/local_cpu.yaml",
           f"out={out}", f"model.path={tmp_path}/model", f"data.path={tmp_path}/data", "make_data=4",
           "loop.steps=2", "loop.prompts_per_step=2", "rollout.group_size=2", "sampling.max_tokens_per_turn=160",
           "tracking.picture_every=0"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout[-4000:], p.stderr[-3000:])
    assert "succeeded" in (p.stdout + p.stderr).lower()
    assert "[train] step 2/2" in p.stdout
    assert (out / "checkpoints" / "step_00002" / "model.safetensors").is_file()
