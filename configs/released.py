"""The released recipes' values for the config fields left null (`official_defaults`): group size, gradient
clip, warmup, mini-batch size per data.mode (docs/algorithm.md §5, following
`Gabesarch/grounded-rl@e7970c0:src/trainer/rl/examples/run_vigorl.sh`), and the image bounds of training
(§5) and of the released evaluation scripts (§8). Applied once per process, by the command line
(cluster/cli.py) right after the config loads; an explicit value always wins.
"""

from __future__ import annotations

from typing import TypeVar

from configs.jobs import EvalConfig
from configs.schema import DataConfig

T = TypeVar("T")

# run_vigorl.sh (Gabesarch/grounded-rl @e7970c0): MULTITURN=true overrides these (docs/algorithm.md §5).
OFFICIAL_SINGLE_TURN = dict(group_size=5, grad_clip=1.0, warmup_ratio=0.0, mini_batch_prompts=64)
OFFICIAL_MULTI_TURN = dict(group_size=8, grad_clip=0.2, warmup_ratio=0.05, mini_batch_sequences=64)
OFFICIAL_MAX_PIXELS = {("visual_search", "multi_turn"): 2_850_000}  # V* multi-turn (§5); everything else:
DEFAULT_MAX_PIXELS = 4_194_304
# The released evaluation scripts (docs/algorithm.md §8): images up to 3600 x 3600 px (eval_multiturn.sh,
# eval_web_grounding.sh); spatial caps the longer side at 1260 px (eval_spatial.sh), approximated here as
# 1260 x 1260 px.
EVAL_MAX_PIXELS = {"spatial": 1260 * 1260}
DEFAULT_EVAL_MAX_PIXELS = 3600 * 3600


def official_defaults(cfg: T) -> T:
    """Fill the fields left null with the released recipe's value for `data.task` / `data.mode`, in
    place; returns `cfg`. Explicit values always win."""
    from rewards import is_multi_turn

    if not isinstance(getattr(cfg, "data", None), DataConfig):  # no task / mode to take defaults from
        return cfg
    multi = is_multi_turn(cfg.data.mode)
    if cfg.model.max_pixels is None and isinstance(cfg, EvalConfig):
        cfg.model.max_pixels = EVAL_MAX_PIXELS.get(cfg.data.task, DEFAULT_EVAL_MAX_PIXELS)
    elif cfg.model.max_pixels is None:
        cfg.model.max_pixels = OFFICIAL_MAX_PIXELS.get((cfg.data.task, cfg.data.mode), DEFAULT_MAX_PIXELS)
    if not hasattr(cfg, "learner"):
        return cfg
    off = OFFICIAL_MULTI_TURN if multi else OFFICIAL_SINGLE_TURN
    if cfg.rollout.group_size is None:
        cfg.rollout.group_size = off["group_size"]
    if cfg.learner.grad_clip is None:
        cfg.learner.grad_clip = off["grad_clip"]
    if cfg.learner.warmup_ratio is None:
        cfg.learner.warmup_ratio = off["warmup_ratio"]
    if cfg.learner.mini_batch_size is None:
        cfg.learner.mini_batch_size = (off["mini_batch_sequences"] if multi
                                       else off["mini_batch_prompts"] * cfg.rollout.group_size)
    return cfg
