"""GPU only: the two GPU weight-sync paths in short `vigorl train` runs of the tiny model in bf16, each
checking that the learner and vLLM agree on the log-probs of fresh samples after syncs (`logp_mismatch`:
mean |learner log p - engine log p| over the tokens of samples generated with the learner's current
weights; a sync that did not land shows as a jump). Unguided sampling, so the engine's log-probs are of
the model's own distribution. Skipped without CUDA; the NCCL run needs two GPUs (NCCL refuses two ranks on
one GPU)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import runs, store

ROOT = Path(__file__).resolve().parent.parent
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
MISMATCH = 0.1  # nats per token; bf16 learner vs bf16 vLLM kernels on the tiny model


def train(tmp_path: Path, tied: bool, *overrides: str):
    from data_gen.tiny_model import make_tiny_model

    make_tiny_model(tmp_path / "model", vocab="small", tied=tied)  # tied: the LM head is the embedding (3B's layout)
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", str(ROOT / "configs/local_cpu.yaml"),
           f"out={tmp_path}/run", f"model.path={tmp_path}/model", f"data.path={tmp_path}/data", "make_data=4",
           "model.dtype=bfloat16", "loop.steps=3", "loop.prompts_per_step=2", "rollout.group_size=2",
           "rollout.guided=false", "tracking.picture_every=0", store(tmp_path / "run"), *overrides]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    assert "[train] step 3/3" in p.stdout
    client, found = runs(tmp_path / "run")
    history = client.get_metric_history(found[0].info.run_id, "logp_mismatch")
    assert len(history) == 3 and all(m.value < MISMATCH for m in history), [m.value for m in history]


@pytest.mark.skipif(GPUS < 1, reason="needs a CUDA GPU")
@pytest.mark.parametrize("tied", [False, True])
def test_one_gpu_learner_and_vllm_share_it(tmp_path, tied):
    """Learner and one vLLM engine on one GPU; weights through the learner's shared-memory file (the default
    on one node) into the in-process engine."""
    train(tmp_path, tied, "cluster.rollout_gpus=0.5", "cluster.learner_gpus=0.5", "cluster.gpu_memory_utilization=0.3")


@pytest.mark.skipif(GPUS < 2, reason="needs two CUDA GPUs (NCCL weight sync)")
@pytest.mark.parametrize("tied", [False, True])
def test_nccl_weight_sync_on_two_gpus(tmp_path, tied):
    train(tmp_path, tied, "cluster.rollout_gpus=1", "cluster.learner_gpus=1", "cluster.weight_sync=nccl",
          "cluster.sync_timeout_s=300")


@pytest.mark.skipif(GPUS < 3, reason="needs three CUDA GPUs (a learner and a tensor-parallel engine of 2)")
def test_tensor_parallel_engine_workers_map_the_weight_file(tmp_path):
    """TP 2 without NCCL: each vLLM worker maps the learner's shared-memory weight file itself
    (`actors.weights.load_weights_from_file`), nothing pickled per worker."""
    train(tmp_path, True, "cluster.rollout_gpus=2", "cluster.tensor_parallel_size=2", "cluster.learner_gpus=1",
          "cluster.weight_sync=shm")
