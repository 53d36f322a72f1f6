"""The prompts of a train, eval or MCTS config, in the formats users have (`load_prompts`, `read_prompts`):
the tables data.path holds (a file, a dir, a Hub dataset id: data_gen/tables.py), each table's format named
(`data.format`) or told apart by its columns (`detect`, `auto`), each row built by its format into a
`data_gen.rows.PromptRow` (vigorl, easyr1, verl, released_eval: data_gen/prompt_formats.py), and a bad row
raised or skipped and counted by reason. `benchmark=` reads a benchmark's folder with its loader
(data_gen/benchmarks.py) or a released evaluation file. SFT conversations: data_gen/sft_formats.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from data_gen.prompt_formats import BUILDERS, Ctx, cast_vigorl
from data_gen.rows import PROMPTS_FILE, PromptRow
from data_gen.tables import FormatError, json_part, parts, split_spec, table_rows

FORMATS = ("auto", "vigorl", "easyr1", "verl", "released_eval")
# the task a benchmark's items are scored as, when they come in the released evaluation format
BENCHMARK_TASKS = {"vstar": "visual_search", "sat": "spatial", "blink": "spatial", "screenspot_v1": "gui_grounding",
                   "screenspot_v2_original": "gui_grounding", "screenspot_v2": "gui_grounding",
                   "screenspot_pro": "gui_grounding", "visualwebarena": "web_qa"}


# ---- where images resolve ---------------------------------------------------------------------------

def image_root(data) -> Path:
    """Where relative image paths of `data` (a DataConfig) resolve: data.image_root, else data.path when it is a
    dir, else the file's dir. The same function on the driver, the actors and the learner."""
    if getattr(data, "image_root", ""):
        return Path(data.image_root)
    path = Path(split_spec(data.path)[0])
    return path.parent if path.is_file() else path


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
        ctx = Ctx(root, task or getattr(data, "task", ""), part.label, data, source, benchmark)
        build = BUILDERS[kind]
        for i, where, obj in table_rows(part, cast_vigorl if kind == "vigorl" else None):
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


def read_rows(dataset_dir: str | Path) -> list[PromptRow]:
    """The rows of `dataset_dir/prompts.parquet` (or of a prompts file named directly), read by selecting and
    casting PromptRow's columns (any column order, extra columns, large_string, int widths);
    every row validated, a bad one named by file, row and column. Other formats: `load_prompts`."""
    path = Path(dataset_dir)
    path = path / PROMPTS_FILE if path.is_dir() or not path.suffix else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prompts file (make one with `vigorl make-data`)")
    return read_prompts(str(path), "vigorl", root=path.parent)[0]


def is_released_eval(path: Path) -> bool:
    """Whether a JSON lines / JSON file holds released evaluation rows (its first object has image and
    conversations)."""
    if not path.is_file() or path.suffix not in (".jsonl", ".json"):
        return False
    try:
        part = json_part(path)
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


