"""The GRPO learner: a DeepSpeed engine over a Qwen2.5-VL policy, a frozen reference model for the KL
term, PPO mini-batch updates on the trajectories of one rollout step, and versioned weights to publish.

CPU: fp32, gloo, torch AdamW (no DeepSpeed JIT CPU Adam). GPU: bf16, NCCL. One process per rank; with
several ranks, torch.distributed is initialised by the caller (Ray actors set the env:// variables).
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import torch

from actors.trajectory import Trajectory, rebuild_images
from configs.schema import LearnerConfig
from learner.grpo import kl_k3, masked_mean, policy_loss, truncated_is_weights
from learner.logprobs import batch_inputs, pad_rows, token_logprobs


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
    # a learner of one rank takes a fresh port: an inherited MASTER_PORT may be one a parent process still listens on
    inherited = os.environ.get("MASTER_PORT") if world_size > 1 else None
    os.environ["MASTER_PORT"] = str(master_port or inherited or free_port())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


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
DS_TAG = "learner"  # the tag (sub-directory) of a resumable checkpoint's DeepSpeed state


def minibatch_layout(n: int, mini_batch: int, micro_batch: int, world_size: int, rank: int,
                     lengths: list[int] | None = None) -> list[list[list[int]]]:
    """Rank `rank`'s micro-batches (trajectory indices) of each mini-batch: the n sequences in order, cut
    into mini-batches of `mini_batch` (0: one mini-batch), each dealt round-robin over the ranks and cut
    into micro-batches of `micro_batch`. Every rank gets the same number of micro-batches per mini-batch,
    ceil(ceil(len / world_size) / micro_batch), padded with empty ones, so that collectives line up.
    With `lengths` (tokens per sequence; `learner.length_buckets`), each mini-batch is ordered longest
    first (ties in order) before it is dealt, so a micro-batch holds sequences of similar length: less
    padding, and the ranks get similar token counts. The mini-batches themselves do not change."""
    mb = mini_batch or max(n, 1)
    out = []
    for start in range(0, n, mb):
        chunk = list(range(start, min(n, start + mb)))
        if lengths is not None:
            chunk.sort(key=lambda i: -lengths[i])
        mine = chunk[rank::world_size]
        per_rank = -(-len(chunk) // world_size)  # ceil: every rank runs as many micro-batches
        count = -(-per_rank // micro_batch)
        out.append([mine[i * micro_batch:(i + 1) * micro_batch] for i in range(count)])
    return out


def by_length(idx, trajs: list[Trajectory]) -> list[int]:
    """The indices `idx` longest sequence first (ties in order): micro-batches of no-grad forwards, whose
    results are per sequence, pad least this way."""
    return sorted(idx, key=lambda i: -len(trajs[i].token_ids))


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
                             "configs.schema.official_defaults(cfg) or set them")
        init_process_group(rank, world_size, master_addr, master_port)
        self.rank, self.world_size, self.total_steps = rank, world_size, total_steps
        gpu = torch.cuda.is_available()
        dtype = torch.bfloat16 if gpu else torch.float32
        self.cfg, self.root, self.version, self.model_path = cfg, Path(dataset_root), 0, str(model_path)
        processor = AutoProcessor.from_pretrained(model_path)
        self.image_processor, self.pad_id = processor.image_processor, processor.tokenizer.pad_token_id or 0
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
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
        self._dummy = None

    # ---- inputs ------------------------------------------------------------------------------------------
    def _inputs(self, trajs: list[Trajectory], features: dict | None = None, idx: list[int] | None = None) -> dict:
        """Forward inputs of `trajs`. With `features` (`_image_features` of the rollout step, keyed by the
        trajectory indices `idx`), the vision tower's cached outputs replace the pixels."""
        if features is None:
            images = [rebuild_images(t.images, self.root) for t in trajs]
            inputs = batch_inputs(trajs, images, self.image_processor, self.image_token_id, self.pad_id)
            return {k: v.to(self.engine.device) for k, v in inputs.items()}
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inputs = batch_inputs(trajs, [[] for _ in trajs], self.image_processor, self.image_token_id, self.pad_id)
        inputs = {k: v.to(self.engine.device) for k, v in inputs.items()}
        grids = [g for i in idx for g in features[i][0]]
        if grids:
            inputs["image_grid_thw"] = torch.stack(grids).to(self.engine.device)
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).to(torch.int32) * \
                inputs["attention_mask"].to(torch.int32)
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(
                pooler_output=tuple(f for i in idx for f in features[i][1]))}
        return inputs

    @torch.no_grad()
    def _image_features(self, trajs: list[Trajectory], idx: list[int]) -> dict[int, tuple[list, list]] | None:
        """The frozen vision tower's output for every image of the trajectories `idx`, computed once per
        distinct image (the G episodes of a prompt share its full image) per rollout step, and shared by the
        reference, old-log-prob and policy passes (each re-ran the tower on every copy before).
        {i: ([grid_thw [3] per image], [features [tokens_k, hidden] per image])}, on the learner's device.
        None (the pixels go through the tower in every forward) when the tower trains (`freeze_vision`
        off: its output changes with every update), under ZeRO-3 (its partitioned parameters are gathered
        inside the engine's forward only) or with `vision_cache` off."""
        if not (self.cfg.freeze_vision and self.cfg.vision_cache) or self.cfg.zero_stage == 3:
            return None

        def key(ref) -> tuple:  # what decides the pixels (a decoded point may be a list)
            return (ref.source, ref.width, ref.height, tuple(ref.point) if ref.point is not None else None,
                    ref.half_size, ref.out_size, ref.dot)

        refs = list({key(ref): ref for i in idx for ref in trajs[i].images}.values())  # distinct, in order
        cache: dict = {}
        model, lmb = self.engine.module.model, self.cfg.logprob_micro_batch_size
        for k in range(0, len(refs), lmb):
            part = refs[k:k + lmb]
            pix = self.image_processor(images=rebuild_images(part, self.root), return_tensors="pt")
            grid = pix["image_grid_thw"].to(self.engine.device)
            feats = model.get_image_features(pix["pixel_values"].to(self.engine.device), grid).pooler_output
            cache |= {key(ref): (g, f) for ref, g, f in zip(part, grid, feats)}
        return {i: ([cache[key(r)][0] for r in trajs[i].images], [cache[key(r)][1] for r in trajs[i].images])
                for i in idx}

    def _dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A one-image, few-token input: the forward/backward of a rank with nothing to train in a
        micro-batch, so that every rank runs the same collectives (ZeRO-2 reduces in each backward,
        ZeRO-3 gathers in each forward). The image gives the vision tower a gradient too (when trained)."""
        if self._dummy is None:
            from PIL import Image

            pix = self.image_processor(images=[Image.new("RGB", (56, 56))], return_tensors="pt")
            n = int(pix["image_grid_thw"].prod()) // 4  # 2x2 patch merge
            self._dummy = {"input_ids": torch.tensor([[self.image_token_id] * n + [self.pad_id]]),
                           "pixel_values": pix["pixel_values"], "image_grid_thw": pix["image_grid_thw"],
                           "mm_token_type_ids": torch.tensor([[1] * n + [0]], dtype=torch.int32)}
        return {k: v.to(self.engine.device) for k, v in self._dummy.items()}

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

    def _minibatch(self, micro: list[list[int]], loss_of, sums: dict[str, float]) -> int:
        """One optimizer step over a mini-batch's micro-batches (index lists; an empty one has nothing to train
        on this rank): token-mean loss per micro-batch, averaged over all of the mini-batch's micro-batches
        (empty ones count, as in the released trainer, and are skipped on one rank; with several ranks they
        run a zero-gradient dummy so collectives line up; a mini-batch with nothing at all still steps once).
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
                loss = self.engine(**self._dummy_inputs()).logits.sum() * 0.0
            self.engine.backward(loss / max(1, len(micro)), scale_wrt_gas=False)
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
        """Next-token loss, token-mean over the micro-batch's trained (assistant) tokens."""
        mask = pad_rows([t.loss_mask for t in trajs], 0, torch.float32).to(self.engine.device)
        logp = token_logprobs(self.engine, self._inputs(trajs), mask=mask)
        mask = mask.to(logp.dtype)
        return masked_mean(-logp, mask), {"tokens": float(mask.sum().item())}

    def sft_step(self, examples: list[Trajectory]) -> dict[str, float]:
        """One optimizer step of supervised fine-tuning on `examples` (every rank gets the same list; each
        takes its round-robin share), `micro_batch_size` per forward."""
        lr = self._set_lr()
        (micro,) = minibatch_layout(len(examples), 0, self.cfg.micro_batch_size, self.world_size, self.rank,
                                    self._lengths(examples)) or [[]]
        sums: dict[str, float] = {}
        ran = self._minibatch(micro, lambda items: self._nll([examples[i] for i in items]), sums)
        self.version += 1
        return {"loss": sums.get("loss", 0.0) / max(1, ran), "tokens": sums.get("tokens", 0.0), "lr": lr,
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
            logp = token_logprobs(self.engine, self._inputs(part), mask=mask)
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

    def state_dict(self, trained_only: bool = False) -> dict[str, torch.Tensor]:
        """Weights in HF parameter names, on CPU (under ZeRO-3 gathered group by group: call on every rank;
        only rank 0 gets them, the others {}). `trained_only` leaves out the parameters that never train (the
        vision tower with `freeze_vision`): what a weight sync must send, since the engines loaded them from
        the same model dir and vLLM keeps a layer's weights when a reload brings none for it (README)."""
        module = self.engine.module
        # A tied weight (lm_head = embed_tokens, Qwen2.5-VL-3B) has two names. An HF export keeps both (save_pretrained
        # de-duplicates); a sync sends it once, under its first name, the embedding's, which is the one vLLM loads:
        # its Qwen2 loader skips `lm_head.*` when tied, and the NCCL receiver, loading one tensor at a time, raises
        # when the alias arrives without its original.
        named = {n: p for n, p in module.named_parameters(remove_duplicate=trained_only)
                 if p.requires_grad or not trained_only}
        if self.cfg.zero_stage == 3:
            return self._gathered(module, named, trained_only)
        return {k: v.detach().cpu() for k, v in module.state_dict().items() if k in named or not trained_only}

    def _gathered(self, module, named: dict, trained_only: bool) -> dict[str, torch.Tensor]:
        """ZeRO-3: the full weights on rank 0's CPU ({} on the other ranks), gathered `zero3_gather_mb` of
        parameters at a time (a few layers), each group copied out and released before the next: no rank
        holds the whole model on its device at once, and only rank 0 keeps a CPU copy. Collective: every
        rank must call it with the same parameters."""
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        groups, size = [[]], 0
        for name, p in named.items():
            nbytes = getattr(p, "ds_numel", p.numel()) * p.element_size()
            if groups[-1] and size + nbytes > self.cfg.zero3_gather_mb * 2**20:
                groups.append([])
                size = 0
            groups[-1].append((name, p))
            size += nbytes
        for group in groups:
            unique = list({id(p): p for _, p in group}.values())
            with deepspeed.zero.GatheredParameters(unique, modifier_rank=None):
                if self.rank == 0:
                    out |= {name: p.detach().cpu().clone() for name, p in group}
        if self.rank == 0 and not trained_only:  # buffers are not partitioned
            out |= {k: v.detach().cpu().clone() for k, v in module.state_dict(keep_vars=True).items() if k not in named}
        return out

    def save_state(self, path: str | Path) -> None:
        """A resumable checkpoint in `path`: DeepSpeed's module, optimizer and step counters (every rank
        writes its ZeRO partition; call on every rank), with this learner's version and torch RNG as
        client state."""
        client = {"version": self.version, "torch_rng": torch.get_rng_state()}
        self.engine.save_checkpoint(str(path), tag=DS_TAG, client_state=client)

    def load_state(self, path: str | Path) -> dict:
        """Go on from `save_state`'s checkpoint: weights, optimizer moments and step counters, version, RNG.
        Returns the client state. Call on every rank, with the ranks and ZeRO stage it was saved with."""
        loaded, client = self.engine.load_checkpoint(str(path), tag=DS_TAG, load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint '{DS_TAG}' to load")
        self.version = int(client["version"])
        torch.set_rng_state(client["torch_rng"])
        return client

    def save_hf(self, path: str | Path) -> None:
        """Save the policy as an HF model dir with its processor: loadable by transformers and vLLM.
        Call on every rank (ZeRO-3 gathers); rank 0 writes."""
        from transformers import AutoProcessor

        state = self.state_dict()
        if self.rank == 0:
            self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
            AutoProcessor.from_pretrained(self.model_path).save_pretrained(path)
