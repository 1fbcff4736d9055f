"""Config templates: a user-supplied Jinja template rendered into its own Secret key. Pure.

Agents that read a config file (`api_token: ...` in YAML or JSON) get one rendered by the
operator. Whoever may create an AgentToken writes the template, and the operator renders it
with a token in hand, so the language is cut down to what a config file needs:

- jinja2's immutable sandbox (no `_` attributes, so no `__class__`/`__globals__` escapes),
  no loader (nothing to include, import or extend), no globals (no `range`, `lipsum`,
  `cycler`, ...), StrictUndefined (a typo is an error, not an empty string);
- an allowlist of syntax checked on the parsed template before anything runs: output,
  conditions, loops (not recursive, at most two deep) over the provided lists, literals,
  attribute and item access, comparisons, `~`, `+`, `-`, and a few filters. No calls, no
  `{% set %}`, no macros, no `*`, `**` or `%`: the ways a template makes huge strings or
  runs long are gone, and the output is capped while it streams.

Error messages from the real render never carry values (they could quote the token); the
detailed message comes from `check`, which renders the template with placeholder values.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 16384
MAX_OUTPUT_CHARS = 256 * 1024
MAX_LOOP_DEPTH = 2

VARIABLES = ("token", "tokenId", "issuedAt", "expiresAt", "revision", "scopes", "audience")

# Filters that cannot amplify their input by an argument (no widths, counts or replacements).
FILTERS = (
    "tojson",
    "upper",
    "lower",
    "trim",
    "default",
    "d",
    "join",
    "string",
    "length",
    "first",
    "last",
)

_ALLOWED = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.List,
    nodes.Tuple,
    nodes.Dict,
    nodes.Pair,
    nodes.Keyword,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Slice,
    nodes.Filter,
    nodes.Test,
    nodes.If,
    nodes.For,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.Concat,
    nodes.Add,
    nodes.Sub,
)

_NAMES = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "import",
    nodes.Extends: "extends",
    nodes.Block: "block",
    nodes.Macro: "macro",
    nodes.CallBlock: "call block",
    nodes.Call: "function or method calls",
    nodes.Assign: "set",
    nodes.AssignBlock: "set",
    nodes.FilterBlock: "filter block",
    nodes.With: "with",
    nodes.Mul: "the * operator",
    nodes.Pow: "the ** operator",
    nodes.Mod: "the % operator",
    nodes.Div: "the / operator",
    nodes.FloorDiv: "the // operator",
}


class TemplateError(ValueError):
    """The config template cannot be rendered; the message never contains token material."""


class _OutputTooLarge(Exception):
    pass


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=None,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=0,
    )
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in FILTERS}
    env.filters["join"] = _bounded_join
    return env


def _bounded_join(value: Any, d: str = "") -> str:
    """`join` whose separator cannot multiply the output past the cap (nested joins would)."""
    items = [str(v) for v in value]
    if sum(map(len, items)) + len(str(d)) * max(0, len(items) - 1) > MAX_OUTPUT_CHARS:
        raise _OutputTooLarge
    return str(d).join(items)


_ENV = _environment()


def _check_syntax(tree: nodes.Node, depth: int = 0) -> None:
    if not isinstance(tree, _ALLOWED):
        what = _NAMES.get(type(tree), type(tree).__name__)
        raise TemplateError(f"{what} is not allowed in config templates (line {tree.lineno})")
    if isinstance(tree, nodes.Filter) and tree.name not in FILTERS:
        raise TemplateError(
            f"filter {tree.name!r} is not allowed (line {tree.lineno}); allowed: {', '.join(FILTERS)}"
        )
    if isinstance(tree, nodes.For):
        if tree.recursive:
            raise TemplateError(f"recursive loops are not allowed (line {tree.lineno})")
        depth += 1
        if depth > MAX_LOOP_DEPTH:
            raise TemplateError(f"loops may be nested at most {MAX_LOOP_DEPTH} deep (line {tree.lineno})")
    for child in tree.iter_child_nodes():
        _check_syntax(child, depth)


@functools.lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    """Parse and check the template; TemplateError names the problem and its line.

    Cached by source: compiling costs ~1.5 ms, and every reconcile renders (drift check)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"syntax error on line {exc.lineno}: {exc.message}") from None
    _check_syntax(tree)
    return _ENV.from_string(tree)


def _render(template: jinja2.Template, values: Mapping[str, Any]) -> str:
    out: list[str] = []
    size = 0
    for chunk in template.generate(**values):
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise _OutputTooLarge
        out.append(chunk)
    return "".join(out)


def render(source: str, values: Mapping[str, Any]) -> str:
    """The rendered config. On error, only the kind of error: never a value, and no chained
    exception (jinja's own message may quote the token)."""
    template = compile_template(source)
    try:
        return _render(template, values)
    except _OutputTooLarge:
        problem = f"the rendered config is larger than {MAX_OUTPUT_CHARS} characters"
    except jinja2.UndefinedError:
        problem = "the template uses an undefined variable or attribute"
    except jinja2.exceptions.SecurityError:
        problem = "the template tried an operation the sandbox forbids"
    except Exception as exc:
        problem = f"the template failed to render ({type(exc).__name__})"
    raise TemplateError(problem)  # outside the handlers, so no __context__ carries the original


PLACEHOLDERS: Mapping[str, Any] = {
    "token": "eyJhbGciOiJFUzI1NiJ9.placeholder.signature",
    "tokenId": "00000000-0000-4000-8000-000000000000",
    "issuedAt": "2000-01-01T00:00:00Z",
    "expiresAt": "2000-01-01T01:00:00Z",
    "revision": 1,
    "scopes": ["scope:a", "scope:b"],
    "audience": ["https://api.example.com"],
}


@functools.lru_cache(maxsize=512)
def check(source: str) -> None:
    """Raise TemplateError with a detailed message if the template cannot render.

    Rendered with placeholder values, so the message may quote them safely."""
    template = compile_template(source)
    try:
        _render(template, PLACEHOLDERS)
    except _OutputTooLarge:
        raise TemplateError(f"the rendered config is larger than {MAX_OUTPUT_CHARS} characters") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"forbidden by the sandbox: {exc}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{exc.message}; available: {', '.join(VARIABLES)}") from None
    except Exception as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc}") from None
