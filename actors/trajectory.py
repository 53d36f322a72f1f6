"""The one record that crosses the actor -> learner boundary: a scored episode.

Rollout actors build a `Trajectory` per episode and ship lists of them as Arrow record batches
(`to_batch`), through the Ray object store; the learner reads them back (`from_batch`). The Arrow schema
is derived from this dataclass (data_gen.records); there is no second definition of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import pyarrow as pa

from data_gen import records


@dataclass
class ImageRef:
    """An image of the episode, by reference: the learner rebuilds pixels without shipping them twice.
    The full image is the source resized to (width, height); a crop is `data_gen.geometry.crop(full, point,
    half_size, out_size, dot)` and its box `data_gen.geometry.crop_box(point, (width, height), half_size)`."""

    source: str  # dataset-relative path of the original image, or "sha256:<hex>" of its bytes
    width: int  # size of the full image as the model saw it (after smart_resize), px
    height: int
    point: tuple[int, int] | None = None  # zoom point on the full image; None for the full image itself
    half_size: int = 0  # crop half side o (docs/algorithm.md §3)
    out_size: int = 0  # crop output side r before smart_resize rounding
    dot: bool = False  # a red dot was drawn at the zoom point


@dataclass
class Trajectory:
    """One episode. Per-token arrays (token_ids, loss_mask, logprobs) have one length: prompt + response.

    loss_mask is 1 on trained tokens: those the policy generated, the `<|im_end|>` closing each assistant
    turn, the forced answer prefix; 0 on prompt, observation, image and chat-template tokens. A trajectory
    cut by a token limit is masked entirely (docs/algorithm.md §5). logprobs are the behaviour policy's (vLLM's) for
    sampled tokens (also in a masked, cut episode), NaN for the tokens the environment forced and trains (no
    policy sampled them), 0.0 on prompt and observation tokens."""

    episode_id: str  # unique per episode (the ledger's key)
    group_id: str  # the G episodes of one prompt share it; advantages are normalised within it
    prompt_id: str  # dataset row id
    weight_version: int  # policy version the episode was generated under
    token_ids: Annotated[list[int], pa.list_(pa.int32())]  # [T]
    loss_mask: Annotated[list[int], pa.list_(pa.int8())]  # [T]
    logprobs: Annotated[list[float], pa.list_(pa.float32())]  # [T]
    prompt_len: int  # tokens of the first prompt (system + user + full image)
    reward: float  # rewards.score(...).overall
    reward_format: float
    reward_accuracy: float
    reward_coordinate: float
    reward_diversity: float
    advantage: float  # group-normalised, computed where the rollout was scored
    num_turns: int  # assistant turns
    points: list[tuple[int, int]] = field(default_factory=list)  # tool-call / think-step points, in order
    images: list[ImageRef] = field(default_factory=list)  # full image first, then crops in order
    end: str = ""  # how the episode ended (actors.zoom.End value)
    seconds: float = 0.0  # wall time from the start of the actor's batch to this episode's end

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if len(self.loss_mask) != n or len(self.logprobs) != n:
            raise ValueError(f"episode {self.episode_id}: per-token arrays differ in length "
                             f"(token_ids {n}, loss_mask {len(self.loss_mask)}, logprobs {len(self.logprobs)})")
        if not 0 <= self.prompt_len <= n:
            raise ValueError(f"episode {self.episode_id}: prompt_len {self.prompt_len} outside [0, {n}]")


SCHEMA = records.schema_of(Trajectory)


def to_batch(trajectories: list[Trajectory]) -> pa.RecordBatch:
    return records.to_batch(trajectories, Trajectory)


def from_batch(batch: pa.RecordBatch | pa.Table) -> list[Trajectory]:
    return records.from_batch(batch, Trajectory)


def rebuild_images(refs: list[ImageRef], root: str | Path) -> list:
    """The images the model saw, in order: the full image (resized as the actor did), then its crops. Used
    by the learner (its forward pass) and by the episode pictures."""
    from PIL import Image

    from data_gen.geometry import crop
    from data_gen.images import load_rgb, resolve_under

    out, full_cache = [], {}
    for ref in refs:
        key = (ref.source, ref.width, ref.height)
        if key not in full_cache:
            img = load_rgb(resolve_under(root, ref.source))
            if img.size != (ref.width, ref.height):
                img = img.resize((ref.width, ref.height), Image.Resampling.BICUBIC)
            full_cache[key] = img
        full = full_cache[key]
        out.append(full if ref.point is None else crop(full, ref.point, ref.half_size, ref.out_size, ref.dot))
    return out
