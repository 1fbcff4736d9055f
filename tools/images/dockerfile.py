"""Read the runtime settings of the repository's Dockerfile, so the image built here cannot drift.

Only what an image config carries is read from the final stage: ENV, USER, WORKDIR, EXPOSE,
ENTRYPOINT, CMD (and LABEL). How the filesystem is made (RUN, COPY) is the recipe's business and
mirrors the Dockerfile by hand; tests/unit/test_images.py checks the two say the same.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from images.oci import ImageConfig

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass
class Stage:
    base: str
    name: str | None = None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current)
    return lines


def parse_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Build args declared before the first FROM (with defaults) and the stages in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = _expand(words[0], args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif keyword == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def _expand(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _exec_form(rest: str) -> list[str]:
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected the JSON (exec) form, got {rest!r}")
    return value


def runtime_config(dockerfile: Path, base_env: list[str]) -> ImageConfig:
    """The final stage's image config, on top of a base image whose environment is `base_env`."""
    _, stages = parse_stages(dockerfile.read_text())
    if not stages:
        raise ValueError(f"{dockerfile}: no FROM")
    env = dict(item.split("=", 1) for item in base_env)
    config = ImageConfig(env=[])
    for keyword, rest in stages[-1].instructions:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                if not sep:
                    raise ValueError(f"ENV {rest!r}: only the KEY=value form is supported")
                env[key] = _expand(value, env)
        elif keyword == "USER":
            config.user = _expand(rest, env)
        elif keyword == "WORKDIR":
            config.workdir = _expand(rest, env)
        elif keyword == "EXPOSE":
            config.exposed_ports.extend(rest.split())
        elif keyword == "ENTRYPOINT":
            config.entrypoint = _exec_form(rest)
        elif keyword == "CMD":
            config.cmd = _exec_form(rest)
        elif keyword == "LABEL":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                config.labels[key] = value
    config.env = [f"{k}={v}" for k, v in env.items()]
    return config
