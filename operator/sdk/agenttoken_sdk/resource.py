"""The resource server's side of OAuth, as plain data: RFC 9728, RFC 6750 and RFC 8707.

Pure functions, no I/O and no Verifier, so each rule is testable on its own and the ASGI/WSGI
middleware (agenttoken_sdk.asgi, agenttoken_sdk.wsgi) and the plain `authorize()` of
agenttoken_sdk.protect share one reading of the RFCs:

* RFC 8707 / RFC 9728 resource identifiers: `resource_uri_problem()` says what keeps a string from
  being a canonical resource URI. The same rules are CEL rules on AgentToken `spec.audience` (the
  CRD), so an audience the apiserver admits is one this SDK accepts as a resource, and a unit test
  holds the two readings together. Canonical: https (http only on a loopback host, for local
  development, as OAuth 2.1 allows for redirect URIs), lowercase scheme and host, no user info,
  no query, no fragment.
* RFC 9728 §3.1: the metadata of `https://host/mcp` lives at
  `https://host/.well-known/oauth-protected-resource/mcp`; MCP clients (spec 2025-11-25) try that
  first and then the root form, so both paths are served.
* RFC 6750 §3: the `WWW-Authenticate: Bearer` challenge, with `resource_metadata` (RFC 9728 §5.1)
  and `scope` (the MCP spec's SHOULD, so a client asks for exactly what the route needs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Final, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "PUBLIC",
    "WELL_KNOWN",
    "Response",
    "bearer_token",
    "challenge",
    "error_response",
    "is_resource_uri",
    "metadata_document",
    "metadata_paths",
    "metadata_url",
    "resource_uri_problem",
    "scopes_for",
]

WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
#: A route mapped to PUBLIC needs no token at all (health checks, the metadata itself).
PUBLIC: Final = None

# The regular expressions are the CRD's (crds/agenttoken.dev_agenttokens.yaml, spec.audience
# items), character for character: RE2 and Python's re read them alike, and
# tests/unit/test_resource_uri.py checks both readings on the same cases. The CRD writes them as
# raw CEL strings, so a backslash means the same in CEL as here.
_HTTP_URI: Final = re.compile(r"(?i)^https?://")
_HTTPS_OR_LOOPBACK: Final = re.compile(
    r"^https://|^http://(localhost|127([.][0-9]{1,3}){3}|\[::1\])(:[0-9]{1,5})?([/?#]|$)"
)
_AUTHORITY: Final = re.compile(
    r"^(?i:https?)://([a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(:[0-9]{1,5})?([/?#]|$)"
)
_QUERY_OR_FRAGMENT: Final = re.compile(r"[?#]")
_PATH: Final = re.compile(r"^[^/]*//[^/?#]*(/[A-Za-z0-9._~!$&()*+,;=:@%/-]*)?([?#].*)?$")

#: (pattern that must match, message) in the CRD's order; the messages are the CRD's too.
RESOURCE_URI_RULES: Final[tuple[tuple[re.Pattern[str], bool, str], ...]] = (
    (
        _HTTPS_OR_LOOPBACK,
        True,
        "a resource URI must use https with a lowercase scheme (http only for localhost, "
        "127.0.0.0/8 or [::1])",
    ),
    (
        _AUTHORITY,
        True,
        "a resource URI needs a lowercase host (letters, digits, dots and hyphens, or a "
        "bracketed IPv6 address), an optional port and no user info",
    ),
    (_QUERY_OR_FRAGMENT, False, "a resource URI must not have a query or a fragment (RFC 8707)"),
    (_PATH, True, "a resource URI path may hold only RFC 3986 path characters (percent-encode others)"),
)


def is_resource_uri(value: str) -> bool:
    """True for an http(s) URI, which must then be canonical; other audiences are opaque names."""
    return bool(_HTTP_URI.match(value))


def resource_uri_problem(value: str) -> str | None:
    """Why value is not a canonical RFC 8707 resource URI, or None when it is one.

    Anything that is not an http(s) URI is refused here; an AgentToken audience that is not one
    (`tickets-api`, `spiffe://...`) stays an opaque name and is not checked at all.
    """
    if not is_resource_uri(value):
        return "a resource URI must be an absolute https URI"
    problems = [m for pattern, must, m in RESOURCE_URI_RULES if bool(pattern.search(value)) != must]
    return "; ".join(problems) or None


def metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known path goes between the authority and the resource's path."""
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{path}"


def metadata_paths(resource: str) -> frozenset[str]:
    """The request paths that serve the metadata: the path-suffixed form and the root form."""
    return frozenset({urlsplit(metadata_url(resource)).path, WELL_KNOWN})


def metadata_document(
    resource: str,
    authorization_servers: Iterable[str],
    scopes_supported: Iterable[str],
    resource_name: str | None = None,
) -> dict[str, object]:
    """The RFC 9728 §2 document: only the header carries tokens (no query, no form body)."""
    doc: dict[str, object] = {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "scopes_supported": list(scopes_supported),
        "bearer_methods_supported": ["header"],
    }
    if resource_name:
        doc["resource_name"] = resource_name
    return doc


def scopes_for(
    routes: Mapping[str, Collection[str] | None], path: str, default: Collection[str] | None
) -> tuple[str, ...] | None:
    """The scopes a request path needs: the longest route prefix that matches it on a segment
    boundary (`/mcp` matches `/mcp` and `/mcp/x`, not `/mcpx`), else default. None: public."""
    best: str | None = None
    for prefix in routes:
        base = prefix.rstrip("/")
        matches = path == base or path.startswith(base + "/") or prefix == "/"
        if matches and (best is None or len(prefix) > len(best)):
            best = prefix
    scopes = routes[best] if best is not None else default
    return None if scopes is None else tuple(dict.fromkeys(scopes))


class MalformedAuthorization(ValueError):
    """The Authorization header is not one well-formed Bearer credential (RFC 6750 invalid_request)."""


# RFC 6750 §2.1: b64token, the characters a bearer token may hold.
_TOKEN68: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(values: Collection[str]) -> str | None:
    """The bearer token of the request's Authorization header values.

    None when there is no Bearer credential (no header, or another scheme: RFC 6750 §3.1 says to
    answer without an error code then). MalformedAuthorization for several headers or a Bearer
    credential that is not one b64token. The message never holds the header's value.
    """
    if not values:
        return None
    if len(values) > 1:
        raise MalformedAuthorization("more than one Authorization header")
    scheme, _, credentials = next(iter(values)).strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credentials = credentials.strip()
    if not _TOKEN68.fullmatch(credentials):
        raise MalformedAuthorization("the Bearer credential is not a single token")
    return credentials


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string; our values never hold quotes, backslashes or controls, but a
    description may one day quote something, so escape rather than trust."""
    cleaned = "".join(c if c.isprintable() else " " for c in value)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    resource_metadata: str,
    *,
    error: str | None = None,
    scope: Collection[str] = (),
    description: str | None = None,
) -> str:
    """The `WWW-Authenticate` value: `Bearer resource_metadata="…"`, then error, scope, description."""
    params = [("resource_metadata", resource_metadata)]
    if error:
        params.append(("error", error))
    if scope:
        params.append(("scope", " ".join(scope)))
    if description:
        params.append(("error_description", description))
    return "Bearer " + ", ".join(f"{k}={_quoted(v)}" for k, v in params)


class Response(NamedTuple):
    """An HTTP response the middleware sends instead of calling the application."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def reason(self) -> str:
        return _REASONS.get(self.status, "Error")


_REASONS: Final = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
}
_NO_STORE: Final = (("Cache-Control", "no-store"),)


def json_response(
    status: int, body: Mapping[str, object], headers: Iterable[tuple[str, str]] = ()
) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        status,
        (("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers),
        data,
    )


def error_response(
    status: int,
    resource_metadata: str,
    *,
    error: str | None = None,
    scope: Collection[str] = (),
    description: str | None = None,
) -> Response:
    """A 400/401/403 with its challenge; the JSON body repeats error and description for humans."""
    body = {
        "error": error or "unauthorized",
        "error_description": description or "a bearer token is required",
    }
    www = challenge(resource_metadata, error=error, scope=scope, description=description)
    return json_response(status, body, (("WWW-Authenticate", www), *_NO_STORE))
