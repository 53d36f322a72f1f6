"""One row of each prompt format -> `data_gen.rows.PromptRow` (`BUILDERS`; data_gen/formats.py reads the
tables and picks the format).

Each row of a prompts table is one of these (`data.format`; `auto` tells them apart by the columns):
  vigorl         PromptRow's own columns (`prompt_id, task, image, width, height, question, gold, options, source,
                 meta`), read by selecting and casting the columns it needs: order, extra columns, large_string,
                 int widths do not matter; only `image`, `question`, `gold` are required (prompt_id defaults to
                 FILE-ROW, task to data.task, width/height to the image's, source to the file name).
  easyr1         the released ViGoRL RL data (its EasyR1-based trainer, src/trainer/rl/verl/utils/dataset.py):
                 `{"problem", "answer", "images": [...]}`, one `<image>` placeholder per image in the problem,
                 the gold in the answer; columns named by data.prompt_key / answer_key / image_key as EasyR1's
                 `data.prompt_key` etc.
  verl           verl's multimodal RL parquet: `prompt` (a chat list), `images`, `reward_model.ground_truth`,
                 `data_source`.
  released_eval  the released evaluation files (src/vlmsearch/datasets/data_loader.py): `{"id", "image",
                 "conversations": [{"from": "human", "value": "<image>\\n<question>"}, {"from": "gpt", "value":
                 "<gold>"}]}`; with `benchmark=vstar|sat|blink|screenspot_*` the benchmark names the task.
An image is a path relative to the image root (`image_root`: data.image_root, else data.path's dir or the
file's dir; a path escaping it is refused, `data_gen.images.resolve_under`), an HF `Image` struct `{bytes,
path}`, or raw bytes. Embedded bytes are written once by content hash (`data_gen.images.store_image`) and the
row refers to them as `sha256:<hex>`, which every reader of images (actors, learner, gallery) resolves. A row
without a task column takes data.task. vigorl's episodes show one image, before the question text: a row must
carry exactly one image (its `<image>` placeholder is removed from the text). A row that cannot be read is an
error naming the file, the row (or line) and the column.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_gen.images import ImageError, image_size, resolve_under, store_image
from data_gen.rows import PromptRow
from data_gen.tables import FormatError

PLACEHOLDER = "<image>"
_VSTAR_CATEGORIES = {"direct_attributes", "relative_position"}  # V*Bench's subtask folders


@dataclass
class Ctx:
    root: Path  # image root
    task: str  # the task of rows without a task column
    label: str  # file / dataset name
    data: Any  # DataConfig (the column keys)
    source: str = ""  # PromptRow.source of rows without one ("": the file's name)
    benchmark: str = ""


def _col(obj: dict, name: str, where: str) -> Any:
    if name not in obj or obj[name] is None:
        raise FormatError(f"{where}, column {name!r}: missing")
    return obj[name]


def _text(obj: dict, name: str, where: str, scalar: bool = False) -> str:
    v = _col(obj, name, where)
    if scalar and isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not v.strip():
        raise FormatError(f"{where}, column {name!r}: expected non-empty text, got {v!r:.80}")
    return v


def _image(value: Any, ctx: Ctx, where: str, column: str) -> tuple[str, tuple[int, int]]:
    """An image cell -> (source: a path under the root or sha256:<hex>, (width, height) from its header)."""
    if isinstance(value, dict):  # an HF `Image` struct {bytes, path}; verl's {"image": ...}
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        elif value.get("image") is not None:
            value = value["image"]
        else:
            raise FormatError(f"{where}, column {column!r}: an image struct with no bytes and no path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        source = store_image(bytes(value))
    elif isinstance(value, str) and value:
        source = value
        if not value.startswith("sha256:") and not ctx.root.is_dir():
            raise FormatError(f"{where}, column {column!r}: image path {value!r} is relative to the image root "
                              f"{ctx.root}, which is not a dir: set data.image_root")
    else:
        raise FormatError(f"{where}, column {column!r}: expected an image path, {{bytes, path}} or bytes, got "
                          f"{type(value).__name__}")
    try:
        return source, image_size(resolve_under(ctx.root, source))
    except ImageError as e:
        raise FormatError(f"{where}, column {column!r}: {e}") from None


def _one_image(value: Any, ctx: Ctx, where: str, column: str, placeholders: int | None):
    """The single image of a row whose cell may be a list; `placeholders`: `<image>` count in its text."""
    images = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(images) != 1:
        raise FormatError(f"{where}, column {column!r}: {len(images)} images; vigorl's episodes start from one image "
                          "per prompt")
    if placeholders is not None and placeholders != len(images):
        raise FormatError(f"{where}, column {column!r}: {len(images)} image(s) but {placeholders} {PLACEHOLDER} "
                          "placeholder(s) in the prompt text (one per image, as EasyR1 expects)")
    return _image(images[0], ctx, where, column)


def question_text(text: str) -> str:
    """The prompt text without its `<image>` placeholder: vigorl's episodes put the image first, then the text
    (data_gen/prompts.py), so text written before the placeholder comes first in the question."""
    return "\n".join(p.strip() for p in text.split(PLACEHOLDER) if p.strip())


def _task(obj: dict, ctx: Ctx, where: str) -> str:
    v = obj.get("task")
    if v is None or v == "":
        return ctx.task
    if not isinstance(v, str):
        raise FormatError(f"{where}, column 'task': expected a task name, got {v!r}")
    return v


def _row(prompt_id, task, source_image, question, gold, ctx, options=(), source="", meta: str = "") -> PromptRow:
    image, (w, h) = source_image
    return PromptRow(prompt_id=str(prompt_id), task=task, image=image, width=w, height=h, question=question,
                     gold=gold, options=list(options), source=source or ctx.source or Path(ctx.label).name, meta=meta)


def _id(obj: dict, key: str, ctx: Ctx, i: int) -> str:
    """The row's own id when it has one, else FILE-ROW (stable across runs: the ledger and eval resume key)."""
    v = obj.get(key)
    return str(v) if v is not None and v != "" else f"{Path(ctx.label).stem}-{i}"


def _vigorl(obj: dict, i: int, ctx: Ctx, where: str) -> PromptRow:
    image_col = obj.get("image")
    if image_col is None:
        raise FormatError(f"{where}, column 'image': missing")
    w, h = obj.get("width"), obj.get("height")
    if isinstance(image_col, str) and isinstance(w, int) and isinstance(h, int):
        source_image = (image_col, (w, h))  # sizes given: trusted, as vigorl's own files are (no image opened)
    else:
        source_image = _image(image_col, ctx, where, "image")
    options = obj.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise FormatError(f"{where}, column 'options': expected a list of option texts, got {options!r:.80}")
    meta = obj.get("meta") or ""
    return _row(_id(obj, "prompt_id", ctx, i), _task(obj, ctx, where), source_image, _text(obj, "question", where),
                _text(obj, "gold", where, scalar=True), ctx, options, obj.get("source") or "",
                meta if isinstance(meta, str) else json.dumps(meta))


def _easyr1(obj: dict, i: int, ctx: Ctx, where: str) -> PromptRow:
    d = ctx.data
    pk, ak, ik = (getattr(d, "prompt_key", "problem"), getattr(d, "answer_key", "answer"),
                  getattr(d, "image_key", "images"))
    problem = _text(obj, pk, where)
    return _row(_id(obj, "id", ctx, i), _task(obj, ctx, where),
                _one_image(_col(obj, ik, where), ctx, where, ik, problem.count(PLACEHOLDER)),
                question_text(problem), _text(obj, ak, where, scalar=True), ctx,
                source=obj.get("data_source") if isinstance(obj.get("data_source"), str) else "")


_warned_system: set[str] = set()


def _content_text(content: Any, where: str) -> tuple[str, int]:
    """A chat message's content (text, or a list of {type: text|image}) -> (text, images it names)."""
    if isinstance(content, str):
        return content, content.count(PLACEHOLDER)
    if isinstance(content, list):
        texts = [c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text"]
        images = sum(1 for c in content if isinstance(c, dict) and c.get("type") == "image")
        return "\n".join(texts), images + sum(t.count(PLACEHOLDER) for t in texts)
    raise FormatError(f"{where}, column 'prompt': a message content is {type(content).__name__}")


def _verl(obj: dict, i: int, ctx: Ctx, where: str) -> PromptRow:
    chat = _col(obj, "prompt", where)
    if not isinstance(chat, list) or not all(isinstance(m, dict) and "role" in m for m in chat):
        raise FormatError(f"{where}, column 'prompt': expected a chat list of {{role, content}}, got {chat!r:.80}")
    users = [m for m in chat if m["role"] == "user"]
    if len(users) != 1 or any(m["role"] not in ("user", "system") for m in chat):
        raise FormatError(f"{where}, column 'prompt': expected one user message (and optionally a system one), got "
                          f"roles {[m['role'] for m in chat]}")
    if any(m["role"] == "system" for m in chat) and ctx.label not in _warned_system:
        _warned_system.add(ctx.label)
        warnings.warn(f"{ctx.label}: the system messages in column 'prompt' are not sent; vigorl's system prompt is "
                      "rollout.prompt, or a file: rollout.system_prompt_file=FILE", stacklevel=2)
    text, n_images = _content_text(users[0].get("content"), where)
    reward = _col(obj, "reward_model", where)
    if not isinstance(reward, dict) or reward.get("ground_truth") is None:
        raise FormatError(f"{where}, column 'reward_model': expected {{ground_truth: ...}}, got {reward!r:.80}")
    gold = _text(reward, "ground_truth", f"{where}, column 'reward_model'", scalar=True)
    ik = getattr(ctx.data, "image_key", "images")
    extra = obj.get("extra_info") if isinstance(obj.get("extra_info"), dict) else {}
    return _row(_id(obj, "id", ctx, i) if obj.get("id") is not None else _id(extra, "index", ctx, i),
                _task(obj, ctx, where), _one_image(_col(obj, ik, where), ctx, where, ik, n_images),
                question_text(text), gold, ctx,
                source=obj.get("data_source") if isinstance(obj.get("data_source"), str) else "")


def _turns(conv: Any, where: str) -> list[dict]:
    """`conversations` as a list of {from, value}; `datasets` stores a sequence of dicts as {from: [..],
    value: [..]}."""
    if isinstance(conv, dict) and isinstance(conv.get("value"), list):
        conv = [{"from": f, "value": v} for f, v in zip(conv.get("from") or [None] * len(conv["value"]),
                                                         conv["value"])]
    if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(t, dict) for t in conv):
        raise FormatError(f"{where}, column 'conversations': expected [{{from: human, value: question}}, {{from: gpt, "
                          f"value: gold}}], got {conv!r:.80}")
    return conv


def _released_eval(obj: dict, i: int, ctx: Ctx, where: str) -> PromptRow:
    turns = _turns(_col(obj, "conversations", where), where)
    question = _text(turns[0], "value", f"{where}, column 'conversations' turn 0")
    gold = _text(turns[1], "value", f"{where}, column 'conversations' turn 1", scalar=True)
    image = _col(obj, "image", where)
    if question.count(PLACEHOLDER) > 1:
        raise FormatError(f"{where}, column 'conversations': {question.count(PLACEHOLDER)} {PLACEHOLDER} placeholders "
                          "for one image")
    source_image = _image(image, ctx, where, "image")
    meta = ""
    if ctx.benchmark == "vstar" and isinstance(image, str) and Path(image).parent.name in _VSTAR_CATEGORIES:
        meta = json.dumps({"subgroup": Path(image).parent.name})  # as the vstar loader: by V*Bench's subtask folder
    return _row(_id(obj, "id", ctx, i), _task(obj, ctx, where), source_image, question_text(question), gold, ctx,
                meta=meta)


BUILDERS = {"vigorl": _vigorl, "easyr1": _easyr1, "verl": _verl, "released_eval": _released_eval}


def cast_vigorl(table, label: str, start: int):
    """Select PromptRow's columns present in `table` and cast each to its type (large_string -> string, int32 ->
    int64, ...). A value that does not cast is an error naming its row and column."""
    import pyarrow as pa

    from data_gen.records import schema_of

    out = {}
    for f in schema_of(PromptRow):
        if f.name not in table.column_names:
            continue
        col = table.column(f.name)
        if f.name == "image" and not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            out[f.name] = col  # an embedded image ({bytes, path} struct, bytes): `_image` reads it
            continue
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                for k, v in enumerate(col.to_pylist()):
                    try:
                        pa.array([v]).cast(f.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                        raise FormatError(f"{label} row {start + k}, column {f.name!r}: {v!r:.80} is not {f.type}") \
                            from None
                raise FormatError(f"{label}, column {f.name!r}: type {col.type} cannot be read as {f.type} ({e})") \
                    from None
        out[f.name] = col
    return pa.table(out) if out else table.select([])
