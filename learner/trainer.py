"""The GRPO learner: a DeepSpeed engine over a Qwen2.5-VL policy, a frozen reference model for the KL
term, one optimizer step per call on the trajectories it is given, and versioned weights to publish.

CPU: fp32, gloo, torch AdamW (no DeepSpeed JIT CPU Adam). GPU: bf16, NCCL. One process per rank; with
several ranks, torch.distributed is initialised by the caller (Ray actors set the env:// variables).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from actors.trajectory import Trajectory
from cluster.config import LearnerConfig
from learner.grpo import kl_k3, masked_mean, policy_loss
from learner.logprobs import model_inputs, rebuild_images, token_logprobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process_group() -> None:
    """torch.distributed for one local rank (DeepSpeed requires a process group)."""
    import deepspeed

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(k, v)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


class Learner:
    def __init__(self, model_path: str | Path, cfg: LearnerConfig, dataset_root: str | Path, *,
                 steps_per_update: int):
        """`steps_per_update`: micro-batches (backward calls) per optimizer step."""
        import deepspeed
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        init_single_process_group()
        gpu = torch.cuda.is_available()
        dtype = torch.bfloat16 if gpu else torch.float32
        self.cfg, self.root, self.version = cfg, Path(dataset_root), 0
        self.image_processor = AutoProcessor.from_pretrained(model_path).image_processor
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype)
        if cfg.freeze_vision:
            model.model.visual.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.ref = None
        if cfg.kl_coef > 0:
            self.ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype).eval()
            self.ref.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch,
            "gradient_accumulation_steps": steps_per_update,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": gpu},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.steps_per_update = steps_per_update

    def _inputs(self, t: Trajectory) -> dict[str, torch.Tensor]:
        return model_inputs(t, rebuild_images(t.images, self.root), self.image_processor)

    def train_step(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """One optimizer step over `steps_per_update` micro-batches of one trajectory each."""
        if len(trajectories) != self.steps_per_update:
            raise ValueError(f"train_step needs {self.steps_per_update} trajectories, got {len(trajectories)}")
        self.engine.train()
        sums: dict[str, float] = {}
        for t in trajectories:
            inputs = self._inputs(t)
            logp = token_logprobs(self.engine, inputs)  # [1, T]
            old = torch.tensor([t.logprobs], dtype=logp.dtype)
            mask = torch.tensor([t.loss_mask], dtype=logp.dtype)
            loss, m = policy_loss(logp, old, torch.tensor([t.advantage], dtype=logp.dtype), mask,
                                  self.cfg.clip_low, self.cfg.clip_high, self.cfg.dual_clip)
            if self.ref is not None:
                with torch.no_grad():
                    ref = token_logprobs(self.ref, inputs)
                kl = masked_mean(kl_k3(logp, ref), mask)
                loss = loss + self.cfg.kl_coef * kl
                m["kl"] = kl.item()
            self.engine.backward(loss)
            self.engine.step()
            m["loss"] = loss.item()
            m["tokens"] = float(mask.sum().item())
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        self.version += 1
        out = {k: v / len(trajectories) for k, v in sums.items()}
        out["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out["version"] = float(self.version)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights in HF parameter names (gathered under ZeRO-3), on CPU, for publishing."""
        import deepspeed

        module = self.engine.module
        if self.cfg.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def logprobs(self, t: Trajectory) -> torch.Tensor:
        """The current policy's per-token log-probs of a trajectory, [T] (eval, no grad)."""
        self.engine.eval()
        with torch.no_grad():
            return token_logprobs(self.engine, self._inputs(t))[0]
