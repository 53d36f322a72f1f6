"""A picture of one grounded episode: the full image with its numbered points and crop boxes, the crops
beside it, and the turns' text underneath. For the demo's output, the training run's first episode and
MLflow images (`show_first_episode`, `episode_figure`), and the evaluation gallery."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GOLD = (0, 200, 0)
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def episode_picture(image: Image.Image, points: list[tuple[int, int]], boxes: list[tuple[int, int, int, int]],
                    crops: list[Image.Image], lines: list[str], thumb: int = 224, width_chars: int = 110,
                    gold_box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """points, boxes and gold_box (drawn green) in `image`'s pixels; crops in the order they were taken."""
    font = ImageFont.load_default(size=14)
    full = image.convert("RGB").copy()
    draw = ImageDraw.Draw(full)
    if gold_box is not None:
        draw.rectangle(gold_box, outline=GOLD, width=max(3, max(full.size) // 200))
    for i, box in enumerate(boxes):
        draw.rectangle(box, outline=PALETTE[i % len(PALETTE)], width=3)
    for i, (x, y) in enumerate(points):
        c = PALETTE[i % len(PALETTE)]
        draw.ellipse((x - 9, y - 9, x + 9, y + 9), fill=c, outline=(255, 255, 255), width=2)
        draw.text((x, y), str(i + 1), fill=(255, 255, 255), font=font, anchor="mm")
    scale = min(1.0, 640 / max(full.size))
    full = full.resize((max(1, int(full.width * scale)), max(1, int(full.height * scale))))
    text = "\n".join(w for line in lines for w in (textwrap.wrap(line, width_chars) or [""]))
    text_h = 18 * (text.count("\n") + 1) + 10
    crops_w = (thumb + 8) * max(1, min(len(crops), 2))
    rows_of_crops = (len(crops) + 1) // 2
    width = full.width + 16 + crops_w
    height = max(full.height, rows_of_crops * (thumb + 24)) + text_h + 16
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(full, (8, 8))
    cd = ImageDraw.Draw(canvas)
    for i, c in enumerate(crops):
        x = full.width + 16 + (i % 2) * (thumb + 8)
        y = 8 + (i // 2) * (thumb + 24)
        canvas.paste(c.convert("RGB").resize((thumb, thumb)), (x, y + 18))
        cd.text((x, y), f"crop {i + 1} at {points[i] if i < len(points) else '?'}", fill=PALETTE[i % len(PALETTE)],
                font=font)
    cd.multiline_text((8, height - text_h), text, fill=(0, 0, 0), font=font, spacing=4)
    return canvas


def episode_figure(batch, tokenizer, data_root: str, k: int = 1) -> Image.Image:
    """A picture of the first `k` episodes of `batch` (an Arrow record batch of trajectories), stacked: points
    and crops on each image, turns as text (for the training run's MLflow images)."""
    from actors.rollout import transcript
    from actors.trajectory import from_batch, rebuild_images
    from data_gen.geometry import crop_box

    panels = []
    for t in from_batch(batch.slice(0, k)):
        images = rebuild_images(t.images, data_root)
        boxes = [crop_box(r.point, (r.width, r.height), r.half_size) for r in t.images[1:]]
        text = transcript(tokenizer, t.token_ids, t.prompt_len)
        lines = [f"prompt {t.prompt_id}  version {t.weight_version}  reward {t.reward:.2f} "
                 f"(acc {t.reward_accuracy:.2f}, format {t.reward_format:.2f})  end={t.end}"] + text.split("\n")[:60]
        panels.append(episode_picture(images[0], t.points, boxes, images[1:], lines))
    canvas = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), (255, 255, 255))
    y = 0
    for p in panels:
        canvas.paste(p, (0, y))
        y += p.height
    return canvas


def show_first_episode(batch, tokenizer, data_root: str, out: Path) -> str:
    """Save the batch's first episode's picture and crops in `out`; returns the episode in full, as text."""
    from actors.rollout import transcript
    from actors.trajectory import from_batch, rebuild_images

    t = from_batch(batch.slice(0, 1))[0]
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(rebuild_images(t.images, data_root)[1:]):
        img.save(out / f"crop_{i + 1}.png")
    episode_figure(batch, tokenizer, data_root).save(out / "episode.png")
    text = transcript(tokenizer, t.token_ids, t.prompt_len)
    return (f"\n=== first episode: prompt {t.prompt_id}, weight version {t.weight_version} ===\n{text}\n"
            f"--- zoom points {t.points}; reward {t.reward:.3f} (accuracy {t.reward_accuracy:.2f}, format "
            f"{t.reward_format:.2f}, diversity {t.reward_diversity:.2f}); end={t.end}; advantage {t.advantage:+.3f}\n"
            f"--- picture and crops in {out}/\n")
