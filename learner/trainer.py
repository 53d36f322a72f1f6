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
from learner.grpo import kl_k3, masked_mean, policy_loss, truncated_is_weights
from learner.logprobs import model_inputs, rebuild_images, token_logprobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                       master_port: int | None = None) -> None:
    """torch.distributed for this learner rank (env:// rendezvous; DeepSpeed requires a process group).
    The ranks of one learner are separate processes (Ray actors) joining the same master."""
    import deepspeed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr)
    os.environ.setdefault("LOCAL_RANK", "0" if not torch.cuda.is_available() else str(torch.cuda.current_device()))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    os.environ["MASTER_PORT"] = str(master_port or os.environ.get("MASTER_PORT") or free_port())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


class Learner:
    def __init__(self, model_path: str | Path, cfg: LearnerConfig, dataset_root: str | Path, *,
                 steps_per_update: int, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                 master_port: int | None = None):
        """`steps_per_update`: micro-batches (backward calls) per optimizer step at start; train_step
        resizes it to the trajectories it keeps."""
        import deepspeed
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        init_process_group(rank, world_size, master_addr, master_port)
        self.rank, self.world_size = rank, world_size
        gpu = torch.cuda.is_available()
        dtype = torch.bfloat16 if gpu else torch.float32
        self.cfg, self.root, self.version, self.model_path = cfg, Path(dataset_root), 0, str(model_path)
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
            "train_micro_batch_size_per_gpu": 1,  # one trajectory per forward/backward (token-mean within it)
            "gradient_accumulation_steps": steps_per_update,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": gpu},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        if self.ref is not None:
            self.ref.to(self.engine.device)

    def _inputs(self, t: Trajectory) -> dict[str, torch.Tensor]:
        inputs = model_inputs(t, rebuild_images(t.images, self.root), self.image_processor)
        return {k: v.to(self.engine.device) for k, v in inputs.items()}

    def train_step(self, trajectories: list[Trajectory], max_staleness: int = 0, staleness_mode: str = "drop",
                   tis_cap: float = 2.0) -> dict[str, float]:
        """One optimizer step, one trajectory per micro-batch. Samples more than `max_staleness` versions
        behind are dropped (`drop`) or corrected with truncated importance weights (`tis`)."""
        if staleness_mode not in ("drop", "tis"):
            raise ValueError(f"staleness_mode must be 'drop' or 'tis', got {staleness_mode!r}")
        staleness = [self.version - t.weight_version for t in trajectories]
        too_old = [s > max_staleness for s in staleness]
        keep = [t for t, old in zip(trajectories, too_old) if not (old and staleness_mode == "drop")]
        # every rank sees the same list; each trains on an equal slice (DeepSpeed needs equal counts)
        per_rank = len(keep) // self.world_size
        out = {"staleness_mean": sum(staleness) / max(1, len(staleness)),
               "staleness_max": float(max(staleness, default=0)),
               "dropped_stale": float(sum(too_old) if staleness_mode == "drop" else 0),
               "tis_corrected": float(sum(too_old) if staleness_mode == "tis" else 0),
               "dropped_uneven": float(len(keep) - per_rank * self.world_size)}
        keep = keep[self.rank * per_rank:(self.rank + 1) * per_rank]
        if not keep:
            return out | {"version": float(self.version), "trained": 0.0}
        self.engine.set_train_batch_size(per_rank * self.world_size)
        self.engine.train()
        sums: dict[str, float] = {}
        for t in keep:
            inputs = self._inputs(t)
            behaviour = torch.tensor([t.logprobs], dtype=torch.float32, device=self.engine.device)
            mask = torch.tensor([t.loss_mask], dtype=torch.float32, device=self.engine.device)
            logp, entropy = token_logprobs(self.engine, inputs, with_entropy=True)  # [1, T] each
            weights, old = None, behaviour
            if self.version - t.weight_version > max_staleness:  # tis: ratio against the current policy,
                old = logp.detach()  # which is the proximal one (1 PPO epoch): no second forward
                weights = truncated_is_weights(old, behaviour, tis_cap)
            adv = torch.tensor([t.advantage], dtype=logp.dtype, device=logp.device)
            loss, m = policy_loss(logp, old, adv, mask, self.cfg.clip_low, self.cfg.clip_high, self.cfg.dual_clip,
                                  weights)
            if self.ref is not None:
                with torch.no_grad():
                    ref = token_logprobs(self.ref, inputs)
                kl = masked_mean(kl_k3(logp, ref), mask)
                loss = loss + self.cfg.kl_coef * kl
                m["kl"] = kl.item()
            self.engine.backward(loss)
            self.engine.step()
            m["entropy"] = masked_mean(entropy, mask).item()
            m["loss"] = loss.item()
            m["tokens"] = float(mask.sum().item())
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        self.version += 1
        out |= {k: v / len(keep) for k, v in sums.items()}
        out["tokens"] = sums["tokens"]
        out["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out["version"] = float(self.version)
        out["trained"] = float(len(keep) * self.world_size)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights in HF parameter names (gathered under ZeRO-3: call on every rank), on CPU."""
        import deepspeed

        module = self.engine.module
        if self.cfg.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def save_hf(self, path: str | Path) -> None:
        """Save the policy as an HF model dir with its processor: loadable by transformers and vLLM.
        Call on every rank (ZeRO-3 gathers); rank 0 writes."""
        from transformers import AutoProcessor

        state = self.state_dict()
        if self.rank == 0:
            self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
            AutoProcessor.from_pretrained(self.model_path).save_pretrained(path)
