"""Packaging checks that need no cluster: chart CRDs in sync, Argo CD health scripts under real Lua."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import lupa  # type: ignore[import-untyped]
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = REPO / "contrib" / "argocd" / "resource_customizations"
CASES = [
    (test_file.parent, case)
    for test_file in sorted(CUSTOMIZATIONS.glob("*/*/health_test.yaml"))
    for case in yaml.safe_load(test_file.read_text())["tests"]
]


def test_chart_crds_match_crds_dir() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "chart_crds.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _lua_value(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _lua_value(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_lua_value(lua, v) for v in value])
    return value


@pytest.mark.parametrize(("folder", "case"), CASES, ids=[f"{f.name}:{c['inputPath']}" for f, c in CASES])
def test_argocd_health_script(folder: Path, case: dict[str, Any]) -> None:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    obj = yaml.safe_load((folder / case["inputPath"]).read_text())
    lua.globals().obj = _lua_value(lua, obj)
    # Argo CD runs the script body as a chunk with `obj` bound; so do we.
    result = lua.execute((folder / "health.lua").read_text())
    assert result["status"] == case["healthStatus"]["status"]
    assert result["message"] == case["healthStatus"]["message"]


def test_every_kind_has_health_cases() -> None:
    assert len(CASES) >= 7
