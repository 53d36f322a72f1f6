"""The GRPO learner: a DeepSpeed engine over a Qwen2.5-VL policy, a frozen reference model for the KL
term, PPO mini-batch updates on the trajectories of one rollout step, and versioned weights to publish.

CPU: fp32, gloo, torch AdamW (no DeepSpeed JIT CPU Adam). GPU: bf16, NCCL. One process per rank; with
several ranks, torch.distributed is initialised by the caller (Ray actors set the env:// variables).
Beside it: the micro-batches and forward inputs with the vision cache (learner/inputs.py), the weights it
exports and its checkpoints (learner/checkpoint.py), the process group (learner/distributed.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from actors.trajectory import Trajectory
from configs.schema import LearnerConfig
from learner import checkpoint
from learner.distributed import init_process_group
from learner.grpo import kl_k3, masked_mean, policy_loss, row_means, truncated_is_weights
from learner.inputs import FeatureCache, InputBuilder, by_length, minibatch_layout, pad_rows
from learner.logprobs import token_logprobs


def warmup_lr(base_lr: float, step: int, warmup_ratio: float, total_steps: int) -> float:
    """LR of rollout step `step` (0-based): constant after a linear warmup over int(warmup_ratio x
    total_steps) rollout steps, factor min(1, step / warmup) (EasyR1 `get_constant_schedule_with_warmup`,
    stepped once per rollout step; so the first step of a warmup trains at LR 0, as the released run did).
    No warmup: the full LR from the first step."""
    warmup = int(warmup_ratio * total_steps)
    return base_lr * (min(1.0, step / warmup) if warmup > 0 else 1.0)


def cosine_lr(base_lr: float, step: int, warmup_ratio: float, total_steps: int) -> float:
    """LR of optimizer step `step` (0-based) under a linear warmup over ceil(warmup_ratio x total_steps)
    steps, then a half cosine to 0 (transformers `get_cosine_schedule_with_warmup`, as LLaMA-Factory's
    SFT of the released checkpoints used: factor step / warmup, then 0.5 (1 + cos(pi x progress)))."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return base_lr * step / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return base_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


SCHEDULES = {"constant": warmup_lr, "cosine": cosine_lr}


class Learner:
    def __init__(self, model_path: str | Path, cfg: LearnerConfig, dataset_root: str | Path, *,
                 total_steps: int = 0, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                 master_port: int | None = None):
        """`total_steps`: rollout steps of the run (the LR warmup is a fraction of them)."""
        import deepspeed
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"learner.schedule must be one of {sorted(SCHEDULES)}, got {cfg.schedule!r}")
        unset = [k for k in ("grad_clip", "warmup_ratio", "mini_batch_size") if getattr(cfg, k) is None]
        if unset:
            raise ValueError(f"learner config fields {unset} are null: fill them with "
                             "configs.released.official_defaults(cfg) or set them")
        init_process_group(rank, world_size, master_addr, master_port)
        self.rank, self.world_size, self.total_steps = rank, world_size, total_steps
        gpu = torch.cuda.is_available()
        dtype = torch.bfloat16 if gpu else torch.float32
        self.cfg, self.root, self.version, self.model_path = cfg, Path(dataset_root), 0, str(model_path)
        processor = AutoProcessor.from_pretrained(model_path)
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
        if cfg.offload_optimizer:  # ZeRO-Offload: DeepSpeed's CPU Adam steps the CPU-resident fp32 state
            if not gpu:
                raise ValueError("learner.offload_optimizer=true needs a GPU learner (it moves GPU optimizer "
                                 "state to CPU memory); on CPU leave it false")
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            # The learner owns the accumulation boundary: backward() per micro-batch only accumulates, and
            # every step() is one optimizer update (one per mini-batch, whatever was dropped from it).
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage} | (
                {"offload_optimizer": {"device": "cpu", "pin_memory": True}} if cfg.offload_optimizer else {}),
            "bf16": {"enabled": gpu},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        if self.ref is not None:
            self.ref.to(self.engine.device)
        self.inputs = InputBuilder(processor, self.root, self.engine.device)
        self.sft_features = FeatureCache(cfg.sft_vision_cache_mb)  # the tower's outputs across SFT steps

    # ---- inputs ------------------------------------------------------------------------------------------
    def _inputs(self, trajs: list[Trajectory], features: dict | None = None, idx: list[int] | None = None) -> dict:
        """Forward inputs of `trajs` on the learner's device (`learner.inputs.InputBuilder`; with `features`,
        the vision tower's cached outputs of the trajectories `idx` replace the pixels)."""
        return self.inputs(trajs, features, idx)

    def _image_features(self, trajs: list[Trajectory], idx: list[int], kept: FeatureCache | None = None
                        ) -> dict[int, tuple[list, list]] | None:
        """The vision tower's output for every image of the trajectories `idx`, once per distinct image per
        rollout step, or per SFT run with `kept` (`InputBuilder.image_features`). None (the pixels go through
        the tower in every forward) when the tower trains (`freeze_vision` off: its output changes with every
        update), under ZeRO-3 (its partitioned parameters are gathered inside the engine's forward only) or
        with `vision_cache` off."""
        if not (self.cfg.freeze_vision and self.cfg.vision_cache) or self.cfg.zero_stage == 3:
            return None
        return self.inputs.image_features(self.engine.module.model, trajs, idx, self.cfg.logprob_micro_batch_size,
                                          kept)

    # ---- the rollout step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _recompute(self, trajs: list[Trajectory], idx: list[int], forwards: int, features) -> dict[int, tuple]:
        """Old (and reference) log-probs of the trajectories `idx` under the current weights, before any
        update of this rollout step ("always recompute old_log_probs"), `logprob_micro_batch_size` per
        forward; [T_i] tensors on the CPU. `forwards`: as many as the busiest rank needs (ZeRO-3 gathers
        parameters in each forward, so every rank runs the same number)."""
        self.engine.eval()
        out: dict[int, tuple] = {}
        lmb = self.cfg.logprob_micro_batch_size
        idx = by_length(idx, trajs)  # per-sequence results: the order only sets the padding
        for k in range(forwards):
            part = idx[k * lmb:(k + 1) * lmb]
            if not part:
                self.engine(**self._dummy_inputs())
                continue
            inputs = self._inputs([trajs[i] for i in part], features, part)
            mask = pad_rows([trajs[i].loss_mask for i in part], 0, torch.float32)
            old = token_logprobs(self.engine, inputs, mask=mask).float().cpu()
            ref = token_logprobs(self.ref, inputs, mask=mask).float().cpu() if self.ref is not None else None
            for j, i in enumerate(part):
                n = len(trajs[i].token_ids)
                out[i] = (old[j, :n], ref[j, :n] if ref is not None else None)
        self.engine.train()
        return out

    def _micro_loss(self, trajs: list[Trajectory], items: list[int], known: dict[int, tuple], features,
                    tis: list[bool], tis_cap: float) -> tuple[torch.Tensor, dict[str, float]]:
        """GRPO loss of the micro-batch `items` (indices into `trajs`): clipped ratio against the old
        log-probs, token-mean over the micro-batch, plus kl_coef x k3 KL to the reference. Stale samples
        under `tis` carry truncated importance weights min(pi_old / pi_behaviour, cap) on their sampled
        tokens. Old and reference log-probs come from `known`. A micro-batch of the step's first mini-batch
        is not there yet: no update has happened before it, so its old log-probs are this forward's own,
        detached (what a recomputation gives, for one forward fewer); they go into `known`, with the
        reference's, for the next epochs."""
        dev = self.engine.device
        batch = [trajs[i] for i in items]
        inputs = self._inputs(batch, features, items)
        mask = pad_rows([t.loss_mask for t in batch], 0, torch.float32).to(dev)
        logp, entropy = token_logprobs(self.engine, inputs, with_entropy=True, mask=mask)  # [B, T] each
        fresh = [i not in known for i in items]
        if any(fresh):
            if not all(fresh):
                raise RuntimeError(f"micro-batch {items} mixes recomputed and fresh samples")
            with torch.no_grad():
                ref_lp = token_logprobs(self.ref, inputs, mask=mask).float().cpu() if self.ref is not None else None
            own = logp.detach().float().cpu()
            for j, i in enumerate(items):
                n = len(trajs[i].token_ids)
                known[i] = (own[j, :n], ref_lp[j, :n] if ref_lp is not None else None)
        old, ref = [known[i][0] for i in items], [known[i][1] for i in items]
        old_b = pad_rows(old, 0.0, torch.float32).to(dev)
        weights = None
        if any(tis):
            behaviour = pad_rows([t.logprobs for t in batch], 0.0, torch.float32).to(dev)
            w = truncated_is_weights(old_b, torch.where(behaviour.isnan(), old_b, behaviour), tis_cap)
            weights = torch.where(torch.tensor(tis, device=dev)[:, None], w, torch.ones_like(w))
        adv = torch.tensor([t.advantage for t in batch], dtype=logp.dtype, device=dev)
        loss, m = policy_loss(logp, old_b.to(logp.dtype), adv, mask.to(logp.dtype), self.cfg.clip_low,
                              self.cfg.clip_high, self.cfg.dual_clip, weights)
        if self.ref is not None:
            kl = masked_mean(kl_k3(logp, pad_rows(ref, 0.0, torch.float32).to(dev).to(logp.dtype)), mask)
            loss = loss + self.cfg.kl_coef * kl
            m["kl"] = kl.item()
        m["entropy"] = masked_mean(entropy, mask).item()
        m["tokens"] = float(mask.sum().item())
        return loss, m

    def train_step(self, trajectories: list[Trajectory], max_staleness: int = 0, staleness_mode: str = "drop",
                   tis_cap: float = 2.0) -> dict[str, float]:
        """One rollout step (docs/algorithm.md §5): old and reference log-probs recomputed by the current weights, then
        `ppo_epochs` passes of one optimizer step per mini-batch of `mini_batch_size` sequences; the version
        goes up by one. Trajectories whose loss mask is all zero are never forwarded (they still count in
        their micro-batch, as in the released trainer); samples more than `max_staleness` versions behind
        are dropped (`drop`, treated like masked ones) or corrected with truncated importance weights
        (`tis`). Every rank must be given the same list."""
        if staleness_mode not in ("drop", "tis"):
            raise ValueError(f"staleness_mode must be 'drop' or 'tis', got {staleness_mode!r}")
        lag = [self.version - t.weight_version for t in trajectories]
        too_old = [g > max_staleness for g in lag]
        trainable = [any(t.loss_mask) and not (old and staleness_mode == "drop")
                     for t, old in zip(trajectories, too_old)]
        out = {"staleness_mean": sum(lag) / max(1, len(lag)), "staleness_max": float(max(lag, default=0)),
               "dropped_stale": float(sum(too_old) if staleness_mode == "drop" else 0),
               "tis_corrected": float(sum(o and tr for o, tr in zip(too_old, trainable)) if staleness_mode == "tis"
                                      else 0),
               "no_gradient": float(sum(not any(t.loss_mask) for t in trajectories))}
        lr = self._set_lr()
        lengths = self._lengths(trajectories)
        layouts = [minibatch_layout(len(trajectories), self.cfg.mini_batch_size, self.cfg.micro_batch_size,
                                    self.world_size, r, lengths) for r in range(self.world_size)]
        owned = [[i for mb in lay for micro in mb for i in micro if trainable[i]] for lay in layouts]
        layout, mine = layouts[self.rank], owned[self.rank]
        # Old log-probs are recomputed before any update for the mini-batches after the first only: the first
        # trains on unchanged weights, so its own forward gives them (`_micro_loss`).
        first = [{i for micro in lay[0] for i in micro} if lay else set() for lay in layouts]
        later = [[i for i in o if i not in f] for o, f in zip(owned, first)]
        forwards = -(-max(len(x) for x in later) // self.cfg.logprob_micro_batch_size)
        features = self._image_features(trajectories, mine)
        known = self._recompute(trajectories, later[self.rank], forwards, features)
        sums: dict[str, float] = {}
        micro_batches, updates = 0, 0
        tis = [o and staleness_mode == "tis" for o in too_old]

        def loss_of(items: list[int]):
            return self._micro_loss(trajectories, items, known, features, [tis[i] for i in items], tis_cap)

        for _ in range(self.cfg.ppo_epochs):
            for mb in layout:
                micro_batches += self._minibatch([[i for i in m if trainable[i]] for m in mb], loss_of, sums)
                updates += 1
        out |= self._mismatch(trajectories, known, lag)
        self.version += 1
        out |= {k: v / max(1, micro_batches) for k, v in sums.items()}
        out["tokens"] = sums.get("tokens", 0.0)
        out["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out["version"] = float(self.version)
        out["trained"] = float(sum(trainable))
        out["learner/updates"] = float(updates)
        out["optimizer_steps"] = float(self.engine.global_steps)  # DeepSpeed's own count, for cross-checking
        out["learner/lr"] = lr
        return out

    def _minibatch(self, micro: list[list[int]], loss_of, sums: dict[str, float], scale: float | None = None) -> int:
        """One optimizer step over a mini-batch's micro-batches (index lists; an empty one has nothing to train
        on this rank): token-mean loss per micro-batch, averaged over all of the mini-batch's micro-batches
        (empty ones count, as in the released trainer, and are skipped on one rank; with several ranks they
        run a zero-gradient dummy so collectives line up; a mini-batch with nothing at all still steps once).
        `scale`: each micro-batch's loss times this instead of / micro-batches (SFT: `sft_step`).
        Adds the micro-batch metrics to `sums`; returns how many micro-batches trained."""
        work = micro if self.world_size > 1 else ([m for m in micro if m] or [[]])
        ran = 0
        for items in work:
            if items:
                loss, m = loss_of(items)
                for key, v in m.items():
                    sums[key] = sums.get(key, 0.0) + v
                sums["loss"] = sums.get("loss", 0.0) + loss.item()
                ran += 1
            else:  # a zero gradient through the same hooks
                loss = self.engine(**self.inputs.dummy()).logits.sum() * 0.0
            self.engine.backward(loss / max(1, len(micro)) if scale is None else loss * scale, scale_wrt_gas=False)
        self.engine.step()
        return ran

    def _lengths(self, trajs: list[Trajectory]) -> list[int] | None:
        """Token counts for `minibatch_layout` when `length_buckets` is on, else None (the released order)."""
        return [len(t.token_ids) for t in trajs] if self.cfg.length_buckets else None

    # ---- supervised fine-tuning ------------------------------------------------------------------------
    def _set_lr(self) -> float:
        lr = SCHEDULES[self.cfg.schedule](self.cfg.lr, self.version, self.cfg.warmup_ratio, self.total_steps)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _nll(self, trajs: list[Trajectory]) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token loss of each example, its token-mean over its trained (assistant) tokens, summed over the
        micro-batch (`row_means`); the frozen tower's outputs come from the run's `sft_features`."""
        mask = pad_rows([t.loss_mask for t in trajs], 0, torch.float32).to(self.engine.device)
        idx = list(range(len(trajs)))
        inputs = self._inputs(trajs, self._image_features(trajs, idx, self.sft_features), idx)
        logp = token_logprobs(self.engine, inputs, mask=mask)
        mask = mask.to(logp.dtype)
        return row_means(-logp, mask).sum(), {"tokens": float(mask.sum().item())}

    def sft_step(self, examples: list[Trajectory]) -> dict[str, float]:
        """One optimizer step of supervised fine-tuning on `examples` (every rank gets the same list; each
        takes its round-robin share), `micro_batch_size` per forward. The loss is the mean over `examples` of
        each one's token mean (the released SFT's reduction, `row_means`): each micro-batch's sum of them is
        scaled by world_size / examples (DeepSpeed averages the ranks' gradients), so the update does not
        depend on how the examples are cut into micro-batches (`length_buckets`: tests/test_sft_speed.py)."""
        lr = self._set_lr()
        (micro,) = minibatch_layout(len(examples), 0, self.cfg.micro_batch_size, self.world_size, self.rank,
                                    self._lengths(examples)) or [[]]
        sums: dict[str, float] = {}
        self._minibatch(micro, lambda items: self._nll([examples[i] for i in items]), sums,
                        scale=self.world_size / max(1, len(examples)))
        self.version += 1
        mine = sum(len(m) for m in micro)
        return {"loss": sums.get("loss", 0.0) / max(1, mine), "tokens": sums.get("tokens", 0.0), "lr": lr,
                "grad_norm": float(self.engine.get_global_grad_norm() or 0.0), "step": float(self.version)}

    @torch.no_grad()
    def sft_eval(self, examples: list[Trajectory]) -> dict[str, float]:
        """Mean next-token loss over all trained tokens of `examples` (no gradient; this rank's share)."""
        self.engine.eval()
        total, tokens = 0.0, 0.0
        mine = [examples[i] for i in by_length(range(self.rank, len(examples), self.world_size), examples)]
        for k in range(0, len(mine), self.cfg.logprob_micro_batch_size):
            part = mine[k:k + self.cfg.logprob_micro_batch_size]
            mask = pad_rows([t.loss_mask for t in part], 0, torch.float32).to(self.engine.device)
            idx = list(range(len(part)))
            inputs = self._inputs(part, self._image_features(part, idx, self.sft_features), idx)
            logp = token_logprobs(self.engine, inputs, mask=mask)
            mask = mask.to(logp.dtype)
            total += float((-logp * mask).sum().item())
            tokens += float(mask.sum().item())
        self.engine.train()
        return {"val_loss": total / max(1.0, tokens), "val_tokens": tokens}

    @staticmethod
    def _mismatch(trajs: list[Trajectory], recomputed: dict[int, tuple], lag: list[int]) -> dict[str, float]:
        """Mean |log pi_learner - log pi_vllm| over the sampled, trained tokens of samples generated by the
        current weights: near 0 when the weight sync works (a sharp signal when it does not)."""
        total, n = 0.0, 0
        for i, (old, _) in recomputed.items():
            if lag[i] != 0:
                continue
            behaviour = torch.tensor(trajs[i].logprobs, dtype=torch.float32)
            sel = torch.tensor(trajs[i].loss_mask, dtype=torch.bool) & ~behaviour.isnan()
            total += (old[sel] - behaviour[sel]).abs().sum().item()
            n += int(sel.sum())
        return {"logp_mismatch": total / n} if n else {}

    # ---- weights out: sync, checkpoints, HF export (learner/checkpoint.py) ----------------------------------
    def state_dict(self, trained_only: bool = False) -> dict[str, torch.Tensor]:
        """Weights in HF parameter names, on CPU (under ZeRO-3 gathered group by group: call on every rank;
        only rank 0 gets them, the others {}). `trained_only`: only the parameters that train, what a weight
        sync sends (`checkpoint.export_weights`)."""
        return checkpoint.export_weights(self.engine, self.cfg.zero_stage, self.cfg.zero3_gather_mb, self.rank,
                                         trained_only)

    def save_state(self, path: str | Path) -> None:
        """A resumable checkpoint in `path` (`checkpoint.save_state`; call on every rank)."""
        checkpoint.save_state(self.engine, path, self.version)

    def load_state(self, path: str | Path) -> dict:
        """Go on from `save_state`'s checkpoint: weights, optimizer moments and step counters, version, RNG.
        Returns the client state. Call on every rank, with the ranks and ZeRO stage it was saved with."""
        client = checkpoint.load_state(self.engine, path)
        self.version = int(client["version"])
        return client

    def save_hf(self, path: str | Path) -> None:
        """Save the policy as an HF model dir with its processor: loadable by transformers and vLLM.
        Call on every rank (ZeRO-3 gathers); rank 0 writes."""
        checkpoint.save_hf(self.engine, self.state_dict(), path, self.model_path, self.rank)
