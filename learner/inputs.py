"""The learner's batches and forward inputs: which trajectories each rank's micro-batches hold
(`minibatch_layout`), the tensors a Qwen2.5-VL forward takes for them, with the episode's images rebuilt from
their references (`actors.trajectory.rebuild_images`), and the vision cache: the frozen vision tower run once
per distinct image of a rollout step (`InputBuilder`), or once per image for a whole SFT run (`FeatureCache`).

Shapes: a micro-batch of B trajectories is right-padded to [B, T] (T = the longest); per-token rows
(loss masks, log-probs) are padded the same way (`pad_rows`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from actors.trajectory import Trajectory, rebuild_images


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


def model_inputs(traj: Trajectory, images: list[Image.Image], image_processor,
                 image_token_id: int) -> dict[str, torch.Tensor]:
    """Forward-pass inputs of one trajectory: input_ids [1, T] plus the image fields (`batch_inputs`)."""
    return batch_inputs([traj], [images], image_processor, image_token_id)


def pad_rows(rows: list, value: float, dtype: torch.dtype) -> torch.Tensor:
    """Right-pad per-token lists (or 1-D tensors) to one [B, T_max] tensor."""
    n = max(len(r) for r in rows)
    out = torch.full((len(rows), n), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def batch_inputs(trajs: list[Trajectory], images: list[list[Image.Image]], image_processor,
                 image_token_id: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Forward-pass inputs of a micro-batch: input_ids and attention_mask [B, T] (right-padded),
    pixel_values / image_grid_thw of every image of every trajectory, in order (the model fills the image
    tokens of the batch row by row in that order), and mm_token_type_ids [B, T] (1 on the image tokens,
    `image_token_id`: the tokenizer's `<|image_pad|>`).

    Why mm_token_type_ids: Qwen2.5-VL places image tokens at 3-D (t, h, w) rotary positions and the text
    after an image at max + 1 (M-RoPE), as vLLM does when it generates. transformers >= 5 computes those
    positions only when it is given the token types; without them it silently falls back to 1-D positions,
    and a trained model's log-probs then differ from vLLM's by ~0.2-0.4 nats per token (measured on the
    caption-pretrained base of `make learn`): the learner would train a model other than the one served."""
    ids = pad_rows([t.token_ids for t in trajs], pad_id, torch.long)
    attn = pad_rows([[1] * len(t.token_ids) for t in trajs], 0, torch.long)
    flat = [im for ims in images for im in ims]
    out = {"input_ids": ids, "attention_mask": attn}
    if flat:
        pix = image_processor(images=flat, return_tensors="pt")
        out |= {"pixel_values": pix["pixel_values"], "image_grid_thw": pix["image_grid_thw"],
                "mm_token_type_ids": (ids == image_token_id).to(torch.int32) * attn.to(torch.int32)}
    return out


def image_key(ref) -> tuple:
    """What decides an image reference's pixels (a decoded point may be a list)."""
    return (ref.source, ref.width, ref.height, tuple(ref.point) if ref.point is not None else None,
            ref.half_size, ref.out_size, ref.dot)


class FeatureCache:
    """A frozen vision tower's outputs kept across steps (`image_key` -> (grid_thw [3], features [tokens,
    hidden])), in host memory, up to `max_mb` MiB per learner rank: once full, further images are run through the tower at each
    use (with the reshuffled passes of an SFT run, evicting the oldest would only trade one miss for another)."""

    def __init__(self, max_mb: float):
        self.max_bytes, self.bytes, self.entries = max_mb * 2**20, 0, {}

    def get(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.entries.get(key)

    def put(self, key: tuple, grid: torch.Tensor, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if key not in self.entries and self.bytes + size <= self.max_bytes:
            # copies: a batch's features are views of one tensor, which a kept view would keep whole
            self.entries[key] = (grid.to("cpu", copy=True), feats.to("cpu", copy=True))
            self.bytes += size


class InputBuilder:
    """Forward inputs of one learner rank: its processor's image fields and token ids, its dataset root (where
    image references resolve), its device."""

    def __init__(self, processor, root: str | Path, device):
        self.image_processor, self.pad_id = processor.image_processor, processor.tokenizer.pad_token_id or 0
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.root, self.device = Path(root), device
        self._dummy: dict[str, torch.Tensor] | None = None

    def __call__(self, trajs: list[Trajectory], features: dict | None = None,
                 idx: list[int] | None = None) -> dict:
        """Forward inputs of `trajs`, on the device. With `features` (`image_features` of the rollout step,
        keyed by the trajectory indices `idx`), the vision tower's cached outputs replace the pixels."""
        if features is None:
            images = [rebuild_images(t.images, self.root) for t in trajs]
            inputs = batch_inputs(trajs, images, self.image_processor, self.image_token_id, self.pad_id)
            return {k: v.to(self.device) for k, v in inputs.items()}
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inputs = batch_inputs(trajs, [[] for _ in trajs], self.image_processor, self.image_token_id, self.pad_id)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        grids = [g for i in idx for g in features[i][0]]
        if grids:
            inputs["image_grid_thw"] = torch.stack(grids).to(self.device)
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).to(torch.int32) * \
                inputs["attention_mask"].to(torch.int32)
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(
                pooler_output=tuple(f for i in idx for f in features[i][1]))}
        return inputs

    @torch.no_grad()
    def image_features(self, model, trajs: list[Trajectory], idx: list[int], micro_batch: int,
                       kept: FeatureCache | None = None) -> dict[int, tuple[list, list]]:
        """The vision tower's output (`model`: the Qwen2.5-VL inner model, whose `get_image_features` runs it)
        for every image of the trajectories `idx`, computed once per distinct image (the G episodes of a prompt
        share its full image) per call, `micro_batch` images per tower call, and shared by the reference,
        old-log-prob and policy passes (each re-ran the tower on every copy before). `kept`: outputs kept
        across calls (SFT: every step of the run reuses them); what it holds is not run again.
        {i: ([grid_thw [3] per image], [features [tokens_k, hidden] per image])}, on the device. Valid while
        the tower does not change: the caller decides when (`Learner._image_features`)."""
        refs = list({image_key(ref): ref for i in idx for ref in trajs[i].images}.values())  # distinct, in order
        cache: dict = {}
        todo = []
        for ref in refs:
            hit = kept.get(image_key(ref)) if kept is not None else None
            if hit is None:
                todo.append(ref)
            else:
                cache[image_key(ref)] = tuple(x.to(self.device) for x in hit)
        for k in range(0, len(todo), micro_batch):
            part = todo[k:k + micro_batch]
            pix = self.image_processor(images=rebuild_images(part, self.root), return_tensors="pt")
            grid = pix["image_grid_thw"].to(self.device)
            feats = model.get_image_features(pix["pixel_values"].to(self.device), grid).pooler_output
            for ref, g, f in zip(part, grid, feats):
                cache[image_key(ref)] = (g, f)
                if kept is not None:
                    kept.put(image_key(ref), g, f)
        return {i: ([cache[image_key(r)][0] for r in trajs[i].images], [cache[image_key(r)][1] for r in trajs[i].images])
                for i in idx}

    def dummy(self) -> dict[str, torch.Tensor]:
        """A one-image, few-token input: the forward/backward of a rank with nothing to train in a
        micro-batch, so that every rank runs the same collectives (ZeRO-2 reduces in each backward,
        ZeRO-3 gathers in each forward). The image gives the vision tower a gradient too (when trained)."""
        if self._dummy is None:
            pix = self.image_processor(images=[Image.new("RGB", (56, 56))], return_tensors="pt")
            n = int(pix["image_grid_thw"].prod()) // 4  # 2x2 patch merge
            self._dummy = {"input_ids": torch.tensor([[self.image_token_id] * n + [self.pad_id]]),
                           "pixel_values": pix["pixel_values"], "image_grid_thw": pix["image_grid_thw"],
                           "mm_token_type_ids": torch.tensor([[1] * n + [0]], dtype=torch.int32)}
        return {k: v.to(self.device) for k, v in self._dummy.items()}
