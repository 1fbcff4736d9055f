"""Per-pod tokens (AgentToken `delivery: PerPod`): the agent's side. No Secret, no file written.

The pod's projected ServiceAccount token (a `serviceAccountToken` volume source with `audience`
set to the operator's token endpoint URL, `<issuer>/token`) is sent as an RFC 7523 jwt-bearer
`assertion` to that endpoint; the answer is the pod's own access token, whose `kubernetes.io`
claim names the pod. `PodTokenSource` keeps one in memory and fetches the next when `refresh_at`
(by default half) of its lifetime has passed, so a slow or briefly failing endpoint never leaves
the agent without a valid token; the kubelet rotates the projected file and we read it again
for every fetch. Standard library only (urllib); requests/httpx hooks as `TokenSource` has.

`fetch_pod_token` is the plain function; tokens and assertions never reach a message or a repr.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from agenttoken_sdk.client import (
    TokenExpiredError,
    TokenInfo,
    TokenUnavailableError,
    _httpx_auth_class,
    _jwt_claims,
    _requests_auth_class,
)
from agenttoken_sdk.times import now_utc

__all__ = ["DEFAULT_ASSERTION_PATH", "JWT_BEARER", "PodTokenError", "PodTokenSource", "fetch_pod_token"]

JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Where the docs' pod template projects the ServiceAccount token for the endpoint.
DEFAULT_ASSERTION_PATH: Final = "/var/run/secrets/agenttoken.dev/serviceaccount/token"


class PodTokenError(TokenUnavailableError):
    """The endpoint refused the grant: `error` is its RFC 6749 code (invalid_grant, ...)."""

    def __init__(self, message: str, *, error: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status
        self.retry_after = retry_after


def _info(answer: dict[str, Any], now: datetime) -> TokenInfo:
    token = answer.get("access_token")
    expires_in = answer.get("expires_in")
    if not isinstance(token, str) or not isinstance(expires_in, int):
        raise TokenUnavailableError("the token endpoint answered without access_token/expires_in")
    claims = _jwt_claims(token) or {}
    aud = claims.get("aud")
    scope = answer.get("scope")
    return TokenInfo(
        token_id=str(claims.get("jti") or ""),
        expires_at=now + timedelta(seconds=expires_in),
        issued_at=now,
        revision=0,
        scopes=tuple(scope.split()) if isinstance(scope, str) else (),
        audience=tuple(aud) if isinstance(aud, list) else (aud,) if isinstance(aud, str) else (),
        token=token,
    )


def fetch_pod_token(
    endpoint: str,
    *,
    assertion_path: str | Path = DEFAULT_ASSERTION_PATH,
    scope: str | None = None,
    agenttoken: str | None = None,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], datetime] = now_utc,
) -> TokenInfo:
    """One grant at `endpoint` with the projected token at `assertion_path`."""
    try:
        assertion = Path(assertion_path).read_text().strip()
    except OSError as error:
        raise TokenUnavailableError(
            f"projected ServiceAccount token {assertion_path} cannot be read: {error.strerror}"
        ) from None
    if urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError("the token endpoint must be an http or https URL")
    form = {"grant_type": JWT_BEARER, "assertion": assertion}
    form.update({k: v for k, v in (("scope", scope), ("agenttoken", agenttoken)) if v is not None})
    request = urllib.request.Request(  # noqa: S310 (scheme checked)
        endpoint,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    now = clock()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:  # noqa: S310
            return _info(json.loads(response.read(1024 * 1024)), now)
    except urllib.error.HTTPError as error:
        try:
            body = json.loads(error.read(64 * 1024))
        except ValueError:
            body = {}
        code = str(body.get("error") or "server_error")
        retry = error.headers.get("Retry-After")
        raise PodTokenError(
            f"token endpoint refused the grant: {code}: {str(body.get('error_description') or '')[:200]}",
            error=code,
            status=error.code,
            retry_after=float(retry) if retry and retry.isdigit() else None,
        ) from None
    except (OSError, ValueError) as error:
        raise TokenUnavailableError(
            f"token endpoint {endpoint} unreachable: {type(error).__name__}"
        ) from None


class PodTokenSource:
    """The pod's current token, fetched and refreshed in memory. Thread-safe; `token()` is cheap
    while the token is fresh. A failed refresh keeps the current token while it has at least
    `min_remaining` left and tries again on the next call after `retry_after` seconds."""

    def __init__(
        self,
        endpoint: str,
        *,
        assertion_path: str | Path = DEFAULT_ASSERTION_PATH,
        scope: str | None = None,
        agenttoken: str | None = None,
        refresh_at: float = 0.5,
        min_remaining: timedelta = timedelta(seconds=5),
        retry_after: timedelta = timedelta(seconds=2),
        clock: Callable[[], datetime] = now_utc,
        fetch: Callable[..., TokenInfo] = fetch_pod_token,
    ) -> None:
        if not 0 < refresh_at < 1:
            raise ValueError("refresh_at must be a fraction of the lifetime between 0 and 1")
        self.endpoint = endpoint
        self._args = {
            "assertion_path": assertion_path,
            "scope": scope,
            "agenttoken": agenttoken,
            "clock": clock,
        }
        self._refresh_at, self._min_remaining, self._retry = refresh_at, min_remaining, retry_after
        self._clock, self._fetch = clock, fetch
        self._lock = threading.Lock()
        self._info: TokenInfo | None = None
        self._next_try: datetime | None = None
        self.refreshes = 0  # how many tokens were fetched (for tests and metrics)

    def __repr__(self) -> str:
        return f"PodTokenSource({self.endpoint!r})"

    def token(self) -> str:
        return self.info().token

    def info(self) -> TokenInfo:
        with self._lock:
            now = self._clock()
            current = self._info
            due = (
                current is None
                or now >= current.issued_at + (current.expires_at - current.issued_at) * self._refresh_at
            )
            if due and (self._next_try is None or now >= self._next_try or current is None):
                try:
                    self._info = current = self._fetch(self.endpoint, **self._args)
                    self.refreshes += 1
                    self._next_try = None
                except TokenUnavailableError:
                    self._next_try = now + self._retry
                    if current is None or current.expires_at - now < self._min_remaining:
                        raise
            assert current is not None
            if current.expires_at - now < self._min_remaining:
                raise TokenExpiredError(
                    f"per-pod token {current.token_id} expires too soon and could not be refreshed",
                    token_id=current.token_id,
                    expires_at=current.expires_at,
                )
            return current

    def requests_auth(self) -> Any:
        """A requests.auth.AuthBase sending this source's token (as TokenSource.requests_auth)."""
        return _requests_auth_class()(self)

    def httpx_auth(self) -> Any:
        """An httpx.Auth sending this source's token (as TokenSource.httpx_auth)."""
        return _httpx_auth_class()(self)
