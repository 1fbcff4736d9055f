"""The CRD schemas themselves: every field is explained, and duration fields cannot break CEL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.yaml"))
# apiVersion/kind/metadata are described by Kubernetes itself for every object.
STANDARD = {"apiVersion", "kind", "metadata"}


def schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            yield f"{crd['spec']['names']['kind']}/{version['name']}", version["schema"]["openAPIV3Schema"]


def properties(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property under schema, with its dotted path (`[]` for list items, `{}` for map values)."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from properties(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from properties(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize(("kind", "schema"), list(schemas()), ids=[k for k, _ in schemas()])
def test_every_field_is_described_for_kubectl_explain(kind: str, schema: dict[str, Any]) -> None:
    missing = [
        path
        for path, sub in properties(schema, kind)
        if path.rsplit(".", 1)[-1] not in STANDARD or path.count(".") > 1
        if not str(sub.get("description", "")).strip()
    ]
    assert not missing, f"fields without a description: {missing}"


def duration_rules() -> Iterator[tuple[str, str]]:
    for kind, schema in schemas():
        for path, sub in [(kind, schema), *properties(schema, kind)]:
            for rule in sub.get("x-kubernetes-validations", []):
                if "duration(" in rule["rule"]:
                    yield path, rule["rule"]


GUARD = re.compile(r"self(\.\w+)?\.matches\('([^']+)'\)")


def test_every_duration_is_parsed_only_after_its_shape_is_checked() -> None:
    """duration() on a string Go cannot parse (`99999999h` overflows int64 nanoseconds) fails the
    whole rule with a CEL type-conversion error instead of the rule's message; each rule first
    checks the string against the bounded shape, and CEL's && / || short-circuit both ways."""
    rules = list(duration_rules())
    assert len(rules) >= 10, rules
    for path, rule in rules:
        assert {m.group(2) for m in GUARD.finditer(rule)} == {DURATION_SHAPE}, f"{path}: {rule}"
        parsed = set(re.findall(r"duration\(self(\.\w+)?\)", rule))
        guarded = {m.group(1) or "" for m in GUARD.finditer(rule)}
        assert parsed <= guarded, f"{path}: duration() of an unchecked string: {rule}"


def schema_duration_shape() -> str:
    shapes = {m.group(2) for _, rule in duration_rules() for m in GUARD.finditer(rule)}
    assert len(shapes) == 1, shapes
    return shapes.pop()


DURATION_SHAPE = schema_duration_shape()
UNITS_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def go_duration_ns(text: str) -> float:
    return sum(float(n) * UNITS_NS[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", text))


@given(st.from_regex(DURATION_SHAPE.replace("^", r"\A").replace("$", r"\Z")).filter(lambda s: len(s) <= 32))
@settings(max_examples=300, deadline=None)
def test_the_duration_shape_never_overflows_go(text: str) -> None:
    assert go_duration_ns(text) < 2**63


@pytest.mark.parametrize(
    "text", ["9" * 9 + "s" + "9" * 9 + "s" + "9" * 9 + "s", "99999h" * 5, "9999999m" * 4]
)
def test_the_longest_numbers_the_shape_admits_still_fit(text: str) -> None:
    assert re.fullmatch(DURATION_SHAPE, text)
    assert len(text) <= 32
    assert go_duration_ns(text) < 2**63


@pytest.mark.parametrize("text", ["99999999h", "100000h", "1d", "one hour", "1h 30m", "-5m", ".5s", "1us"])
def test_the_duration_shape_refuses_absurd_and_foreign_input(text: str) -> None:
    assert not re.fullmatch(DURATION_SHAPE, text)


def test_the_crds_use_the_names_api_py_defines() -> None:
    from agenttoken import api

    names = {
        (c["spec"]["names"]["kind"], c["spec"]["names"]["plural"])
        for c in map(yaml.safe_load, map(Path.read_text, CRDS))
    }
    assert names == {(api.AGENTTOKEN_KIND, api.AGENTTOKEN_PLURAL), *api.ISSUER_PLURALS.items()}
    assert {yaml.safe_load(p.read_text())["spec"]["group"] for p in CRDS} == {api.GROUP}
