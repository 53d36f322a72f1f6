"""The documentation of the config fields, for `vigorl <cmd> --help` and the value checks' messages: each
field's doc is the comment ending its definition in the source (configs/schema.py, configs/jobs.py)."""

from __future__ import annotations

import dataclasses
import re
import typing
from enum import Enum
from typing import Any


def field_docs(cls: type, full: bool = False) -> dict[str, str]:
    """Each field of dataclass `cls` -> its one-line doc: the comment ending its definition in the source
    (tokenize finds the comments, ast each field's lines, so a default spanning lines is no problem).
    `full`: a doc that says "see above" gets the comment block above the field prepended."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    if (cls, full) in _DOCS:
        return _DOCS[cls, full]
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): no docs rather than no config
        return _DOCS.setdefault((cls, full), {})
    lines = src.splitlines()
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    docs = {}
    for node in ast.parse(src).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = comments.get(node.end_lineno or node.lineno) or comments.get(node.lineno, "")
            if full and "see above" in doc:
                above, n = [], node.lineno - 1
                while n >= 1 and lines[n - 1].strip().startswith("#"):
                    above.insert(0, comments.get(n, ""))
                    n -= 1
                doc = " ".join(above + [re.sub(r"[;,]?\s*\(?see above\)?", "", doc).strip()]).strip()
            docs[node.target.id] = doc
    return _DOCS.setdefault((cls, full), docs)


_DOCS: dict[tuple[type, bool], dict[str, str]] = {}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "|".join(m.value for m in tp)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return "|".join(_type_name(a) for a in args if a is not type(None)) + "|null"
    return getattr(tp, "__name__", str(tp))


def shown(v: Any) -> str:
    """`v` as a user writes it in YAML or a key=value override (null, true, "")."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return str(v) if v else '""'
    return repr(v)


def describe(schema: type, obj: Any = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, one-line doc) of every field of `schema`, nested ones included, with the
    defaults of `schema()` (so a command's own defaults, e.g. eval's sampling temperature 0.5)."""
    obj = schema() if obj is None else obj
    hints, docs, out = typing.get_type_hints(type(obj)), field_docs(type(obj), full=True), []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += describe(type(v), v, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", _type_name(hints[f.name]), shown(v), docs.get(f.name, "")))
    return out
