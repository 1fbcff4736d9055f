"""How commands print: a table by default, or `-o json` / `-o yaml` of the same data."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import yaml


def emit(data: Any, fmt: str, table: Callable[[Any], str]) -> None:
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=True), end="")
    else:
        print(table(data))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
