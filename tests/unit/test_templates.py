"""Config templates: what renders, and that a template cannot reach files, the environment,
Python internals, or blow up the operator."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agenttoken.core import templates
from agenttoken.core.model import AgentTokenSpec, InvalidSpec, parse_spec
from agenttoken.core.secretdata import TokenRecord, desired_secret, managed_data, observe
from agenttoken.core.templates import PLACEHOLDERS, TemplateError, check, render
from agenttoken.core.tokens import token_hash

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNlY3JldA"
VALUES = {**PLACEHOLDERS, "token": TOKEN, "scopes": ["tickets:read", "tickets:comment"]}


def test_yaml_config_renders_the_token() -> None:
    out = render("api_token: {{ token }}\nscopes: {{ scopes | tojson }}\n", VALUES)
    assert yaml.safe_load(out) == {"api_token": TOKEN, "scopes": ["tickets:read", "tickets:comment"]}


def test_json_config_is_quoted_by_tojson() -> None:
    out = render('{"api_token": {{ token | tojson }}, "rev": {{ revision }}}', VALUES)
    assert json.loads(out) == {"api_token": TOKEN, "rev": 1}


def test_loops_and_conditions_work() -> None:
    template = "{% for s in scopes %}{% if not loop.first %},{% endif %}{{ s | upper }}{% endfor %}"
    assert render(template, VALUES) == "TICKETS:READ,TICKETS:COMMENT"
    assert render("{{ scopes | join(' ') }}", VALUES) == "tickets:read tickets:comment"


ESCAPES = [
    # files: no loader, and the statements are rejected before anything runs
    ("{% include '/etc/passwd' %}", "include is not allowed"),
    ("{% import '/etc/passwd' as p %}", "import is not allowed"),
    ("{% from '/etc/passwd' import x %}", "import is not allowed"),
    ("{% extends '/etc/passwd' %}", "extends is not allowed"),
    # environment and Python internals
    ("{{ lookup('env', 'HOME') }}", "calls is not allowed"),
    ("{{ environ }}", "'environ' is undefined"),
    ("{{ HOME }}", "'HOME' is undefined"),
    ("{{ token.__class__ }}", "forbidden by the sandbox"),
    ("{{ token.__class__.__mro__[1].__subclasses__() }}", "calls is not allowed"),
    ("{{ cycler.__init__.__globals__.os.environ }}", "forbidden by the sandbox"),
    ("{{ self._TemplateReference__context }}", "forbidden by the sandbox"),
    ("{{ scopes.append }}", "forbidden by the sandbox"),
    ("{{ range(10) }}", "calls is not allowed"),
    ("{{ lipsum }}", "'lipsum' is undefined"),
    ("{{ token | attr('__class__') }}", "filter 'attr' is not allowed"),
    ("{{ token | format('%s') }}", "filter 'format' is not allowed"),
    # size and time bombs
    ("{{ token * 100000000 }}", "the * operator is not allowed"),
    ("{{ 9 ** 9 ** 9 }}", "the ** operator is not allowed"),
    ("{{ '%999999999s' % token }}", "the % operator is not allowed"),
    ("{{ token | center(999999999) }}", "filter 'center' is not allowed"),
    ("{% set x = token ~ token %}{{ x }}", "set is not allowed"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "macro is not allowed"),
    ("{% for s in scopes recursive %}{{ loop(scopes) }}{% endfor %}", "recursive loops are not allowed"),
    (
        "{% for a in scopes %}{% for b in scopes %}{% for c in scopes %}x{% endfor %}{% endfor %}{% endfor %}",
        "nested at most 2 deep",
    ),
    ("{{ nope", "syntax error on line 1"),
    ("{{ undefined_name }}", "'undefined_name' is undefined"),
]


@pytest.mark.parametrize(("template", "message"), ESCAPES)
def test_escapes_and_bombs_are_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as checked:
        check(template)
    assert message in str(checked.value)
    with pytest.raises(TemplateError) as rendered:
        render(template, VALUES)
    assert TOKEN not in str(rendered.value)


def test_a_real_render_error_never_quotes_the_token() -> None:
    # A missing dict item quotes its key; with the real token as the key that would be a leak.
    template = "{{ {'a': 1}[token] }}"
    with pytest.raises(TemplateError) as checked:
        check(template)
    assert "has no attribute" in str(checked.value)  # detailed, but about the placeholder
    with pytest.raises(TemplateError) as rendered:
        render(template, VALUES)
    assert TOKEN not in str(rendered.value)
    assert rendered.value.__cause__ is None
    assert rendered.value.__context__ is None or TOKEN not in str(rendered.value.__context__)


def test_output_is_capped_even_through_nested_joins() -> None:
    many = {**VALUES, "scopes": ["x" * 100] * 64}
    template = "{{ scopes | join(scopes | join(scopes | join(token))) }}"
    with pytest.raises(TemplateError, match="larger than"):
        render(template, many)
    loop = "{% for a in scopes %}{% for b in scopes %}" + "{{ token }}" * 200 + "{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match="larger than"):
        render(loop, many)


def test_template_length_is_capped() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        check("x" * (templates.MAX_TEMPLATE_CHARS + 1))


def test_rendering_does_not_see_the_process_environment() -> None:
    os.environ["AGENTTOKEN_TEST_SECRET_ENV"] = "must-not-render"
    try:
        with pytest.raises(TemplateError):
            render("{{ AGENTTOKEN_TEST_SECRET_ENV }}", VALUES)
    finally:
        del os.environ["AGENTTOKEN_TEST_SECRET_ENV"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_renders_or_fails_with_a_template_error(text: str) -> None:
    message = ""
    try:
        out = render(text, VALUES)
    except TemplateError as exc:
        message = str(exc)
    else:
        assert isinstance(out, str)
    assert TOKEN not in message


# -- the Secret's managed keys --------------------------------------------------------------

T0 = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)


def _spec(secret: dict[str, object]) -> AgentTokenSpec:
    return parse_spec({"audience": ["https://api"], "scopes": ["a"], "ttl": "1h", "secret": secret})


def _record(spec: AgentTokenSpec) -> TokenRecord:
    return TokenRecord(
        token_id="jti-1",
        token_hash=token_hash(TOKEN),
        key_id="kid",
        revision=1,
        issued_at=T0,
        expires_at=T0 + dt.timedelta(hours=1),
        spec_hash=spec.claims_hash(),
    )


def test_env_key_and_config_key_hold_the_token() -> None:
    spec = _spec(
        {
            "name": "s",
            "keys": {"env": "AGENT_API_TOKEN"},
            "config": {"key": "config.yaml", "template": "api_token: {{ token }}\nid: {{ tokenId }}\n"},
        }
    )
    data = managed_data(TOKEN, _record(spec), spec)
    assert data["AGENT_API_TOKEN"] == TOKEN
    assert yaml.safe_load(data["config.yaml"]) == {"api_token": TOKEN, "id": "jti-1"}
    assert set(data) == {"token", "expires-at", "token.json", "AGENT_API_TOKEN", "config.yaml"}


def test_a_changed_template_is_drift_repaired_from_the_intact_token() -> None:
    old = _spec({"name": "s", "config": {"key": "c", "template": "a: {{ token }}"}})
    new = _spec({"name": "s", "config": {"key": "c", "template": "b: {{ token }}"}})
    body = desired_secret(namespace="n", name="x", uid="u", spec=old, token=TOKEN, record=_record(old))
    seen = observe(body, name="x", uid="u", spec=new)
    assert seen.token_intact
    assert seen.drift == ("data[c]",)


def test_observing_with_a_broken_template_does_not_raise() -> None:
    good = _spec({"name": "s", "config": {"key": "c", "template": "a: {{ token }}"}})
    broken = _spec({"name": "s", "config": {"key": "c", "template": "{{ nope }}"}})
    body = desired_secret(namespace="n", name="x", uid="u", spec=good, token=TOKEN, record=_record(good))
    seen = observe(body, name="x", uid="u", spec=broken)
    assert seen.token_intact
    assert seen.drift == ()
    with pytest.raises(TemplateError):
        managed_data(TOKEN, _record(broken), broken)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ({"name": "s", "keys": {"env": "agent-token"}}, "environment variable name"),
        ({"name": "s", "keys": {"env": "token"}}, "different keys"),
        ({"name": "s", "config": {"key": "token.json", "template": "x"}}, "different keys"),
        ({"name": "s", "keys": {"env": "A"}, "config": {"key": "A", "template": "x"}}, "different keys"),
        ({"name": "s", "config": {"key": "c"}}, "needs key and template"),
        ({"name": "s", "config": {"key": "a/b", "template": "x"}}, "valid Secret key"),
    ],
)
def test_invalid_delivery_specs(secret: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        _spec(secret)


def test_keys_dropped_from_the_spec_are_removed_not_left_stale() -> None:
    before = _spec(
        {"name": "s", "keys": {"env": "OLD_NAME"}, "config": {"key": "c", "template": "{{ token }}"}}
    )
    after = _spec({"name": "s", "keys": {"env": "NEW_NAME"}})
    body = desired_secret(namespace="n", name="x", uid="u", spec=before, token=TOKEN, record=_record(before))
    seen = observe(body, name="x", uid="u", spec=after)
    assert seen.stale_keys == ("OLD_NAME", "c")
    assert "data[OLD_NAME] (no longer in the spec)" in seen.drift
    patch = desired_secret(
        namespace="n",
        name="x",
        uid="u",
        spec=after,
        token=TOKEN,
        record=_record(after),
        stale=seen.stale_keys,
    )
    assert patch["data"]["OLD_NAME"] is None
    assert patch["data"]["c"] is None
    assert patch["data"]["NEW_NAME"]


def test_secrets_written_before_the_managed_keys_annotation_are_left_alone() -> None:
    spec = _spec({"name": "s"})
    body = desired_secret(namespace="n", name="x", uid="u", spec=spec, token=TOKEN, record=_record(spec))
    del body["metadata"]["annotations"]["agenttoken.dev/managed-keys"]
    body["data"]["someone-elses"] = "eA=="
    seen = observe(body, name="x", uid="u", spec=spec)
    assert (seen.stale_keys, seen.drift) == ((), ())
