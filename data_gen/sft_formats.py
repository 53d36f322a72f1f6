"""SFT conversations in LLaMA-Factory's dataset conventions: what `vigorl sft` reads (`sft_sources`: entries of a
dataset_info.json, one file, or vigorl's own train.jsonl / val.jsonl), its rows (`read_records`: .jsonl, .json,
.parquet, data_gen/tables.py) and each row as a chat (`to_chat`: sharegpt with `conversations` or `messages`,
alpaca), its images as paths under the image root or `sha256:<hex>`. learner/sft.py renders the chat with the
checkpoint's template and masks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from data_gen.images import store_image
from data_gen.tables import SUFFIXES, FormatError, json_part, parquet_part, table_rows

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
        files = sorted(f for f in target.iterdir() if f.suffix in SUFFIXES and f.is_file())
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
    part = parquet_part(path) if path.suffix == ".parquet" else json_part(path)
    for _, where, obj in table_rows(part):
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
