"""The zoom environment: the episode state machine of multi-turn ViGoRL (docs/algorithm.md §2) and the crop
settings per recipe. The crop geometry itself (smart_resize, crop boxes, observation images and text,
docs/algorithm.md §3) is `data_gen.geometry`. Pure and deterministic; no vLLM here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from PIL import Image

from data_gen.geometry import FORCED_ANSWER_PREFIX, crop, crop_box, observation_text
from rewards.parse import Point, parse_tool_call, strip_end

STOP_STRINGS = ("</tool_call>", "</answer>", "<|im_end|>")


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
