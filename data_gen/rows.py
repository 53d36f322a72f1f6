"""Prompt rows: what every dataset (synthetic or benchmark) becomes, and the Parquet file that holds them.

A dataset is a directory with `prompts.parquet` (`write_rows`; read back with `data_gen.formats.read_rows`) and
the images it references by relative path.
Golds are in original-image pixels; `gold_for_model` maps box golds into the frame the model sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from data_gen import records
from rewards.tasks import get_task, parse_box

PROMPTS_FILE = "prompts.parquet"


@dataclass
class PromptRow:
    prompt_id: str  # unique within the dataset
    task: str  # rewards task name (spatial | visual_search | gui_grounding | web_action | ...)
    image: str  # image path relative to the dataset root
    width: int  # original image size, px
    height: int
    question: str  # the full user text (instruction / question with its options)
    gold: str  # gold answer in rewards.score's form; boxes "(x1, y1, x2, y2)" in original pixels
    options: list[str] = field(default_factory=list)  # multiple-choice option texts, in prompt order
    source: str = ""  # benchmark / generator name and split
    meta: str = ""  # JSON text with anything else worth keeping (target boxes, platform, ...)

    def validate(self, where: str = "") -> None:
        """Raise ValueError naming the row and field on anything a scorer or the env would trip on."""
        at = f"{where}row {self.prompt_id!r}"
        for name in ("prompt_id", "task", "image", "question", "gold"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{at}: field {name!r} is missing or empty")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{at}: fields 'width'/'height' must be positive, got {self.width}x{self.height}")
        try:
            get_task(self.task).check_gold(self.gold)
        except ValueError as e:
            raise ValueError(f"{at}: field 'gold': {e}") from None
        if self.options and self.gold.strip().lower() not in [o.strip().lower() for o in self.options]:
            raise ValueError(f"{at}: field 'gold' {self.gold!r} is not one of the options {self.options}")


def scale_box_gold(gold: str, original: tuple[int, int], resized: tuple[int, int]) -> str:
    """A `(x1, y1, x2, y2)` gold in original pixels -> the same box on the resized image the model sees
    (per-axis scale factors, docs/algorithm.md §2). Outer corners are floored/ceiled so the box never shrinks."""
    x1, y1, x2, y2 = parse_box(gold)
    sx, sy = resized[0] / original[0], resized[1] / original[1]
    return f"({math.floor(x1 * sx)}, {math.floor(y1 * sy)}, {math.ceil(x2 * sx)}, {math.ceil(y2 * sy)})"


def gold_for_model(row: PromptRow, resized: tuple[int, int]) -> str:
    return scale_box_gold(row.gold, (row.width, row.height), resized) if row.task == "gui_grounding" else row.gold


def write_rows(rows: list[PromptRow], out_dir: str | Path) -> Path:
    ids = [r.prompt_id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt_id values must be unique within a dataset")
    for r in rows:
        r.validate()
    path = Path(out_dir) / PROMPTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa_table(rows), path)
    return path


def pa_table(rows: list[PromptRow]):
    import pyarrow as pa

    return pa.Table.from_batches([records.to_batch(rows, PromptRow)], schema=records.schema_of(PromptRow))
