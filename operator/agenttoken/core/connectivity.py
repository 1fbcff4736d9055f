"""The connectivity check a new token must pass before it is delivered (`spec.verify`). Pure.

What to request and how to judge the answer; `controllers.probe` makes the request. Messages name the
method, a redacted URL (no user info, query or fragment: they may hold credentials) and the
status code; never the token and never the response body.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

METHODS = ("GET", "HEAD", "POST")
DEFAULT_TIMEOUT = datetime.timedelta(seconds=5)
MAX_TIMEOUT = datetime.timedelta(seconds=30)


@dataclass(frozen=True)
class CARef:
    kind: str  # ConfigMap or Secret, in the AgentToken's namespace
    name: str
    key: str = "ca.crt"


@dataclass(frozen=True)
class VerifySpec:
    url: str
    method: str = "GET"
    expected_status: tuple[int, ...] = (200,)
    timeout: datetime.timedelta = DEFAULT_TIMEOUT
    ca_bundle: str | None = None
    ca_ref: CARef | None = None

    @property
    def target(self) -> str:
        return f"{self.method} {redact(self.url)}"


@dataclass(frozen=True)
class Result:
    ok: bool
    message: str
    status_code: int | None = None


def redact(url: str) -> str:
    """scheme://host[:port]/path: user info, query and fragment may carry credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse(raw: Mapping[str, Any] | None, parse_duration: Any) -> VerifySpec | None:
    """spec.verify, or None; ValueError names the field."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError("spec.verify must be an object")
    url = raw.get("url")
    if not isinstance(url, str):
        raise ValueError("spec.verify.url is required")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise ValueError("spec.verify.url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("spec.verify.url must be an http:// or https:// URL")
    method = raw.get("method", "GET")
    if method not in METHODS:
        raise ValueError(f"spec.verify.method must be one of {', '.join(METHODS)}")
    expected = raw.get("expectedStatus", [200])
    if (
        not isinstance(expected, list)
        or not expected
        or not all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in expected)
    ):
        raise ValueError("spec.verify.expectedStatus must be a list of HTTP status codes (100-599)")
    timeout = DEFAULT_TIMEOUT
    if raw.get("timeout") is not None:
        try:
            timeout = parse_duration(raw["timeout"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"spec.verify.timeout: {exc}") from None
        if timeout > MAX_TIMEOUT:
            raise ValueError("spec.verify.timeout must be at most 30s")
    ca_bundle = raw.get("caBundle") or None
    ref = raw.get("caBundleRef")
    ca_ref = None
    if ref is not None:
        if ca_bundle is not None:
            raise ValueError("spec.verify.caBundle and spec.verify.caBundleRef are mutually exclusive")
        if (
            not isinstance(ref, Mapping)
            or ref.get("kind") not in ("ConfigMap", "Secret")
            or not ref.get("name")
        ):
            raise ValueError("spec.verify.caBundleRef needs kind (ConfigMap or Secret) and name")
        ca_ref = CARef(kind=ref["kind"], name=ref["name"], key=ref.get("key") or "ca.crt")
    return VerifySpec(
        url=url,
        method=method,
        expected_status=tuple(expected),
        timeout=timeout,
        ca_bundle=ca_bundle,
        ca_ref=ca_ref,
    )


def judge(spec: VerifySpec, status_code: int) -> Result:
    """Did the API accept the new token?"""
    expected = ", ".join(map(str, spec.expected_status))
    if status_code in spec.expected_status:
        return Result(True, f"{spec.target} answered HTTP {status_code}", status_code)
    return Result(
        False,
        f"{spec.target} answered HTTP {status_code} with the new token (expected {expected})",
        status_code,
    )
