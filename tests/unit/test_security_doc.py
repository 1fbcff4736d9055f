"""docs/security.md names a test for every threat; each must exist, so the doc cannot rot."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"
TEST_ID = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def named_tests() -> list[tuple[str, str]]:
    return sorted(set(TEST_ID.findall(DOC.read_text())))


@cache
def functions_in(path: str) -> frozenset[str]:
    tree = ast.parse((REPO / path).read_text())
    return frozenset(
        node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )


def test_the_doc_names_tests() -> None:
    assert len(named_tests()) >= 30


@pytest.mark.parametrize(("path", "name"), named_tests(), ids=[f"{p}::{n}" for p, n in named_tests()])
def test_every_test_the_threat_model_names_exists(path: str, name: str) -> None:
    assert (REPO / path).is_file(), f"docs/security.md names {path}, which does not exist"
    assert name in functions_in(path), f"docs/security.md names {path}::{name}, which does not exist"


def test_every_threat_row_names_a_test_or_says_what_is_pending() -> None:
    """A row of a threat table ends with its proof: test ids, a pending marker, or a named gap."""
    threats = DOC.read_text().split("\n## Threats\n", 1)[1]
    threat_rows = [
        line
        for line in threats.splitlines()
        if line.startswith("| ") and not line.startswith("| threat ")  # a row, not the header
    ]
    assert len(threat_rows) >= 30
    for row in threat_rows:
        proof = row.rstrip(" |").rsplit("|", 1)[-1]
        assert TEST_ID.search(proof) or "(pending:" in proof or proof.strip().startswith("gap:"), row
