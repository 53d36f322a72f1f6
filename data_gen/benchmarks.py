"""Benchmark loaders: real benchmark formats -> PromptRows (docs/algorithm.md §8). Registered by name in `LOADERS`.

Every loader takes (root, on_error) and returns (rows, skipped): `root` is the benchmark folder; images
are resolved under it and a path that escapes it is refused. on_error="raise" stops at the first bad row
with an error naming it; on_error="skip" drops it and counts the reason in `skipped`.

Box conventions are the classic silent trap (docs/algorithm.md §8): ScreenSpot v1 and the original v2 store
[x, y, w, h]; ScreenSpot-Pro and the converted v2 store [x1, y1, x2, y2] + img_size. Each loader knows
which it reads and checks the box against the image size, so a file of the other convention fails loudly
instead of scoring against wrong boxes.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from data_gen.images import ImageError, load_rgb, resolve_under
from data_gen.rows import PromptRow
from rewards.tasks import vwa_string_match  # noqa: F401 - re-exported: the benchmark's own judge

Loaded = tuple[list[PromptRow], Counter]
LOADERS: dict[str, Callable[..., Loaded]] = {}


def register_loader(name: str):
    def deco(fn):
        LOADERS[name] = fn
        return fn
    return deco


class RowError(ValueError):
    pass


def _collect(items, build: Callable[[int, dict], PromptRow | None], on_error: str, what: str) -> Loaded:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows, skipped = [], Counter()
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                got = item if isinstance(item, str) else type(item).__name__
                raise RowError(f"{what} row {i}: expected a JSON object, got {got}")
            row = build(i, item)
            if row is None:
                continue
            row.validate(f"{what} row {i}: ")
            rows.append(row)
        except (RowError, ImageError, ValueError) as e:
            if on_error == "raise":
                raise RowError(str(e)) from None
            skipped[str(e).split(": ", 1)[-1][:100]] += 1  # the reason, without the row prefix
    return rows, skipped


def _field(item: dict, name: str, where: str, typ: type | tuple = str):
    if name not in item:
        raise RowError(f"{where}: missing field {name!r}")
    v = item[name]
    if not isinstance(v, typ) or isinstance(v, bool):
        raise RowError(f"{where}: field {name!r} has type {type(v).__name__}")
    return v


def _ints(v, n: int, where: str, name: str) -> list[int]:
    if not (isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v)):
        raise RowError(f"{where}: field {name!r} must be a list of {n} numbers, got {v!r}")
    return [int(round(x)) for x in v]


def _image_size(root: Path, rel: str, where: str, declared: list[int] | None) -> tuple[int, int]:
    """Size of the image if it is present (decoded, so corrupt files fail here), else the declared one."""
    path = resolve_under(root, rel)
    if path.is_file():
        w, h = load_rgb(path).size
        if declared and (w, h) != tuple(declared):
            raise RowError(f"{where}: img_size {declared} differs from the image's {w}x{h}")
        return w, h
    if declared:
        return declared[0], declared[1]
    raise RowError(f"{where}: image {rel!r} not found under {root} and no img_size given")


def _check_box(box: list[int], size: tuple[int, int], where: str, convention: str) -> None:
    x1, y1, x2, y2 = box
    w, h = size
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise RowError(f"{where}: bbox {box} ({convention} after conversion) is not inside the {w}x{h} image "
                       f"— is the file in the other bbox convention?")


def _screenspot(root: Path, file: str, on_error: str, xywh: bool, source: str, images_dir: str) -> Loaded:
    root = Path(root)
    items = json.loads((root / file).read_text())
    if not isinstance(items, list):
        raise RowError(f"{root / file}: expected a JSON list of annotations")

    def build(i: int, it: dict) -> PromptRow:
        where = f"{file} row {i}"
        name = _field(it, "img_filename", where)
        rel = f"{images_dir}/{name}" if images_dir else name
        box = _ints(_field(it, "bbox", where, list), 4, where, "bbox")
        declared = _ints(it["img_size"], 2, where, "img_size") if "img_size" in it else None
        size = _image_size(root, rel, where, declared)
        if xywh:
            box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
        _check_box(box, size, where, "xyxy")
        instr = _field(it, "instruction", where)
        meta = {k: it[k] for k in ("platform", "ui_type", "group", "data_type", "data_source") if k in it}
        # the breakdown ScreenSpot results are reported in: mobile / desktop / web x text / icon
        kind = meta.get("ui_type") or meta.get("data_type")
        if meta.get("group") or kind:
            meta["subgroup"] = f"{meta.get('group', '?')}/{kind or '?'}"
        return PromptRow(prompt_id=f"{source}-{i}", task="gui_grounding", image=rel, width=size[0],
                         height=size[1], question=f"{instr}\nAnswer with the point (x, y) to click.",
                         gold="({}, {}, {}, {})".format(*box), source=source, meta=json.dumps(meta))

    return _collect(items, build, on_error, file)


@register_loader("screenspot_v1")
def screenspot_v1(root, file: str = "screenspot.json", on_error: str = "raise", images_dir: str = "images") -> Loaded:
    """ScreenSpot v1 (SeeClick) and the original ScreenSpot-v2: bbox = [x, y, w, h] pixels."""
    return _screenspot(root, file, on_error, xywh=True, source="screenspot_v1", images_dir=images_dir)


register_loader("screenspot_v2_original")(screenspot_v1)


@register_loader("screenspot_v2")
def screenspot_v2(root, file: str = "screenspot_v2_with_images.json", on_error: str = "raise",
                  images_dir: str = "images") -> Loaded:
    """Converted ScreenSpot-v2 and ScreenSpot-Pro: bbox = [x1, y1, x2, y2] pixels + img_size [w, h]."""
    return _screenspot(root, file, on_error, xywh=False, source="screenspot_v2", images_dir=images_dir)


register_loader("screenspot_pro")(screenspot_v2)


@register_loader("vstar")
def vstar(root, on_error: str = "raise", seed: int = 0) -> Loaded:
    """V*Bench: per subtask folder, sa_<n>.jpg + sa_<n>.json; options[0] is the gold. Options are
    shuffled (deterministically by seed and item) for the prompt so the gold is not always (A)."""
    root = Path(root)
    files = sorted(root.glob("*/sa_*.json")) + sorted(root.glob("sa_*.json"))

    def build(i: int, it: dict) -> PromptRow:
        path = files[i]
        where = str(path.relative_to(root))
        options = _field(it, "options", where, list)
        if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
            raise RowError(f"{where}: field 'options' must list >= 2 non-empty strings")
        rel = str(path.with_suffix(".jpg").relative_to(root))
        size = _image_size(root, rel, where, None)
        shuffled = list(options)
        random.Random(f"{seed}/{rel}").shuffle(shuffled)
        q = _field(it, "question", where)
        letters = "ABCDEFGH"
        text = q + "\n" + "\n".join(f"({letters[k]}) {o}" for k, o in enumerate(shuffled))
        return PromptRow(prompt_id=f"vstar-{path.parent.name}-{path.stem}", task="visual_search", image=rel,
                         width=size[0], height=size[1], question=text + "\nAnswer with the option's text.",
                         gold=options[0], options=shuffled, source=f"vstar/{path.parent.name}",
                         meta=json.dumps({"bbox_xywh": it.get("bbox"), "target": it.get("target_object")}))

    return _collect([json.loads(f.read_text()) for f in files], build, on_error, "vstar")


# ---- BLINK -------------------------------------------------------------------------------------------
_LETTER = re.compile(r"^\(([A-E])\)$")


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    """BLINK's deterministic answer extraction (eval/test_benchmark.py analyze_answer, without its GPT
    fallback): the text is exactly a choice, or exactly one choice token appears in it, or in its last
    paragraph. Returns "(A)".. or None when ambiguous."""
    choices = [f"({chr(65 + k)})" for k in range(n_choices)]
    if text.strip() in choices:
        return text.strip()
    for part in (text, text.strip().split("\n\n")[-1]):
        found = set(part.split()) & set(choices)
        if len(found) == 1:
            return found.pop()
    return None


def _jsonl_items(path: Path) -> list:
    """The objects of a JSON-lines export, blank lines left out; a line that is not JSON becomes a string
    naming it (so `_collect` reports or skips it like any bad row)."""
    items = []
    for n, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                items.append(json.loads(line))
            except ValueError:
                items.append(f"line {n + 1} is not JSON")
    return items


@register_loader("blink")
def blink(root, file: str = "blink.jsonl", on_error: str = "raise") -> Loaded:
    """BLINK exported as JSON lines {idx, question, choices, answer "(B)", image, [sub_task]}: gold = the option
    text; the subtask (when present) is the item's subgroup."""
    root = Path(root)
    items = _jsonl_items(root / file)

    def build(i: int, it: dict) -> PromptRow | None:
        where = f"{file} line {i + 1}"
        choices = _field(it, "choices", where, list)
        m = _LETTER.match(_field(it, "answer", where))
        if m is None or ord(m.group(1)) - 65 >= len(choices):
            raise RowError(f"{where}: field 'answer' {it.get('answer')!r} is not a choice letter of {choices}")
        rel = _field(it, "image", where)
        size = _image_size(root, rel, where, None)
        text = _field(it, "question", where) + "\n" + "\n".join(
            f"({chr(65 + k)}) {c}" for k, c in enumerate(choices))
        return PromptRow(prompt_id=str(_field(it, "idx", where)), task="spatial", image=rel, width=size[0],
                         height=size[1], question=text + "\nAnswer with the option's text.",
                         gold=choices[ord(m.group(1)) - 65], options=choices, source="blink",
                         meta=json.dumps({"subgroup": it["sub_task"]} if it.get("sub_task") else {}))

    return _collect(items, build, on_error, file)


@register_loader("sat")
def sat(root, file: str = "sat.jsonl", on_error: str = "raise") -> Loaded:
    """SAT-style multiple choice (SAT / SAT-2, exported as JSON lines {id, image, question, answers: [...],
    correct_answer, [question_type]}): gold = the correct option's text (ViGoRL answers with the text, not the
    letter); the question type (when present) is the item's subgroup."""
    root = Path(root)

    def build(i: int, it: dict) -> PromptRow:
        where = f"{file} line {i + 1}"
        options = _field(it, "answers", where, list)
        if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
            raise RowError(f"{where}: field 'answers' must list >= 2 non-empty strings")
        gold = _field(it, "correct_answer", where)
        if gold not in options:
            raise RowError(f"{where}: field 'correct_answer' {gold!r} is not one of the answers {options}")
        rel = _field(it, "image", where)
        size = _image_size(root, rel, where, None)
        text = _field(it, "question", where) + "\n" + "\n".join(f"({chr(65 + k)}) {o}" for k, o in enumerate(options))
        qtype = it.get("question_type")
        return PromptRow(prompt_id=f"sat-{it.get('id', i)}", task="spatial", image=rel, width=size[0],
                         height=size[1], question=text + "\nAnswer with the option's text.", gold=gold,
                         options=options, source="sat", meta=json.dumps({"subgroup": qtype} if qtype else {}))

    return _collect(_jsonl_items(root / file), build, on_error, file)


# ---- VisualWebArena ----------------------------------------------------------------------------------
# its judge, `vwa_string_match`, and the `web_qa` task live with the other judges (rewards.tasks)


@register_loader("visualwebarena")
def visualwebarena(root, file: str = "test_classifieds_subset30.raw.json", on_error: str = "raise") -> Loaded:
    """VWA task configs with an input image and string_match references (must_include / exact_match)
    -> `web_qa` rows. Tasks without an input image, or judged by URL / HTML / an LLM (fuzzy_match), need
    the live environment: they are counted in `skipped` even with on_error="raise"."""
    root = Path(root)
    items = json.loads((root / file).read_text())
    not_offline = Counter()

    def build(i: int, it: dict) -> PromptRow | None:
        where = f"{file} task {it.get('task_id', i)}"
        image = it.get("image")
        refs = (it.get("eval") or {}).get("reference_answers") or {}
        if not image:
            not_offline["no input image"] += 1
            return None
        if not ({"must_include", "exact_match"} & set(refs)):
            not_offline["needs the live environment or an LLM judge"] += 1
            return None
        rel = image if isinstance(image, str) else image[0]
        size = _image_size(root, rel, where, None)
        gold = json.dumps({k: refs[k] for k in ("must_include", "exact_match") if k in refs})
        return PromptRow(prompt_id=f"vwa-{it['task_id']}", task="web_qa", image=rel, width=size[0],
                         height=size[1], question=_field(it, "intent", where), gold=gold,
                         source="visualwebarena/classifieds",
                         meta=json.dumps({"task_id": it["task_id"], "images": image}))

    rows, skipped = _collect(items, build, on_error, file)
    return rows, skipped + not_offline
