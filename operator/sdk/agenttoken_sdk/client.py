"""The token source for agents: read the current token from the Secret the operator keeps fresh.

The operator writes one JSON bundle per AgentToken into a Secret ({"token", "tokenId", "issuedAt",
"expiresAt", "revision", "scopes", "audience"}) and rotates it well before expiry; the kubelet
projects the Secret into the pod. An agent only has to re-read the file, which is what TokenSource
does, carefully:

* Kubelet's AtomicWriter puts every version of the volume in its own timestamped directory and
  flips the `..data` symlink to the new one, then deletes the old one. We resolve `..data` once per
  read and open the file inside the directory it names, so token and metadata always come from one
  snapshot; if that directory vanished between the two steps (an update raced us) we resolve again.
  Without `..data` (a plain directory, local development) the file is read directly.
* token() is called per request, so it costs a readlink and a stat; the file is parsed again only
  when the resolved directory, inode, size or mtime changed.
* It never hands out an expired token, or one with less than `min_remaining` left: such a token is
  re-read once (the operator may just have rotated it) and otherwise reported as TokenExpiredError.
  The expiry is the earlier of the bundle's expiresAt and the JWT's own exp, when it has one.
* A file that does not parse (someone wrote it non-atomically and we saw half of it) is reported as
  unavailable and not cached, so the next call reads it again; a torn token is never returned.
* The standard library only at import time: `requests` and `httpx` are optional and imported only
  when requests_auth() / httpx_auth() is called.
* A token is a bearer secret: it is never put into an exception message or a repr.
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from agenttoken_sdk.times import now_utc, parse_time

__all__ = [
    "DEFAULT_BUNDLE_KEY",
    "TokenExpiredError",
    "TokenInfo",
    "TokenSource",
    "TokenUnavailableError",
    "now_utc",
]

DEFAULT_BUNDLE_KEY: Final = "token.json"
# The symlink AtomicWriter points at the current timestamped directory.
_DATA_LINK: Final = "..data"
# A bundle is a few KiB; anything much larger is not one.
_MAX_BUNDLE_BYTES: Final = 1024 * 1024
# How often to re-resolve `..data` when the directory it named disappeared under us.
_RESOLVE_ATTEMPTS: Final = 5


class TokenUnavailableError(RuntimeError):
    """There is no usable token: the bundle is missing, unreadable or malformed (or expired)."""


class TokenExpiredError(TokenUnavailableError):
    """The bundle only holds a token that has expired or is about to."""

    def __init__(self, message: str, *, token_id: str, expires_at: datetime) -> None:
        super().__init__(message)
        self.token_id = token_id
        self.expires_at = expires_at


@dataclass(frozen=True)
class TokenInfo:
    """The current token and what the operator recorded about it. The token is hidden from repr."""

    token_id: str
    expires_at: datetime
    issued_at: datetime
    revision: int
    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    token: str = field(repr=False)


@dataclass(frozen=True)
class _Snapshot:
    identity: tuple[object, ...]
    info: TokenInfo


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """A JWT's claims, NOT verified: for what the holder may read about its own token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return payload if isinstance(payload, dict) else None


def _jwt_expiry(token: str) -> datetime | None:
    """The exp claim of a JWT (not verified: only used to never serve a token longer than it lives)."""
    payload = _jwt_claims(token)
    exp = payload.get("exp") if payload is not None else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _str_list(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _parse_bundle(data: bytes, where: str) -> TokenInfo:
    try:
        doc = json.loads(data)
    except ValueError:
        raise TokenUnavailableError(
            f"token bundle {where} is not valid JSON (being written, or corrupt)"
        ) from None
    if not isinstance(doc, dict):
        raise TokenUnavailableError(f"token bundle {where} is not a JSON object")

    def bad(name: str, expected: str) -> TokenUnavailableError:
        return TokenUnavailableError(f"token bundle {where}: field {name!r} must be {expected}")

    token, token_id, revision = doc.get("token"), doc.get("tokenId"), doc.get("revision")
    if not isinstance(token, str) or not token:
        raise bad("token", "a non-empty string")
    if not isinstance(token_id, str) or not token_id:
        raise bad("tokenId", "a non-empty string")
    issued_at, expires_at = parse_time(doc.get("issuedAt")), parse_time(doc.get("expiresAt"))
    if issued_at is None:
        raise bad("issuedAt", "an RFC 3339 time")
    if expires_at is None:
        raise bad("expiresAt", "an RFC 3339 time")
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise bad("revision", "an integer")
    scopes, audience = _str_list(doc.get("scopes", [])), _str_list(doc.get("audience", []))
    if scopes is None:
        raise bad("scopes", "a list of strings")
    if audience is None:
        raise bad("audience", "a list of strings")
    jwt_exp = _jwt_expiry(token)
    if jwt_exp is not None and jwt_exp < expires_at:
        expires_at = jwt_exp
    return TokenInfo(
        token_id=token_id,
        expires_at=expires_at,
        issued_at=issued_at,
        revision=revision,
        scopes=scopes,
        audience=audience,
        token=token,
    )


class TokenSource:
    """The current token from a mounted Secret directory (or any directory holding the bundle).

    Thread-safe; token() is cheap enough to call for every request. `clock` must return aware
    datetimes; a token is served only while it has at least `min_remaining` left.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        bundle_key: str = DEFAULT_BUNDLE_KEY,
        clock: Callable[[], datetime] = now_utc,
        min_remaining: timedelta = timedelta(seconds=5),
    ) -> None:
        if not bundle_key or bundle_key.startswith("..") or "/" in bundle_key or "\\" in bundle_key:
            raise ValueError("bundle_key must be a plain file name (a Secret key)")
        if min_remaining < timedelta(0):
            raise ValueError("min_remaining must not be negative")
        self._dir = Path(directory)
        self._key = bundle_key
        self._clock = clock
        self._min_remaining = min_remaining
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    @property
    def path(self) -> Path:
        """The bundle's path as a reader sees it: <directory>/<bundle_key>."""
        return self._dir / self._key

    def __repr__(self) -> str:
        return f"TokenSource({str(self.path)!r})"

    def token(self) -> str:
        """The current token. Raises TokenExpiredError / TokenUnavailableError when there is none."""
        return self.info().token

    def info(self) -> TokenInfo:
        """The current token with its metadata; the same rules as token()."""
        with self._lock:
            info = self._load(force=False)
            if self._usable(info):
                return info
            # The operator may have rotated it in a way we could not see (same inode and mtime).
            info = self._load(force=True)
            now = self._clock()
            if info.expires_at - now >= self._min_remaining:
                return info
            state = "expired" if info.expires_at <= now else f"expires in less than {self._min_remaining}"
            raise TokenExpiredError(
                f"token {info.token_id} in {self.path} {state} (expiresAt {info.expires_at.isoformat()}); "
                "the operator has not renewed it",
                token_id=info.token_id,
                expires_at=info.expires_at,
            )

    def requests_auth(self) -> Any:
        """A requests.auth.AuthBase that sends `Authorization: Bearer <token>`: `session.auth = ...`.

        Imports requests on first use (ImportError if it is not installed).
        """
        return _requests_auth_class()(self)

    def httpx_auth(self) -> Any:
        """An httpx.Auth (sync and async clients) that sends `Authorization: Bearer <token>`.

        Imports httpx on first use (ImportError if it is not installed).
        """
        return _httpx_auth_class()(self)

    # ------------------------------------------------------------------ reading

    def _usable(self, info: TokenInfo) -> bool:
        return info.expires_at - self._clock() >= self._min_remaining

    def _resolve(self) -> tuple[Path, bool]:
        """The file to read and whether it sits in an AtomicWriter snapshot directory."""
        link = self._dir / _DATA_LINK
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return self._dir / self._key, False
        except OSError:  # `..data` exists but is no symlink: read through it like a directory
            return link / self._key, False
        # Resolved once: everything read below comes from the snapshot `..data` named just now.
        return self._dir / target / self._key, True

    def _load(self, *, force: bool) -> TokenInfo:
        for _ in range(_RESOLVE_ATTEMPTS):
            path, in_snapshot = self._resolve()
            try:
                snapshot = None if force else self._snapshot
                if snapshot is not None and snapshot.identity == _identity(path, os.stat(path)):
                    return snapshot.info
                with open(path, "rb") as file:
                    identity = _identity(path, os.fstat(file.fileno()))
                    data = file.read(_MAX_BUNDLE_BYTES + 1)
            except FileNotFoundError:
                if in_snapshot:
                    continue  # the kubelet replaced the snapshot we resolved: resolve again
                raise TokenUnavailableError(f"token bundle {self.path} does not exist") from None
            except OSError as error:
                raise TokenUnavailableError(
                    f"token bundle {self.path} cannot be read: {error.strerror or type(error).__name__}"
                ) from None
            self._snapshot = None
            if len(data) > _MAX_BUNDLE_BYTES:
                raise TokenUnavailableError(
                    f"token bundle {self.path} is larger than {_MAX_BUNDLE_BYTES} bytes"
                )
            info = _parse_bundle(data, str(self.path))
            self._snapshot = _Snapshot(identity, info)
            return info
        raise TokenUnavailableError(f"token bundle {self.path} kept changing while being read")


def _identity(path: Path, st: os.stat_result) -> tuple[object, ...]:
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _HasToken(Protocol):
    def token(self) -> str: ...


def _bearer(source: _HasToken) -> str:
    return f"Bearer {source.token()}"


@functools.cache
def _requests_auth_class() -> type[Any]:
    base: Any = importlib.import_module("requests.auth").AuthBase

    class TokenSourceAuth(base):  # type: ignore[misc]  # base comes from an optional module
        """Sets the Authorization header from a TokenSource on every request."""

        def __init__(self, source: _HasToken) -> None:
            self.source = source

        def __call__(self, request: Any) -> Any:
            request.headers["Authorization"] = _bearer(self.source)
            return request

        def __repr__(self) -> str:
            return f"TokenSourceAuth({self.source!r})"

    return TokenSourceAuth


@functools.cache
def _httpx_auth_class() -> type[Any]:
    base: Any = importlib.import_module("httpx").Auth

    class TokenSourceAuth(base):  # type: ignore[misc]  # base comes from an optional module
        """Sets the Authorization header from a TokenSource; httpx runs auth_flow for sync and async."""

        def __init__(self, source: _HasToken) -> None:
            self.source = source

        def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
            request.headers["Authorization"] = _bearer(self.source)
            yield request

        def __repr__(self) -> str:
            return f"TokenSourceAuth({self.source!r})"

    return TokenSourceAuth
