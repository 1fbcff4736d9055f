"""What an apiserver answer means: `KubeError` (HTTP status, the apiserver's short reason, the
fields its validation named) and the raw-JSON response readers the adapter uses. A request body
is never part of an error: it could hold a token."""

from __future__ import annotations

import json
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        # Fields the apiserver's own validation named (Status details.causes[].field). Admission
        # denials (policies, webhooks) answer 422 too, but name no field of the object.
        self.fields = fields

    @property
    def invalid_object(self) -> bool:
        """The object itself is invalid (422 naming its fields): sending it again cannot help."""
        return self.status == 422 and bool(self.fields)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def from_status(status: int, body: Any, reason: str | None) -> KubeError:
    """A KubeError from an apiserver Status body (message and the fields its causes name)."""
    if not isinstance(body, dict):
        return KubeError(status, (reason or "error")[:500])
    causes = (body.get("details") or {}).get("causes") or []
    fields = tuple(str(c["field"]) for c in causes if isinstance(c, dict) and c.get("field"))
    return KubeError(status, str(body.get("message") or reason or "error")[:500], fields)


def from_api_exception(exc: ApiException) -> KubeError:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = None
    return from_status(int(exc.status or 0), body, exc.reason)


async def read_json(coro: Any) -> dict[str, Any]:
    try:
        resp = await coro
    except ApiException as exc:
        raise from_api_exception(exc) from None
    raw = await resp.read()
    resp.release()
    result: dict[str, Any] = json.loads(raw) if raw else {}
    # Raw responses do not raise on error statuses by themselves.
    if resp.status >= 400:
        raise from_status(resp.status, result, resp.reason)
    return result


async def read_json_or_none(coro: Any) -> dict[str, Any] | None:
    """A read that answers None for a missing object."""
    try:
        return await read_json(coro)
    except KubeError as exc:
        if exc.not_found:
            return None
        raise
