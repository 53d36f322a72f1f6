"""The zoom environment core: Qwen's smart_resize, crop geometry (docs/algorithm.md §3), observation turns, and the
episode state machine of multi-turn ViGoRL (docs/algorithm.md §2). Pure and deterministic; no vLLM here.

Coordinates are integer pixels on the image as the model sees it (after smart_resize). A crop is always
taken from that full resized image, never from a previous crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from PIL import Image, ImageDraw

from rewards.parse import Point, parse_tool_call, strip_end

# qwen-vl-utils defaults (vision_process.py).
IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200

FORCED_ANSWER_PREFIX = ("<think> Based on all the information I've gathered, I'll now provide my final "
                        "answer. </think>\n<answer>")
STOP_STRINGS = ("</tool_call>", "</answer>", "<|im_end|>")
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


@dataclass(frozen=True)
class ZoomSettings:
    """Crop settings per recipe (docs/algorithm.md §3 table)."""

    half_size: int = 182  # o: half side of the crop box, px on the resized image
    out_size: int = 672  # r: crops are resized to r x r (then smart_resize-rounded)
    dot: bool = False  # draw a red dot at the zoom point
    max_images: int = 5  # full image + 4 crops


PRESETS = {
    "web_grounding_rl": ZoomSettings(half_size=50, out_size=384, dot=True),
    "web_grounding_eval": ZoomSettings(half_size=100, out_size=512, dot=True),
    "visual_search": ZoomSettings(half_size=182, out_size=672, dot=False),
}


class End(str, Enum):
    ANSWER = "answer"  # the turn ended with </answer>
    MALFORMED_TOOL_CALL = "malformed_tool_call"
    NO_ACTION = "no_action"  # neither a tool call nor an answer (includes running out of tokens)
    FORCED = "forced_answer_incomplete"  # the forced answer turn did not close </answer>


@dataclass
class Step:
    """What the environment decided after one assistant turn."""

    done: bool
    end: End | None = None
    crop: Image.Image | None = None  # the observation image when not done
    point: Point | None = None
    box: tuple[int, int, int, int] | None = None
    force_prefix: str = ""  # text the next assistant turn must start with (image budget reached)
    error: str = ""


@dataclass
class ZoomEpisode:
    """State machine of one multi-turn episode. Feed it each assistant turn's text (as generated, stop
    string kept, including any forced prefix the environment asked for); it answers with a Step.

    turn → `<tool_call>{json}</tool_call>`: crop observation (or forced-answer prefix when this crop fills
    the image budget) · `</answer>`: done · malformed tool call / no action: done."""

    image: Image.Image  # the full image as the model sees it (already smart-resized)
    settings: ZoomSettings = field(default_factory=ZoomSettings)
    points: list[Point] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    end: End | None = None
    forced: bool = False

    @property
    def n_images(self) -> int:
        return 1 + len(self.boxes)

    @property
    def done(self) -> bool:
        return self.end is not None

    def step(self, turn: str) -> Step:
        if self.done:
            raise RuntimeError(f"episode already ended ({self.end.value}); no more turns")
        self.turns.append(turn)
        text = strip_end(turn)
        if text.endswith("</answer>"):
            return self._finish(End.ANSWER)
        if self.forced:
            return self._finish(End.FORCED, "the forced answer did not end with </answer>")
        if text.endswith("</tool_call>"):
            start = text.rfind("<tool_call>")
            call = parse_tool_call(text[start + len("<tool_call>"): -len("</tool_call>")]) if start >= 0 else None
            if call is None or call.point is None:
                return self._finish(End.MALFORMED_TOOL_CALL, call.error if call else "</tool_call> without <tool_call>")
            box = crop_box(call.point, self.image.size, self.settings.half_size)
            image = crop(self.image, call.point, self.settings.half_size, self.settings.out_size, self.settings.dot)
            self.points.append(call.point)
            self.boxes.append(box)
            self.forced = self.n_images >= self.settings.max_images
            return Step(done=False, crop=image, point=call.point, box=box,
                        force_prefix=FORCED_ANSWER_PREFIX if self.forced else "")
        return self._finish(End.NO_ACTION, "turn has neither a tool call nor an answer")

    def _finish(self, end: End, error: str = "") -> Step:
        self.end = end
        return Step(done=True, end=end, error=error)

    def text(self, dot: bool | None = None) -> str:
        """The episode as one response text for `rewards.score(mode="multi_turn")`: assistant turns with
        observation turns between them, in chat-template form."""
        before, after = observation_text(self.settings.dot if dot is None else dot)
        obs = f"<|im_end|>\n<|im_start|>user\n{before}<|vision_start|><|image_pad|><|vision_end|>{after}" \
              f"<|im_end|>\n<|im_start|>assistant\n"
        return obs.join(strip_end(t) for t in self.turns)
