"""Size limits from [architecture]: no module over ~400 lines, no function over ~60 lines, so a
concern stays findable and a function readable. "~": a few lines of slack, not a new limit.

Both distributions built from operator/ are held to it: the operator (agenttoken) and the SDK
(operator/sdk, agenttoken_sdk)."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "operator"
MODULE_LINES = 420
FUNCTION_LINES = 65


def modules() -> list[Path]:
    return [p for p in sorted(SOURCE_ROOT.rglob("*.py")) if "build" not in p.relative_to(SOURCE_ROOT).parts]


def test_no_module_is_too_long() -> None:
    long = {
        str(p.relative_to(SOURCE_ROOT)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MODULE_LINES
    }
    assert not long, f"modules over ~400 lines: {long}"


def test_no_function_is_too_long() -> None:
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long[f"{path.relative_to(SOURCE_ROOT)}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over ~60 lines: {long}"
