"""GPU only: the NCCL weight-sync path (learner rank 0 broadcasting into a vLLM engine) in a 2-step
`vigorl train` run on one GPU shared by the learner and one rollout actor. Skipped without CUDA."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL weight sync)")


def test_nccl_weight_sync_two_steps(tmp_path):
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", str(ROOT / "configs/local_cpu.yaml"),
           f"out={tmp_path}/run", f"model.path={tmp_path}/model", f"data.path={tmp_path}/data", "make_data=4",
           "model.dtype=bfloat16", "loop.steps=2", "loop.prompts_per_step=2", "rollout.group_size=2",
           "cluster.rollout_gpus=0.4", "cluster.learner_gpus=0.4", "cluster.weight_sync=nccl",
           "cluster.sync_timeout_s=300", "tracking.picture_every=0"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    assert "[train] step 2/2" in p.stdout
