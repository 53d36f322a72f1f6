"""Where the data is: the tables of rows a `data.path` (or an SFT data file) holds, read in batches of `BATCH`
(embedded image bytes are written out and dropped batch by batch). `data.path` is
  - a file: `.parquet`, `.jsonl` (JSON lines) or `.json` (a JSON array of objects);
  - a dir: its `prompts.parquet` (vigorl's own), a `datasets` `save_to_disk` dir (state.json + *.arrow, or a
    DatasetDict's dataset_dict.json; `DIR@split` picks a split, default train), else every *.parquet,
    *.jsonl and *.json in it, in name order (EasyR1 reads a dir as parquet files);
  - a Hub dataset id `name@split` (default split train), read with the `datasets` library from the Hub or,
    offline (HF_HUB_OFFLINE=1), from the local HF cache.
What the rows mean is the formats' business: prompts in data_gen/formats.py, SFT conversations in
data_gen/sft_formats.py. A file that cannot be read is a FormatError naming it (and the line, for JSON lines).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data_gen.rows import PROMPTS_FILE

SUFFIXES = (".parquet", ".jsonl", ".json")
_NOT_DATA = {"dataset_info.json", "state.json", "dataset_dict.json"}  # `datasets` / LLaMA-Factory metadata
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


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or
                              ((path / "state.json").is_file() and any(path.glob("*.arrow"))))


def _hub_like(name: str) -> bool:
    """A Hub dataset id: `name` or `org/name`. A path that looks local is not one: absolute or dotted, a data
    file name, or under a dir that exists here (so a typo in `runs/data/...` is "does not exist", not a Hub
    lookup)."""
    parts = name.split("/")
    return (0 < len(parts) <= 2 and all(p and not p.startswith((".", "~")) for p in parts)
            and not name.startswith("/") and not name.endswith(SUFFIXES)
            and not (len(parts) == 2 and os.path.isdir(parts[0])) and not os.path.exists(name))


@dataclass
class Part:
    """One table of rows: its name for messages, its columns, and its rows in batches (Arrow tables or lists of
    (line number, object) for JSON)."""

    label: str
    columns: list[str]
    batches: Any  # () -> Iterator[pa.Table | list[tuple[int, Any]]]
    lines: bool = False  # JSON lines: rows are named by line number


def json_part(path: Path) -> Part:
    """A .jsonl (rows named by line number) or .json (an array of row objects) file as one table."""
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
    return Part(str(path), list(first), lambda: iter([items[k:k + BATCH] for k in range(0, len(items), BATCH)]),
                 lines)


def parquet_part(path: Path) -> Part:
    """A parquet file as one table, read `BATCH` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise FormatError(f"{path}: not a parquet file ({e})") from None
    return Part(str(path), f.schema_arrow.names,
                 lambda: (pa.Table.from_batches([b]) for b in f.iter_batches(batch_size=BATCH)))


def _datasets_part(name: str, split: str | None, local: bool) -> Part:
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
    return Part(label, list(ds.column_names), lambda: (arrow[k:k + BATCH] for k in range(0, len(ds), BATCH)))


def parts(path: str) -> list[Part]:
    """The tables `data.path` holds, in order (see the module doc)."""
    name, split = split_spec(path)
    p = Path(name)
    if p.is_file():
        if split:
            raise FormatError(f"data.path={path}: a file has no splits")
        if p.suffix == ".parquet":
            return [parquet_part(p)]
        if p.suffix in (".jsonl", ".json"):
            return [json_part(p)]
        raise FormatError(f"data.path={p}: not a data file (.parquet, .jsonl or .json)")
    if p.is_dir():
        if _is_saved_dataset(p):
            return [_datasets_part(str(p), split, local=True)]
        if split:
            raise FormatError(f"data.path={path}: {p} is not a `datasets` save_to_disk dir, so it has no splits")
        if (p / PROMPTS_FILE).is_file():
            return [parquet_part(p / PROMPTS_FILE)]
        files = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.name not in _NOT_DATA and f.is_file())
        if not files:
            raise FormatError(f"data.path={p}: no {PROMPTS_FILE}, no *.parquet / *.jsonl / *.json and not a `datasets` "
                              "save_to_disk dir (make a synthetic set with `vigorl make-data`)")
        return [parquet_part(f) if f.suffix == ".parquet" else json_part(f) for f in files]
    if _hub_like(name):
        return [_datasets_part(name, split, local=False)]
    raise FileNotFoundError(f"data.path: {path} does not exist (a file, a dir, or a Hub dataset id name@split)")


def table_rows(part: Part, cast=None) -> Iterator[tuple[int, str, Any]]:
    """(row index, where, row object) of a table, converting Arrow batches to Python one batch at a time;
    `cast(batch, label, start)`, when given, rewrites each Arrow batch first (vigorl's column casts)."""
    i = 0
    for batch in part.batches():
        if isinstance(batch, list):
            for n, obj in batch:
                yield i, f"{part.label} {'line' if part.lines else 'row'} {n}", obj
                i += 1
        else:
            if cast is not None:
                batch = cast(batch, part.label, i)
            for obj in batch.to_pylist():
                yield i, f"{part.label} row {i}", obj
                i += 1


def exists(path: str) -> bool:
    """Whether data.path names data: a local file or dir (`DIR@split` too) or a Hub dataset id."""
    return Path(split_spec(path)[0]).exists() or is_hub_id(path)


def is_hub_id(path: str) -> bool:
    """Whether data.path names a Hub dataset (`name@split`, `org/name`) rather than a local file or dir."""
    return _hub_like(split_spec(path)[0]) and not Path(split_spec(path)[0]).exists()
