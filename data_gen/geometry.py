"""Crop geometry of the zoom environment (docs/algorithm.md §3): Qwen's smart_resize, the image the model sees,
the crop box at a point and its observation image, and the text the environment inserts (observation turns, the
forced answer prefix, docs/algorithm.md §2). Pure and deterministic: the rollout's episode state machine
(`actors.zoom`) and the MCTS -> SFT data builders (`data_gen.traces`) both crop with it.

Coordinates are integer pixels on the image as the model sees it (after smart_resize). A crop is always
taken from that full resized image, never from a previous crop.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from rewards.parse import Point

# qwen-vl-utils defaults (vision_process.py).
IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200

# The start the environment writes for the last allowed turn, the image budget reached (docs/algorithm.md §2).
FORCED_ANSWER_PREFIX = ("<think> Based on all the information I've gathered, I'll now provide my final "
                        "answer. </think>\n<answer>")
DOT_RADIUS, DOT_OUTLINE = 7, 2


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(h, w) with both sides multiples of `factor`, pixel count in [min_pixels, max_pixels], aspect kept.
    Same arithmetic as qwen-vl-utils `smart_resize` (Python's round: ties to even)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, "
                         f"got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_for_model(image: Image.Image, min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image the model sees: RGB, smart-resized. Points are read on this image."""
    h, w = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    image = image.convert("RGB")
    return image if image.size == (w, h) else image.resize((w, h), Image.Resampling.BICUBIC)


def clamp_point(point: Point, image_size: tuple[int, int]) -> Point:
    """Move a point into the image ([0, W-1] x [0, H-1]); identity for points inside."""
    w, h = image_size
    return min(max(point[0], 0), w - 1), min(max(point[1], 0), h - 1)


def _clipped_box(point: Point, image_size: tuple[int, int], half_size: int) -> tuple[int, int, int, int]:
    (x, y), (w, h) = point, image_size
    return max(0, x - half_size), max(0, y - half_size), min(w, x + half_size), min(h, y + half_size)


def crop_point(point: Point, image_size: tuple[int, int], half_size: int) -> Point:
    """The point the crop is taken at: the model's point as written, even outside the image (the released
    rollout applies the box formula to it unchanged); only when the clipped box would be empty is the
    point clamped into the image (the released code then crops a degenerate 1-px box; docs/algorithm.md §3)."""
    x1, y1, x2, y2 = _clipped_box(point, image_size, half_size)
    return point if x2 > x1 and y2 > y1 else clamp_point(point, image_size)


def crop_box(point: Point, image_size: tuple[int, int], half_size: int) -> tuple[int, int, int, int]:
    """`(max(0, x-o), max(0, y-o), min(W, x+o), min(H, y+o))` — clipped at the borders, not shifted
    inside (docs/algorithm.md §3); a point at (W, H) gives (W-o, H-o, W, H). Never empty (see `crop_point`)."""
    return _clipped_box(crop_point(point, image_size, half_size), image_size, half_size)


def crop(image: Image.Image, point: Point, half_size: int, out_size: int, dot: bool = False) -> Image.Image:
    """The observation for a zoom at `point` on `image` (the full resized image): the clipped box, an
    optional red dot at the point (radius 7, white outline 2; it may fall outside a border crop, as in the
    released code), resized to a square whose side is out_size rounded by smart_resize (512 -> 504). One
    resize, straight to the final size."""
    x, y = crop_point(point, image.size, half_size)
    box = _clipped_box((x, y), image.size, half_size)
    region = image.convert("RGB").crop(box)
    if dot:
        cx, cy = x - box[0], y - box[1]
        ImageDraw.Draw(region).ellipse(
            (cx - DOT_RADIUS, cy - DOT_RADIUS, cx + DOT_RADIUS, cy + DOT_RADIUS),
            fill=(255, 0, 0), outline=(255, 255, 255), width=DOT_OUTLINE)
    side, _ = smart_resize(out_size, out_size)
    return region.resize((side, side), Image.Resampling.BICUBIC)


def observation_text(dot: bool) -> tuple[str, str]:
    """The observation user turn, as the text before and after its image (docs/algorithm.md §2)."""
    head = "<observation>\nHere is the crop of the image centered on the coordinate"
    if dot:
        head += ", with a red dot at the coordinate location"
    return head + ":\n", "\n</observation>"
