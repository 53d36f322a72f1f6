"""SFT examples: a sharegpt row (single- or multi-turn, as `vigorl linearize` / `to-multiturn` and LLaMA-Factory
write them) -> a `Trajectory` whose loss mask is 1 on assistant tokens only, so the RL learner's own code
(batching, image rebuilding, DeepSpeed stepping) trains it.

The chat is rendered by the checkpoint's own chat template (`apply_chat_template`; for Qwen2/2.5-VL
`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, its default system prompt when the row has none, as
LLaMA-Factory's qwen2_vl template adds it), each `<image>` placeholder an image content part (the template
writes `<|vision_start|><|image_pad|><|vision_end|>`), each `<|image_pad|>` then expanded to the image's token
count (its patch grid / 2x2 merge), as the processor and vLLM do. The loss mask is derived from the template
(`render_chat`). Trained: an assistant message's content and its closing `<|im_end|>`; masked:
`<|im_start|>assistant\\n`, the newline after `<|im_end|>`, every system, user and observation token.
"""

from __future__ import annotations

import re
from pathlib import Path

from actors.trajectory import ImageRef, Trajectory
from data_gen.images import ImageError, load_rgb, resolve_under

_POINT = re.compile(r"\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)|\[\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")


class BadRow(ValueError):
    """A row that cannot be trained on; the message names it, `reason` says why (one of `REASONS`)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# why a row is bad: counted by these names when `on_bad_row=skip` (console, MLflow `sft/skipped_rows/<reason>`)
REASONS = ("not_sharegpt", "image_count", "image_unreadable", "point_outside", "too_long", "no_assistant")


def _parts(content: str) -> str | list[dict]:
    """A message's text -> the template's content: a list of text and image parts where it has `<image>`
    placeholders (as EasyR1 and transformers' processors build it), else the text itself."""
    if "<image>" not in content:
        return content
    out: list[dict] = []
    for k, text in enumerate(content.split("<image>")):
        if k:
            out.append({"type": "image"})
        if text:
            out.append({"type": "text", "text": text})
    return out


def render_chat(messages: list[dict], tokenizer, chat_template: str | None = None) -> tuple[list[int], list[int], str]:
    """(ids, loss mask, text) of a chat rendered by `chat_template` (default: the tokenizer's) and tokenized as one
    text, as `apply_chat_template(..., tokenize=True)` does. The mask comes from the template itself, not from
    knowing its markup: assistant message i spans the text the template adds from the chat up to it with the
    generation prompt (ending `<|im_start|>assistant\\n`) to the chat including it, less the whitespace after its
    end-of-turn token; a token overlapping such a span is trained. Raises ValueError for a template that does not
    render a chat's beginning as a prefix of the whole (then no span can be found)."""
    chat = [{"role": m["role"], "content": _parts(str(m["content"]))} for m in messages]

    def text(n: int, generation: bool) -> str:
        return tokenizer.apply_chat_template(chat[:n], chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=generation)

    full, spans = text(len(chat), False), []
    for i, m in enumerate(chat):
        if m["role"] != "assistant":
            continue
        before, upto = text(i, True), text(i + 1, False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ValueError(f"the chat template does not render message {i} (assistant) as an extension of the "
                             "messages before it, so its tokens cannot be found")
        spans.append((len(before), len(upto.rstrip())))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a < e and b > s for s, e in spans)) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask, full


def encode_row(row: dict, data_dir: str | Path, tokenizer, image_processor, cutoff_len: int = 8192,
               where: str = "", chat_template: str | None = None) -> Trajectory:
    """`row`: {"messages": [{role, content}], "images": [...], optional question_id, image_size}, images under
    `data_dir` (or `sha256:` sources); rendered with `chat_template` (the checkpoint's; default the tokenizer's).
    Raises BadRow naming the row (and its `reason`) for: no messages/images (not_sharegpt), `<image>` count
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
    w, h = (refs[0].width, refs[0].height) if refs else (0, 0)
    for m in messages if refs else []:  # a text-only row has no image to point into
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
    from jinja2 import TemplateError

    try:
        ids, mask, _ = render_chat(messages, tokenizer, chat_template)
    except (ValueError, KeyError, TypeError, TemplateError) as e:  # a message without role / content, a rendering
        # that is not prefix-stable, the template's own raise_exception
        raise BadRow(f"{where}: the chat template cannot render this row: {e}", "not_sharegpt") from None
    turns = sum(m.get("role") == "assistant" for m in messages)
    if ids.count(pad) != len(counts):
        raise BadRow(f"{where}: the chat template wrote {ids.count(pad)} image placeholders for {len(counts)} images",
                     "image_count")
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
