"""SFT examples: a sharegpt row (single- or multi-turn, as `vigorl linearize` / `to-multiturn` and LLaMA-Factory
write them) -> a `Trajectory` whose loss mask is 1 on assistant tokens only, so the RL learner's own code
(batching, image rebuilding, DeepSpeed stepping) trains it.

Rendering is Qwen2/2.5's chat format: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, `<image>`
-> `<|vision_start|><|image_pad|><|vision_end|>`, each `<|image_pad|>` then expanded to the image's token
count (its patch grid / 2x2 merge), as the processor and vLLM do. Trained: an assistant message's content
and its closing `<|im_end|>`; masked: `<|im_start|>assistant\\n`, the newline after `<|im_end|>`, every
system, user and observation token.
"""

from __future__ import annotations

import re
from pathlib import Path

from actors.trajectory import ImageRef, Trajectory
from data_gen.images import ImageError, load_rgb, resolve_under

_POINT = re.compile(r"\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)|\[\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


class BadRow(ValueError):
    """A row that cannot be trained on; the message names it, `reason` says why (one of `REASONS`)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# why a row is bad: counted by these names when `on_bad_row=skip` (console, MLflow `sft/skipped_rows/<reason>`)
REASONS = ("not_sharegpt", "image_count", "image_unreadable", "point_outside", "too_long", "no_assistant")


def encode_row(row: dict, data_dir: str | Path, tokenizer, image_processor, cutoff_len: int = 8192,
               where: str = "") -> Trajectory:
    """Raises BadRow naming the row (and its `reason`) for: no messages/images (not_sharegpt), `<image>` count
    != images (image_count), missing or unreadable images (image_unreadable), a point in an assistant turn
    outside the image, including one on its far border x == width or y == height (point_outside), more than
    `cutoff_len` tokens (too_long), no assistant token (no_assistant)."""
    qid = str(row.get("question_id", where))
    try:
        messages, paths = row["messages"], row["images"]
    except (KeyError, TypeError):
        raise BadRow(f"{where}: a sharegpt row needs 'messages' and 'images'", "not_sharegpt") from None
    n_placeholders = sum(str(m.get("content", "")).count("<image>") for m in messages)
    if n_placeholders != len(paths):
        raise BadRow(f"{where}: {n_placeholders} <image> placeholders but {len(paths)} images", "image_count")
    refs, images = [], []
    for k, rel in enumerate(paths):
        try:
            img = load_rgb(resolve_under(data_dir, rel))
        except ImageError as e:
            raise BadRow(f"{where}: {e}", "image_unreadable") from None
        size = tuple(row["image_size"]) if k == 0 and row.get("image_size") else img.size
        refs.append(ImageRef(rel, size[0], size[1]))
        images.append(img if img.size == size else img.resize(size))
    w, h = refs[0].width, refs[0].height
    for m in messages:
        if m.get("role") == "assistant":
            for g in _POINT.finditer(m["content"]):
                x, y = (int(v) for v in (g.group(1, 2) if g.group(1) is not None else g.group(3, 4)))
                if not (0 <= x < w and 0 <= y < h):
                    raise BadRow(f"{where}: point ({x}, {y}) in an assistant turn is outside the {w}x{h} image",
                                 "point_outside")
    grid = image_processor(images=images, return_tensors="pt")["image_grid_thw"] if images else []
    merge = getattr(image_processor, "merge_size", 2) ** 2
    counts = [int(g.prod()) // merge for g in grid]
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids, mask, turns = [], [], 0
    for m in messages:
        role, content = m["role"], str(m["content"]).replace("<image>", VISION)
        trained = role == "assistant"
        turns += trained
        for text, on in ((f"<|im_start|>{role}\n", False), (content + "<|im_end|>", trained), ("\n", False)):
            piece = tokenizer.encode(text, add_special_tokens=False)
            ids += piece
            mask += [int(on)] * len(piece)
    out_ids, out_mask, k = [], [], 0
    for t, m in zip(ids, mask):  # expand each image placeholder to its token count
        if t == pad:
            out_ids += [pad] * counts[k]
            out_mask += [0] * counts[k]
            k += 1
        else:
            out_ids.append(t)
            out_mask.append(m)
    if len(out_ids) > cutoff_len:
        raise BadRow(f"{where}: {len(out_ids)} tokens, over cutoff_len={cutoff_len}", "too_long")
    if not any(out_mask):
        raise BadRow(f"{where}: no assistant tokens to train on", "no_assistant")
    return Trajectory(episode_id=f"{qid}@{where}", group_id="", prompt_id=qid, weight_version=0, token_ids=out_ids,
                      loss_mask=out_mask, logprobs=[0.0] * len(out_ids), prompt_len=out_mask.index(1), reward=0.0,
                      reward_format=0.0, reward_accuracy=0.0, reward_coordinate=0.0, reward_diversity=0.0,
                      advantage=0.0, num_turns=turns, images=refs, end="sft")
