"""Typed records <-> Arrow. A record is a dataclass; its Arrow schema is derived from its type hints,
never written by hand, so the Python type and the wire format cannot drift apart. Also the reader of the
append-only JSON-lines files that resumable jobs write one record at a time (`read_jsonl`).

Type map: int -> int64, float -> float64, str -> string, bool -> bool, `X | None` -> nullable X,
list[T] -> list<T>, tuple[T, ...] of fixed length n -> fixed_size_list<T, n>, nested dataclass -> struct,
`Annotated[T, pa_type]` -> pa_type (e.g. int32 token ids, float32 logprobs).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

T = TypeVar("T")

_SCALARS = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}


def arrow_type(tp: Any) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of a Python type hint."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        inner, nullable = arrow_type(args[0])
        explicit = next((a for a in args[1:] if isinstance(a, pa.DataType)), None)
        return (explicit or inner), nullable
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"only `X | None` unions map to Arrow, got {tp}")
        return arrow_type(rest[0])[0], True
    if tp in _SCALARS:
        return _SCALARS[tp], False
    if origin is list:
        return pa.list_(arrow_type(args[0])[0]), False
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return pa.list_(arrow_type(args[0])[0]), False
        if len(set(args)) != 1:
            raise TypeError(f"tuples must be homogeneous to map to Arrow, got {tp}")
        return pa.list_(arrow_type(args[0])[0], len(args)), False
    if dataclasses.is_dataclass(tp):
        return pa.struct(list(schema_of(tp))), False
    raise TypeError(f"no Arrow mapping for {tp}")


@lru_cache(maxsize=None)
def schema_of(cls: type) -> pa.Schema:
    """The Arrow schema of a dataclass record, with each field's comment-free name and nullability."""
    hints = get_type_hints(cls, include_extras=True)
    fields = []
    for f in dataclasses.fields(cls):
        typ, nullable = arrow_type(hints[f.name])
        fields.append(pa.field(f.name, typ, nullable=nullable))
    return pa.schema(fields, metadata={"record": f"{cls.__module__}.{cls.__qualname__}"})


def _to_python(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_python(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    return value


def _from_python(tp: Any, value: Any) -> Any:
    """Rebuild a typed value (tuples, nested dataclasses) from Arrow's to_pylist output."""
    if value is None:
        return None
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _from_python(args[0], value)
    if origin in (typing.Union, types.UnionType):
        return _from_python(next(a for a in args if a is not type(None)), value)
    if origin is list:
        return [_from_python(args[0], v) for v in value]
    if origin is tuple:
        return tuple(_from_python(args[0], v) for v in value)
    if dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp, include_extras=True)
        return tp(**{k: _from_python(hints[k], v) for k, v in value.items()})
    return value


def _flat_list_type(typ: pa.DataType) -> bool:
    """list<int/float>: the per-token columns, which go through numpy instead of Python objects."""
    return pa.types.is_list(typ) and (pa.types.is_integer(typ.value_type) or pa.types.is_floating(typ.value_type))


def _list_column(values: list[list], typ: pa.ListType) -> pa.Array:
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(v, dtype=typ.value_type.to_pandas_dtype()) for v in values]) if values else []
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, typ.value_type))


def to_batch(records: list[Any], cls: type | None = None) -> pa.RecordBatch:
    """Records -> one RecordBatch with the derived schema."""
    if cls is None:
        if not records:
            raise ValueError("to_batch of an empty list needs the record class")
        cls = type(records[0])
    schema = schema_of(cls)
    for r in records:
        if type(r) is not cls:
            raise TypeError(f"all records must be {cls.__name__}, got {type(r).__name__}")
    arrays = []
    for f in schema:
        values = [getattr(r, f.name) for r in records]
        if _flat_list_type(f.type):
            arrays.append(_list_column(values, f.type))
        else:
            arrays.append(pa.array([_to_python(v) for v in values], type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def from_batch(batch: pa.RecordBatch | pa.Table, cls: type[T]) -> list[T]:
    """A RecordBatch/Table with `cls`'s schema -> records. A schema mismatch is an error naming the fields."""
    expected = schema_of(cls)
    if not batch.schema.remove_metadata().equals(expected.remove_metadata()):
        missing = set(expected.names) - set(batch.schema.names)
        extra = set(batch.schema.names) - set(expected.names)
        raise ValueError(f"batch does not have the {cls.__name__} schema (missing {sorted(missing)}, "
                         f"extra {sorted(extra)}; or types differ)")
    hints = get_type_hints(cls, include_extras=True)
    cols = {}
    for f in expected:
        col = batch.column(f.name)
        if _flat_list_type(f.type):  # numpy split, then C-speed tolist per row
            col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            ends = np.cumsum(pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False))
            flat = col.flatten().to_numpy(zero_copy_only=False)
            cols[f.name] = [part.tolist() for part in np.split(flat, ends[:-1])] if len(col) else []
        else:
            cols[f.name] = [_from_python(hints[f.name], v) for v in col.to_pylist()]
    return [cls(**{k: cols[k][i] for k in expected.names}) for i in range(batch.num_rows)]


def read_jsonl(path: str | Path, check=None, what: str = "a record", truncate_partial: bool = False) -> list:
    """The lines of an append-only JSON-lines file that a job writes one flushed line at a time (MCTS trees,
    eval items). `check(obj)` raises ValueError on a line that parses but is not `what`. A bad last line is
    what a job killed mid-write leaves: dropped with a warning, and cut off the file with `truncate_partial`
    (which also ends a complete last line with its newline, so appending goes on cleanly). A bad line
    anywhere else raises ValueError naming the file and line. A missing file has no lines."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    entries, pos = [], 0
    for number, line in enumerate(raw.split(b"\n"), 1):
        if line.strip():
            entries.append((number, pos, line))
        pos += len(line) + 1
    out = []
    for k, (number, start, line) in enumerate(entries):
        try:
            obj = json.loads(line)
            if check is not None:
                check(obj)
        except ValueError as e:
            if k < len(entries) - 1:
                raise ValueError(f"{path} line {number}: not {what} ({e}); fix or remove the line, then "
                                 "rerun") from None
            warnings.warn(f"{path} line {number}: dropping a half-written last line ({e})", stacklevel=3)
            if truncate_partial:
                with open(path, "r+b") as f:
                    f.truncate(start)
            return out
        out.append(obj)
    if truncate_partial and raw and not raw.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
    return out
