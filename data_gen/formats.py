"""Data in the formats users have: one reader for training, evaluation and MCTS prompts (`load_prompts`), and
one for SFT conversations (`sft_sources`, `read_records`, `to_chat`).

Prompts (-> `data_gen.rows.PromptRow`). `data.path` is
  - a file: `.parquet`, `.jsonl` (JSON lines) or `.json` (a JSON array of objects);
  - a dir: its `prompts.parquet` (vigorl's own), a `datasets` `save_to_disk` dir (state.json + *.arrow, or a
    DatasetDict's dataset_dict.json; `DIR@split` picks a split, default train), else every *.parquet,
    *.jsonl and *.json in it, in name order (EasyR1 reads a dir as parquet files);
  - a Hub dataset id `name@split` (default split train), read with the `datasets` library from the Hub or,
    offline (HF_HUB_OFFLINE=1), from the local HF cache;
and each row is one of these (`data.format`; `auto` tells them apart by the columns):
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
import os
import warnings
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from data_gen.images import ImageError, image_size, resolve_under, store_image
from data_gen.rows import PROMPTS_FILE, PromptRow

FORMATS = ("auto", "vigorl", "easyr1", "verl", "released_eval")
PLACEHOLDER = "<image>"
_SUFFIXES = (".parquet", ".jsonl", ".json")
_NOT_DATA = {"dataset_info.json", "state.json", "dataset_dict.json"}  # `datasets` / LLaMA-Factory metadata
# the task a benchmark's items are scored as, when they come in the released evaluation format
BENCHMARK_TASKS = {"vstar": "visual_search", "sat": "spatial", "blink": "spatial", "screenspot_v1": "gui_grounding",
                   "screenspot_v2_original": "gui_grounding", "screenspot_v2": "gui_grounding",
                   "screenspot_pro": "gui_grounding", "visualwebarena": "web_qa"}
_VSTAR_CATEGORIES = {"direct_attributes", "relative_position"}  # V*Bench's subtask folders
BATCH = 512  # rows converted at a time (embedded image bytes are written out and dropped batch by batch)


class FormatError(ValueError):
    """A row or file that cannot be read; the message names the file, row and column."""


# ---- where the data is ------------------------------------------------------------------------------------

def split_spec(path: str) -> tuple[str, str | None]:
    """`name@split` -> (name, split); a path that exists as written has no split."""
    if "@" in path and not os.path.exists(path):
        name, split = path.rsplit("@", 1)
        return name, split or None
    return path, None


def image_root(data) -> Path:
    """Where relative image paths of `data` (a DataConfig) resolve: data.image_root, else data.path when it is a
    dir, else the file's dir. The same function on the driver, the actors and the learner."""
    if getattr(data, "image_root", ""):
        return Path(data.image_root)
    path = Path(split_spec(data.path)[0])
    return path.parent if path.is_file() else path


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or
                              ((path / "state.json").is_file() and any(path.glob("*.arrow"))))


def _hub_like(name: str) -> bool:
    """A Hub dataset id: `name` or `org/name`. A path that looks local is not one: absolute or dotted, a data
    file name, or under a dir that exists here (so a typo in `runs/data/...` is "does not exist", not a Hub
    lookup)."""
    parts = name.split("/")
    return (0 < len(parts) <= 2 and all(p and not p.startswith((".", "~")) for p in parts)
            and not name.startswith("/") and not name.endswith(_SUFFIXES)
            and not (len(parts) == 2 and os.path.isdir(parts[0])) and not os.path.exists(name))


@dataclass
class _Part:
    """One table of rows: its name for messages, its columns, and its rows in batches (Arrow tables or lists of
    (line number, object) for JSON)."""

    label: str
    columns: list[str]
    batches: Any  # () -> Iterator[pa.Table | list[tuple[int, Any]]]
    lines: bool = False  # JSON lines: rows are named by line number


def _json_part(path: Path) -> _Part:
    if path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    items.append((n, json.loads(line)))
                except ValueError as e:
                    raise FormatError(f"{path} line {n}: not JSON ({e})") from None
        lines = True
    else:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise FormatError(f"{path}: not JSON ({e})") from None
        if not isinstance(obj, list):
            raise FormatError(f"{path}: expected a JSON array of row objects, got {type(obj).__name__}")
        items, lines = list(enumerate(obj)), False
    first = next((o for _, o in items if isinstance(o, dict)), {})
    return _Part(str(path), list(first), lambda: iter([items[k:k + BATCH] for k in range(0, len(items), BATCH)]),
                 lines)


def _parquet_part(path: Path) -> _Part:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise FormatError(f"{path}: not a parquet file ({e})") from None
    return _Part(str(path), f.schema_arrow.names,
                 lambda: (pa.Table.from_batches([b]) for b in f.iter_batches(batch_size=BATCH)))


def _datasets_part(name: str, split: str | None, local: bool) -> _Part:
    """A `save_to_disk` dir or a Hub dataset id, through the `datasets` library; rows read as Arrow, so HF `Image`
    columns arrive as their stored {bytes, path} structs."""
    try:
        import datasets
    except ImportError:
        raise FormatError(f"data.path={name}: reading a `datasets` dir or a Hub dataset needs the `datasets` "
                          "package: pip install datasets") from None
    if local:
        ds = datasets.load_from_disk(name)
    else:
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except (OSError, ValueError) as e:  # ConnectionError (offline, unreachable), FileNotFoundError, bad split
            offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
            raise FormatError(
                f"data.path={name}@{split or 'train'}: not a local file or dir, and the Hub dataset could not be read "
                f"({type(e).__name__}: {e}). " + ("HF_HUB_OFFLINE is set: only datasets already in the local HF cache "
                f"({datasets.config.HF_DATASETS_CACHE}) can be read; download it where the Hub is reachable first"
                if offline else "Check the id and the split, or download it where the Hub is reachable")) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = sorted(ds)
        split = split or ("train" if "train" in ds else splits[0] if len(splits) == 1 else None)
        if split not in ds:
            raise FormatError(f"data.path={name}: a DatasetDict with splits {splits}; name one as {name}@SPLIT")
        ds = ds[split]
    elif split and local:
        raise FormatError(f"data.path={name}@{split}: {name} is a single Dataset, it has no splits")
    arrow = ds.with_format("arrow")
    label = f"{name}@{split or 'train'}" if split or not local else name  # rows are named NAME@SPLIT-ROW
    return _Part(label, list(ds.column_names), lambda: (arrow[k:k + BATCH] for k in range(0, len(ds), BATCH)))


def parts(path: str) -> list[_Part]:
    """The tables `data.path` holds, in order (see the module doc)."""
    name, split = split_spec(path)
    p = Path(name)
    if p.is_file():
        if split:
            raise FormatError(f"data.path={path}: a file has no splits")
        if p.suffix == ".parquet":
            return [_parquet_part(p)]
        if p.suffix in (".jsonl", ".json"):
            return [_json_part(p)]
        raise FormatError(f"data.path={p}: not a data file (.parquet, .jsonl or .json)")
    if p.is_dir():
        if _is_saved_dataset(p):
            return [_datasets_part(str(p), split, local=True)]
        if split:
            raise FormatError(f"data.path={path}: {p} is not a `datasets` save_to_disk dir, so it has no splits")
        if (p / PROMPTS_FILE).is_file():
            return [_parquet_part(p / PROMPTS_FILE)]
        files = sorted(f for f in p.iterdir() if f.suffix in _SUFFIXES and f.name not in _NOT_DATA and f.is_file())
        if not files:
            raise FormatError(f"data.path={p}: no {PROMPTS_FILE}, no *.parquet / *.jsonl / *.json and not a `datasets` "
                              "save_to_disk dir (make a synthetic set with `vigorl make-data`)")
        return [_parquet_part(f) if f.suffix == ".parquet" else _json_part(f) for f in files]
    if _hub_like(name):
        return [_datasets_part(name, split, local=False)]
    raise FileNotFoundError(f"data.path: {path} does not exist (a file, a dir, or a Hub dataset id name@split)")


# ---- which format ------------------------------------------------------------------------------------------

def detect(columns: list[str], data=None, label: str = "") -> str:
    """The row format of a table with these columns (`auto`)."""
    cols = set(columns)
    prompt_key, answer_key = getattr(data, "prompt_key", "problem"), getattr(data, "answer_key", "answer")
    if {"conversations", "image"} <= cols:
        return "released_eval"
    if {"prompt", "reward_model"} <= cols:
        return "verl"
    if {"question", "gold", "image"} <= cols:
        return "vigorl"
    if {prompt_key, answer_key} <= cols:
        return "easyr1"
    raise FormatError(
        f"{label}: cannot tell the format from its columns {sorted(cols)}: vigorl needs image, question, gold; "
        f"easyr1 {prompt_key}, {answer_key} (data.prompt_key / data.answer_key), and an image column "
        f"(data.image_key); verl prompt, reward_model, images; released_eval id, image, conversations. "
        f"Rename the columns or set data.format=vigorl|easyr1|verl|released_eval")


# ---- rows --------------------------------------------------------------------------------------------------

@dataclass
class _Ctx:
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


def _image(value: Any, ctx: _Ctx, where: str, column: str) -> tuple[str, tuple[int, int]]:
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


def _one_image(value: Any, ctx: _Ctx, where: str, column: str, placeholders: int | None):
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
    (actors/prompts.py), so text written before the placeholder comes first in the question."""
    return "\n".join(p.strip() for p in text.split(PLACEHOLDER) if p.strip())


def _task(obj: dict, ctx: _Ctx, where: str) -> str:
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


def _id(obj: dict, key: str, ctx: _Ctx, i: int) -> str:
    """The row's own id when it has one, else FILE-ROW (stable across runs: the ledger and eval resume key)."""
    v = obj.get(key)
    return str(v) if v is not None and v != "" else f"{Path(ctx.label).stem}-{i}"


def _vigorl(obj: dict, i: int, ctx: _Ctx, where: str) -> PromptRow:
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


def _easyr1(obj: dict, i: int, ctx: _Ctx, where: str) -> PromptRow:
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


def _verl(obj: dict, i: int, ctx: _Ctx, where: str) -> PromptRow:
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


def _released_eval(obj: dict, i: int, ctx: _Ctx, where: str) -> PromptRow:
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


def _cast_vigorl(table, label: str, start: int):
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


def _rows(part: _Part, fmt: str) -> Iterator[tuple[int, str, Any]]:
    """(row index, where, row object) of a table, converting Arrow batches to Python one batch at a time."""
    i = 0
    for batch in part.batches():
        if isinstance(batch, list):
            for n, obj in batch:
                yield i, f"{part.label} {'line' if part.lines else 'row'} {n}", obj
                i += 1
        else:
            if fmt == "vigorl":
                batch = _cast_vigorl(batch, part.label, i)
            for obj in batch.to_pylist():
                yield i, f"{part.label} row {i}", obj
                i += 1


def exists(path: str) -> bool:
    """Whether data.path names data: a local file or dir (`DIR@split` too) or a Hub dataset id."""
    return Path(split_spec(path)[0]).exists() or is_hub_id(path)


def is_hub_id(path: str) -> bool:
    """Whether data.path names a Hub dataset (`name@split`, `org/name`) rather than a local file or dir."""
    return _hub_like(split_spec(path)[0]) and not Path(split_spec(path)[0]).exists()


def _reason(message: str, where: str) -> str:
    """A skipped row's message without what names the row (file, row, prompt id), so skips count by reason."""
    if message.startswith(where):
        message = message[len(where):].lstrip(":, ")
    if message.startswith("row '") and "': " in message:
        message = message.split("': ", 1)[1]
    return message[:100]


def read_prompts(path: str, fmt: str = "auto", task: str = "", root: str | Path | None = None, data=None,
                 on_error: str = "raise", source: str = "", benchmark: str = "", limit: int = 0
                 ) -> tuple[list[PromptRow], Counter]:
    """The PromptRows of `path` (module doc) and the rows skipped, by reason (on_error="skip"); with "raise" the
    first bad row is a FormatError naming it. `data`: a DataConfig for the column keys; `root`: the image root
    (default: `image_root`); `task`: for rows without a task column; `source`: PromptRow.source of every row;
    `limit`: stop after this many rows (a quick look at the first rows; 0: all)."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {' | '.join(FORMATS)}, got {fmt!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be raise or skip, got {on_error!r}")
    if root is None:
        root = image_root(data) if data is not None else Path(path) if Path(path).is_dir() else Path(path).parent
    root = Path(root)
    rows, skipped, seen = [], Counter(), {}
    for part in parts(path):
        kind = detect(part.columns, data, part.label) if fmt == "auto" else fmt
        ctx = _Ctx(root, task or getattr(data, "task", ""), part.label, data, source, benchmark)
        build = BUILDERS[kind]
        for i, where, obj in _rows(part, kind):
            try:
                if not isinstance(obj, dict):
                    raise FormatError(f"{where}: expected an object with the {kind} columns, got {type(obj).__name__}")
                row = build(obj, i, ctx, where)
                if row.prompt_id in seen:
                    raise FormatError(f"{where}: prompt id {row.prompt_id!r} repeats the one at {seen[row.prompt_id]}")
                row.validate(f"{where}: ")
            except (FormatError, ValueError) as e:
                if on_error == "raise":
                    raise FormatError(str(e)) from None
                skipped[_reason(str(e), where)] += 1
                continue
            seen[row.prompt_id] = where
            rows.append(row)
            if limit and len(rows) >= limit:
                return rows, skipped
    if not rows:
        raise FormatError(f"data.path={path}: no rows" + (f" ({sum(skipped.values())} skipped: {dict(skipped)})"
                                                           if skipped else ""))
    return rows, skipped


def is_released_eval(path: Path) -> bool:
    """Whether a JSON lines / JSON file holds released evaluation rows (its first object has image and
    conversations)."""
    if not path.is_file() or path.suffix not in (".jsonl", ".json"):
        return False
    try:
        part = _json_part(path)
    except FormatError:
        return False
    return {"image", "conversations"} <= set(part.columns)


def load_prompts(cfg, on_error: str = "raise", limit: int = 0) -> tuple[list[PromptRow], Counter]:
    """The prompts of a train / eval / MCTS config: a benchmark loader (`cfg.benchmark`, its folder in data.path,
    or a released evaluation file) or `read_prompts(cfg.data.path)`; returns (rows, skipped by reason).
    `limit`: only the first rows of a data file (a benchmark folder's loader reads it whole)."""
    data = cfg.data
    bench = getattr(cfg, "benchmark", "")
    on_error = str(on_error)
    if not bench:
        return read_prompts(data.path, data.format, data.task, image_root(data), data, on_error, limit=limit)
    from data_gen.benchmarks import LOADERS

    if bench not in LOADERS:
        raise ValueError(f"benchmark must be one of {sorted(LOADERS)}, got {bench!r}")
    bench_file = getattr(cfg, "benchmark_file", "")
    path = Path(data.path)
    file = path if path.is_file() else path / bench_file if bench_file else None
    if file is not None and is_released_eval(file):  # a released evaluation file: its task is the benchmark's
        return read_prompts(str(file), "released_eval", BENCHMARK_TASKS.get(bench, data.task), image_root(data), data,
                            on_error, source=bench, benchmark=bench, limit=limit)
    if not path.is_dir():
        raise FileNotFoundError(f"data.path: {path} is not the benchmark={bench} folder"
                                + (" (nor a released evaluation file: JSON lines of {id, image, conversations})"
                                   if path.is_file() else " (it does not exist)"))
    if data.image_root and Path(data.image_root).resolve() != path.resolve():
        raise ValueError(f"data.image_root={data.image_root}: benchmark={bench} reads its images under its folder "
                         f"data.path={path} (data.image_root applies to data files and released evaluation files)")
    return LOADERS[bench](path, on_error=on_error, **({"file": bench_file} if bench_file else {}))


# ---- SFT conversations (LLaMA-Factory's dataset conventions) -----------------------------------------------

DATASET_INFO = "dataset_info.json"


@dataclass
class SFTAttr:
    """The part of LLaMA-Factory's `DatasetAttr` (src/llamafactory/data/parser.py) vigorl reads: a
    dataset_info.json entry's `formatting`, `columns` and `tags`, with LLaMA-Factory's defaults."""

    formatting: str = "alpaca"
    system: str | None = None  # column of the system prompt
    images: str | None = None  # column of the image list
    prompt: str = "instruction"  # alpaca columns
    query: str = "input"
    response: str = "output"
    history: str | None = None
    messages: str = "conversations"  # sharegpt column and tags
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"

    @classmethod
    def from_entry(cls, entry: dict, where: str) -> "SFTAttr":
        attr = cls(formatting=entry.get("formatting", "alpaca"))
        if attr.formatting not in ("alpaca", "sharegpt"):
            raise FormatError(f"{where}: formatting {attr.formatting!r}; vigorl reads alpaca and sharegpt")
        names = {f.name for f in fields(cls)} - {"formatting"}
        for group in ("columns", "tags"):
            for key, value in (entry.get(group) or {}).items():
                if key in names:
                    setattr(attr, key, value)
        return attr

    @classmethod
    def detect(cls, obj: Any, where: str) -> "SFTAttr":
        """For a file read without a dataset_info.json entry (`vigorl sft data=FILE`): sharegpt with
        `conversations` (from / value / human / gpt, LLaMA-Factory's default) or `messages` (role / content /
        user / assistant, as the released ViGoRL SFT data and vigorl's own rows), or alpaca (`instruction`);
        `system` and `images` columns when the row has them."""
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: expected a row object, got {type(obj).__name__}")
        extra = {k: k for k in ("system", "images") if k in obj}
        if "conversations" in obj:
            return cls(formatting="sharegpt", **extra)
        if "messages" in obj:
            return cls(formatting="sharegpt", messages="messages", role_tag="role", content_tag="content",
                       user_tag="user", assistant_tag="assistant", **extra)
        if "instruction" in obj:
            return cls(formatting="alpaca", **extra)
        raise FormatError(f"{where}: not an SFT row: no 'conversations', 'messages' or 'instruction' column "
                          f"(columns {sorted(obj)})")


def dataset_files(data_dir: Path, name: str) -> tuple[list[Path], SFTAttr]:
    """The files and attributes of entry `name` of `data_dir/dataset_info.json`, as LLaMA-Factory reads it
    (`file_name`: a file or a dir of files, relative to the dataset dir)."""
    info_path = data_dir / DATASET_INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: no {DATASET_INFO} to look dataset={name} up in")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise FormatError(f"{info_path}: not JSON ({e})") from None
    if name not in info:
        raise FormatError(f"{info_path}: no dataset {name!r}; entries: {sorted(info)}")
    entry = info[name]
    where = f"{info_path} entry {name!r}"
    if "file_name" not in entry:
        remote = [k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if k in entry]
        raise FormatError(f"{where}: {remote or 'no file_name'}; vigorl reads local files: download it and name it "
                          "with file_name")
    target = data_dir / entry["file_name"]
    if target.is_dir():
        files = sorted(f for f in target.iterdir() if f.suffix in _SUFFIXES and f.is_file())
    else:
        files = [target]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"{where}: file_name {entry['file_name']!r} not found under {data_dir}")
    return files, SFTAttr.from_entry(entry, where)


def sft_sources(data: str, dataset: str = "", val_dataset: str = "", image_root_: str = ""
                ) -> tuple[dict[str, list[tuple[Path, SFTAttr | None]]], Path]:
    """What `vigorl sft` reads: {"train": [(file, attrs or None: detect from the rows)], "val": [...]} and the
    image root. `data=DIR dataset=NAME[,NAME]` reads dataset_info.json entries (val_dataset likewise), images
    under DIR; `data=FILE` reads one file (val_dataset: another file), images under its dir; `data=DIR` alone
    is vigorl's own train.jsonl / val.jsonl (`vigorl linearize`). `image_root_` overrides the image dir."""
    p = Path(data)
    out: dict[str, list] = {"train": [], "val": []}
    if p.is_dir() and dataset:
        for split, names in (("train", dataset), ("val", val_dataset)):
            for name in [n.strip() for n in names.split(",") if n.strip()]:
                files, attr = dataset_files(p, name)
                out[split] += [(f, attr) for f in files]
        root = p
    elif p.is_dir():
        if not (p / "train.jsonl").is_file() and (p / DATASET_INFO).is_file():
            raise FileNotFoundError(f"{p}: no train.jsonl; it has a {DATASET_INFO}: name an entry with dataset=NAME")
        out["train"] = [(p / "train.jsonl", None)]
        if val_dataset:
            out["val"] = [(Path(val_dataset), None)]
        elif (p / "val.jsonl").is_file():
            out["val"] = [(p / "val.jsonl", None)]
        root = p
    elif p.is_file():
        if dataset:
            raise ValueError(f"dataset={dataset}: data={data} is a file; dataset= names an entry of DIR/{DATASET_INFO} "
                             "(data=DIR)")
        out["train"] = [(p, None)]
        if val_dataset:
            out["val"] = [(Path(val_dataset), None)]
        root = p.parent
    else:
        raise FileNotFoundError(f"data={data} does not exist (a dir with train.jsonl or {DATASET_INFO}, or a "
                                ".json / .jsonl / .parquet file)")
    for split, files in out.items():
        for f, _ in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: no {split} data" + (" (run `vigorl linearize` first)"
                                                                   if f.name == "train.jsonl" else ""))
    return out, Path(image_root_) if image_root_ else root


def read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row object) of a .jsonl, a .json array or a .parquet file; a corrupt line is a FormatError."""
    part = _parquet_part(path) if path.suffix == ".parquet" else _json_part(path)
    for _, where, obj in _rows(part, ""):
        yield where, obj


def to_chat(obj: Any, attr: SFTAttr, where: str) -> dict:
    """A row -> {"messages": [{role: system|user|assistant, content}], "images": [...], and the row's
    question_id / image_size}, as LLaMA-Factory's converters align it (converter.py): sharegpt takes a leading
    system-tag message (else the `system` column) as the system prompt and requires user / observation turns at
    even and assistant / function turns at odd positions, ending with an assistant turn; alpaca is history +
    (instruction\\ninput, output). Observation turns become user turns and function calls assistant turns
    (vigorl's and the released multi-turn data carry observations as user turns). Raises FormatError."""
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a row object, got {type(obj).__name__}")
    out: list[dict] = []
    if attr.formatting == "sharegpt":
        msgs = obj.get(attr.messages)
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise FormatError(f"{where}, column {attr.messages!r}: expected a list of messages, got {msgs!r:.80}")
        system = ""
        if msgs and msgs[0].get(attr.role_tag) == attr.system_tag:
            system, msgs = msgs[0].get(attr.content_tag), msgs[1:]
        elif attr.system:
            system = obj.get(attr.system) or ""
        role_of = {attr.user_tag: "user", attr.observation_tag: "user", attr.assistant_tag: "assistant",
                   attr.function_tag: "assistant"}
        accept = ((attr.user_tag, attr.observation_tag), (attr.assistant_tag, attr.function_tag))
        for k, m in enumerate(msgs):
            role, content = m.get(attr.role_tag), m.get(attr.content_tag)
            if role not in accept[k % 2]:
                raise FormatError(f"{where}, column {attr.messages!r} message {k}: role {role!r} where "
                                  f"{' or '.join(map(repr, accept[k % 2]))} must be (turns alternate, as "
                                  "LLaMA-Factory requires)")
            if not isinstance(content, str):
                raise FormatError(f"{where}, column {attr.messages!r} message {k}: {attr.content_tag!r} is not text")
            out.append({"role": role_of[role], "content": content})
        if len(out) % 2:
            raise FormatError(f"{where}, column {attr.messages!r}: {len(out)} messages after the system prompt; they "
                              "must end with an assistant turn")
    else:
        history = obj.get(attr.history) if attr.history else None
        for pair in history if isinstance(history, list) else []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise FormatError(f"{where}, column {attr.history!r}: expected [prompt, response] pairs")
            out += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
        query = "\n".join(str(obj[c]) for c in (attr.prompt, attr.query) if c and obj.get(c))
        response = obj.get(attr.response)
        if not isinstance(response, str):
            raise FormatError(f"{where}, column {attr.response!r}: expected the response text")
        out += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
        system = (obj.get(attr.system) or "") if attr.system else ""
    if system:
        if not isinstance(system, str):
            raise FormatError(f"{where}: the system prompt is not text")
        out.insert(0, {"role": "system", "content": system})
    if attr.images:
        images = obj.get(attr.images)
        images = [] if images is None else images if isinstance(images, list) else [images]
    else:
        images = []
        if obj.get("images"):
            raise FormatError(f"{where}: the row has images but its dataset_info.json entry names no images column, "
                              'so LLaMA-Factory reads none: add "images": "images" to its columns')
    row = {"messages": out, "images": [_sft_image(v, where, attr.images) for v in images]}
    for key in ("question_id", "image_size"):
        if key in obj:
            row[key] = obj[key]
    return row


def _sft_image(value: Any, where: str, column: str | None) -> str:
    """An SFT image cell -> a path (relative to the image root) or, for embedded bytes, sha256:<hex>."""
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return store_image(bytes(value))
    if isinstance(value, str) and value:
        return value
    raise FormatError(f"{where}, column {column!r}: expected an image path, {{bytes, path}} or bytes, got "
                      f"{type(value).__name__}")
