"""What the managed Secret must contain, and what an observed Secret actually holds.

The Secret carries the token plus a record of it in annotations (token id, hash, revision,
times, the spec hash it was minted for, the rotate request it answered). Status mirrors that
record, so a crash between writing the Secret and patching status is repaired by adopting the
record, never by minting again.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agenttoken import api
from agenttoken.core.model import AgentTokenSpec
from agenttoken.core.templates import TemplateError, render
from agenttoken.core.times import format_time, parse_time
from agenttoken.core.tokens import token_hash


@dataclass(frozen=True)
class TokenRecord:
    """Everything known about a minted token except the token itself."""

    token_id: str
    token_hash: str
    key_id: str
    revision: int
    issued_at: datetime.datetime
    expires_at: datetime.datetime
    spec_hash: str
    rotate_request: str | None = None
    # The token this one replaced: revoked once the rollout of this one has finished.
    previous_token_id: str | None = None
    previous_expires_at: datetime.datetime | None = None

    def annotations(self) -> dict[str, str]:
        ann = {
            api.ANN_TOKEN_ID: self.token_id,
            api.ANN_TOKEN_HASH: self.token_hash,
            api.ANN_KEY_ID: self.key_id,
            api.ANN_REVISION: str(self.revision),
            api.ANN_ISSUED_AT: format_time(self.issued_at) or "",
            api.ANN_EXPIRES_AT: format_time(self.expires_at) or "",
            api.ANN_SPEC_HASH: self.spec_hash,
        }
        if self.rotate_request is not None:
            ann[api.ANN_ROTATE_REQUEST] = self.rotate_request
        if self.previous_token_id and self.previous_expires_at:
            ann[api.ANN_PREVIOUS_TOKEN_ID] = self.previous_token_id
            ann[api.ANN_PREVIOUS_EXPIRES_AT] = format_time(self.previous_expires_at) or ""
        return ann

    @classmethod
    def from_annotations(cls, ann: Mapping[str, str]) -> TokenRecord | None:
        issued, expires = parse_time(ann.get(api.ANN_ISSUED_AT)), parse_time(ann.get(api.ANN_EXPIRES_AT))
        token_id, hash_, key_id = (
            ann.get(api.ANN_TOKEN_ID),
            ann.get(api.ANN_TOKEN_HASH),
            ann.get(api.ANN_KEY_ID),
        )
        try:
            revision = int(ann.get(api.ANN_REVISION, ""))
        except ValueError:
            return None
        if not (token_id and hash_ and key_id and issued and expires):
            return None
        return cls(
            token_id=token_id,
            token_hash=hash_,
            key_id=key_id,
            revision=revision,
            issued_at=issued,
            expires_at=expires,
            spec_hash=ann.get(api.ANN_SPEC_HASH, ""),
            rotate_request=ann.get(api.ANN_ROTATE_REQUEST),
            previous_token_id=ann.get(api.ANN_PREVIOUS_TOKEN_ID),
            previous_expires_at=parse_time(ann.get(api.ANN_PREVIOUS_EXPIRES_AT)),
        )


def token_values(token: str, record: TokenRecord, spec: AgentTokenSpec) -> dict[str, Any]:
    """The token and its metadata: the bundle's fields, and the variables of a config template."""
    return {
        "token": token,
        "tokenId": record.token_id,
        "issuedAt": format_time(record.issued_at),
        "expiresAt": format_time(record.expires_at),
        "revision": record.revision,
        "scopes": list(spec.scopes),
        "audience": list(spec.audience),
    }


def bundle(token: str, record: TokenRecord, spec: AgentTokenSpec) -> str:
    """One file with the token and its metadata, so a reader never pairs a new token with old metadata."""
    return json.dumps(token_values(token, record, spec), sort_keys=True, separators=(",", ":"))


def managed_data(token: str, record: TokenRecord, spec: AgentTokenSpec) -> dict[str, str]:
    """The managed keys as plain strings (the adapter base64-encodes them).

    Raises `TemplateError` when the config template cannot render: nothing is written then."""
    data = {
        spec.keys.token: token,
        spec.keys.expires_at: format_time(record.expires_at) or "",
        spec.keys.bundle: bundle(token, record, spec),
    }
    if spec.keys.env:
        data[spec.keys.env] = token
    if spec.config is not None:
        data[spec.config.key] = render(spec.config.template, token_values(token, record, spec))
    return data


def managed_keys(spec: AgentTokenSpec) -> tuple[str, ...]:
    return (*spec.keys.managed(), *((spec.config.key,) if spec.config else ()))


def owner_reference(namespace: str, name: str, uid: str) -> dict[str, Any]:
    del namespace  # owners are always in the Secret's own namespace
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.AGENTTOKEN_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def managed_labels(name: str, spec: AgentTokenSpec) -> dict[str, str]:
    return {**spec.labels, api.LABEL_MANAGED_BY: api.OPERATOR_NAME, api.LABEL_AGENTTOKEN: name}


def desired_secret_metadata(*, namespace: str, name: str, uid: str, spec: AgentTokenSpec) -> dict[str, Any]:
    """A Secret with our metadata and no data yet (a bound token needs the Secret's uid first)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": spec.secret_name,
            "namespace": namespace,
            "labels": managed_labels(name, spec),
            "annotations": dict(spec.annotations),
            "ownerReferences": [owner_reference(namespace, name, uid)],
        },
    }


def desired_secret(
    *,
    namespace: str,
    name: str,
    uid: str,
    spec: AgentTokenSpec,
    token: str,
    record: TokenRecord,
    stale: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A full Secret body (for create) or merge patch (for update): only keys we manage, and
    `null` for `stale` keys we wrote before and the spec no longer names (patch only)."""
    body = desired_secret_metadata(namespace=namespace, name=name, uid=uid, spec=spec)
    body["metadata"]["annotations"].update(record.annotations())
    body["metadata"]["annotations"][api.ANN_MANAGED_KEYS] = ",".join(managed_keys(spec))
    body["data"] = {**encode_data(managed_data(token, record, spec)), **dict.fromkeys(stale)}
    return body


def encode_data(data: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def decode_data(data: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (data or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            out[key] = ""  # undecodable content is "altered", never an exception with its bytes
    return out


@dataclass(frozen=True)
class ObservedSecret:
    """What the Secret in the cluster holds, reduced to the facts the renewal decision needs."""

    exists: bool
    owned: bool = False
    foreign: bool = False  # someone else's Secret: never overwrite it
    record: TokenRecord | None = None
    token: str | None = None  # never logged; kept so a repair can rewrite derived keys
    token_intact: bool = False
    drift: tuple[str, ...] = ()
    stale_keys: tuple[str, ...] = ()  # keys we wrote that the spec no longer names
    # The resourceVersion this was read at: the precondition of the write decided on it, so a
    # second writer (a stale leader) that decided on the same state gets a 409, not a second mint.
    version: str | None = None

    def __repr__(self) -> str:
        return (
            f"ObservedSecret(exists={self.exists}, owned={self.owned}, foreign={self.foreign}, token_intact={self.token_intact}, "
            f"record={self.record!r}, drift={self.drift!r})"
        )


MISSING = ObservedSecret(exists=False)


def observe(body: Mapping[str, Any] | None, *, name: str, uid: str, spec: AgentTokenSpec) -> ObservedSecret:
    """Compare an observed Secret with what it should hold; pure, no I/O."""
    if not body:
        return MISSING
    meta = body.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    owned = any(o.get("uid") == uid for o in owners)
    ann = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    record = TokenRecord.from_annotations(ann)
    data = decode_data(body.get("data"))
    token = data.get(spec.keys.token) or None
    intact = bool(record and token and token_hash(token) == record.token_hash)
    drift: list[str] = []
    if intact and record and token:
        try:
            expected = managed_data(token, record, spec)
        except TemplateError:
            # A template that cannot render is reported by the controller (Stalled); the
            # other keys are still compared.
            expected = managed_data(token, record, dataclasses.replace(spec, config=None))
        drift += [f"data[{k}]" for k, v in expected.items() if data.get(k) != v]
    # Only Secrets written since the annotation exists know their keys; older ones are left alone.
    written = [k for k in (ann.get(api.ANN_MANAGED_KEYS) or "").split(",") if k]
    stale = tuple(k for k in written if k not in managed_keys(spec) and k in data)
    drift += [f"data[{k}] (no longer in the spec)" for k in stale]
    want_labels = managed_labels(name, spec)
    drift += [f"label {k}" for k, v in want_labels.items() if labels.get(k) != v]
    drift += [f"annotation {k}" for k, v in spec.annotations.items() if ann.get(k) != v]
    if not owned:
        drift.append("ownerReference")
    return ObservedSecret(
        exists=True,
        owned=owned,
        foreign=is_foreign(body, uid),
        record=record,
        token=token,
        token_intact=intact,
        drift=tuple(drift),
        stale_keys=stale,
        version=meta.get("resourceVersion"),
    )


def is_foreign(body: Mapping[str, Any] | None, uid: str) -> bool:
    """A Secret we must not overwrite: someone else's (neither owned by this AgentToken nor ours)."""
    if not body:
        return False
    meta = body.get("metadata") or {}
    if any(o.get("uid") == uid for o in meta.get("ownerReferences") or []):
        return False
    if any(o.get("controller") for o in meta.get("ownerReferences") or []):
        return True  # controlled by something else, possibly another AgentToken
    return (meta.get("labels") or {}).get(api.LABEL_MANAGED_BY) != api.OPERATOR_NAME
