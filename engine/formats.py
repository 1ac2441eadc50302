"""Plain-data output in one place: values made JSON-safe, and Markdown tables. The CLI's ``--json``,
the store's sweep cells, ``results.json``, ``recipe.json``, ``report.md`` and the Compare page's
download all use these, so numpy scalars, tensors, paths and NaN are handled the same everywhere.
"""
from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import numpy as np


def json_default(obj: Any, strict: bool = False) -> Any:
    """For ``json.dumps(default=...)``: arrays and tensors to lists, numpy scalars to Python, paths and
    torch dtypes to text; anything else to ``str`` (``strict``: a TypeError naming the type)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if type(obj).__module__ == "torch" and type(obj).__name__ == "dtype":
        return str(obj).replace("torch.", "")
    if strict:
        raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
    return str(obj)


def strict_json_default(obj: Any) -> Any:
    """:func:`json_default` that refuses what it does not know (files whose every value must mean something)."""
    return json_default(obj, strict=True)


def jsonable(value: Any, nan_to_none: bool = False) -> Any:
    """A JSON-safe copy: keys to text, numpy scalars and arrays to Python; ``nan_to_none`` also turns NaN
    and infinities into ``None`` (for strict JSON that other tools read)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, nan_to_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, nan_to_none) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), nan_to_none) if nan_to_none else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if nan_to_none and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def markdown_table(frame, floatfmt: str = "{:.3f}", missing: str = "") -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (no tabulate dependency): floats by ``floatfmt``,
    None/NaN as ``missing``, pipes escaped and newlines folded so a cell never breaks the table."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
            return missing
        if isinstance(v, (float, np.floating)):
            return floatfmt.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in frame.columns]
    head = "| " + " | ".join(cols) + " |"
    rule = "| " + " | ".join("---" for _ in cols) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])
