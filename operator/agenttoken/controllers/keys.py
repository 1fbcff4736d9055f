"""Keeps the built-in issuer's key rings in the cluster, publishes their JWKS, and carries out
emergency key revocations.

Two rings live in one Secret in the operator's namespace: access-token keys (`keyring.json`) and
OAuth client-assertion keys (`assertion-keyring.json`, core.keys.PURPOSE_ASSERTION). Their public
halves go to a ConfigMap verifiers can mount: `jwks.json` holds only access-token keys (what every
verifier trusts); `client-jwks.json` only assertion keys (what the OAuth server is configured with
as the client's JWKS URL). So nothing signed by the assertion key ever verifies as an access token.

Emergency revocation: `agenttoken keys revoke KID` and GitOps both write the kid into the
ConfigMap `agenttoken-key-revocations` (key `revoked-kids`, one kid a line). That ConfigMap is the
decision, in the cluster: every replica stops publishing and signing with a requested kid the
moment it sees it; the primary (`may_write`) then tombstones the kid in the ring Secret
(core.keyplan.revoke_key: material gone, a fresh key signs at once), which other replicas pick up by
reading the Secret again. Every write is guarded by a resourceVersion, and every step is derived
from what is stored, so a crash or a second replica at any line repeats it, never undoes it.
Removing a kid from the ConfigMap later (a GitOps revert) does not bring the key back: the
tombstone in the ring is permanent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agenttoken import api
from agenttoken.core.keyplan import plan_rotation, revoke_key
from agenttoken.core.keys import (
    PURPOSE_ACCESS,
    PURPOSE_ASSERTION,
    KeyPolicy,
    KeyRing,
    SigningKey,
)
from agenttoken.core.secretdata import decode_data, encode_data
from agenttoken.kube.adapter import Kube
from agenttoken.kube.retry import retry_on_conflict

log = logging.getLogger(__name__)

KEYS_SECRET: Final = "agenttoken-signing-keys"
JWKS_CONFIGMAP: Final = "agenttoken-jwks"
RING_KEY: Final = "keyring.json"
ASSERTION_RING_KEY: Final = "assertion-keyring.json"
JWKS_KEY: Final = "jwks.json"
CLIENT_JWKS_KEY: Final = "client-jwks.json"
KEY_REVOCATIONS_CONFIGMAP: Final = "agenttoken-key-revocations"
REVOKED_KIDS_KEY: Final = "revoked-kids"
# While a requested revocation is not in the stored ring yet, read the Secret this often.
PENDING_POLL_SECONDS: Final = 1.0

RING_KEYS: Final = {PURPOSE_ACCESS: RING_KEY, PURPOSE_ASSERTION: ASSERTION_RING_KEY}


def discovery_document(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer.rstrip('/')}/jwks.json",
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
    }


def client_jwks_url(issuer: str) -> str:
    """Where the OAuth server finds the client-assertion keys (configure it as the client's JWKS URL)."""
    return f"{issuer.rstrip('/')}/client-jwks.json"


def parse_revoked_kids(text: str) -> frozenset[str]:
    """The kids in a `revoked-kids` value: one a line (commas and spaces also separate), `#` comments."""
    kids: set[str] = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        kids.update(part for part in line.replace(",", " ").split() if part)
    return frozenset(kids)


def requested_kids(configmap: Mapping[str, Any] | None) -> frozenset[str]:
    return parse_revoked_kids(((configmap or {}).get("data") or {}).get(REVOKED_KIDS_KEY, ""))


def with_revoked_kid(configmap: Mapping[str, Any] | None, kid: str, namespace: str) -> dict[str, Any] | None:
    """One read-modify-write step of `agenttoken keys revoke`: the ConfigMap with `kid` appended
    (None when it is already there). Carries the stored resourceVersion, so a concurrent writer
    makes the write fail with 409; everything else the owner (a GitOps tool) put there is kept."""
    if kid in requested_kids(configmap):
        return None
    current = dict(configmap or {})
    metadata = dict(current.get("metadata") or {"name": KEY_REVOCATIONS_CONFIGMAP, "namespace": namespace})
    data = dict(current.get("data") or {})
    text = data.get(REVOKED_KIDS_KEY, "")
    data[REVOKED_KIDS_KEY] = text + ("" if not text or text.endswith("\n") else "\n") + kid + "\n"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


@dataclass(frozen=True)
class Rings:
    access: KeyRing
    assertion: KeyRing

    def revoked_kids(self) -> frozenset[str]:
        return self.access.revoked_kids | self.assertion.revoked_kids

    def get(self, purpose: str) -> KeyRing:
        return self.access if purpose == PURPOSE_ACCESS else self.assertion


EMPTY_RINGS: Final = Rings(KeyRing(), KeyRing(purpose=PURPOSE_ASSERTION))

# Called (primary only) with the access-token signing key whenever it differs from the one the hooks
# last succeeded with: after an emergency revocation, right after the new ring is stored, and once
# after start-up (a crash between storing and the hook must not leave the revocation list signed
# by a revoked key). Hooks must be idempotent. The revocation list (branch ha-verify) registers its
# re-signer here: after a revocation it must be re-signed by the new key at once.
KeyChangeHook = Callable[[SigningKey], Awaitable[None]]


class KeyManager:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        issuer: str,
        policy: KeyPolicy,
        clock: Callable[[], datetime.datetime],
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.kube = kube
        # leadership.is_primary: only the primary rotates and publishes; the others only load the
        # ring (they serve the JWKS from it and sign with it once they lead).
        self.may_write = may_write
        self.namespace = namespace
        self.issuer = issuer
        self.policy = policy
        self.clock = clock
        self.may_write = may_write
        self.rings = EMPTY_RINGS
        self.requested: frozenset[str] = frozenset()  # from the key-revocations ConfigMap
        self._published: tuple[str, str] | None = None
        self._hooked_kid: str | None = None  # the signing key the hooks last succeeded with
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._revoked_hooks: list[KeyChangeHook] = []
        self._revoked_listeners: list[Callable[[frozenset[str]], None]] = []
        self._events: Callable[[dict[str, Any], str, str], None] | None = None
        self._request_source: dict[str, Any] | None = None  # the ConfigMap, for Events about it

    # -- what the rest of the operator uses --

    @property
    def ring(self) -> KeyRing:
        return self.rings.access

    def signing_key(self) -> SigningKey:
        """The access-token signing key; RuntimeError while none may sign (not loaded, or revoked
        and the replacement not read from the Secret yet)."""
        return self._key(PURPOSE_ACCESS)

    def assertion_key(self) -> SigningKey:
        """The client-assertion key (never signs access tokens); RuntimeError if none may sign."""
        return self._key(PURPOSE_ASSERTION)

    def _key(self, purpose: str) -> SigningKey:
        key = self.rings.get(purpose).signing_key(self.clock())
        if key is None:
            raise RuntimeError(f"no active {purpose} signing key (key ring not loaded yet)")
        if key.kid in self.requested:
            raise RuntimeError(f"the {purpose} signing key was revoked; waiting for its replacement")
        return key

    def jwks(self) -> dict[str, Any]:
        return self._jwks(PURPOSE_ACCESS)

    def client_jwks(self) -> dict[str, Any]:
        return self._jwks(PURPOSE_ASSERTION)

    def _jwks(self, purpose: str) -> dict[str, Any]:
        # A requested kid disappears at once, even before the primary has tombstoned it.
        doc = self.rings.get(purpose).jwks(self.clock())
        return {"keys": [k for k in doc["keys"] if k["kid"] not in self.requested]}

    def revoked_kids(self) -> frozenset[str]:
        """Kids whose tokens must be re-minted: tombstoned in the ring or requested."""
        return self.rings.revoked_kids() | self.requested

    def on_signing_key_changed(self, hook: KeyChangeHook) -> None:
        """Run `hook(signing key)` on the primary whenever the signing key changed since the hooks
        last succeeded (see KeyChangeHook); a failing hook is retried on the next sync."""
        self._revoked_hooks.append(hook)
        self._hooked_kid = None  # the new hook has not seen the current key yet

    def subscribe_revoked(self, listener: Callable[[frozenset[str]], None]) -> None:
        """`listener(kids)` when kids newly appear in the stored rings' tombstones (every replica):
        the controller re-queues the AgentTokens whose token one of them signed."""
        self._revoked_listeners.append(listener)

    def wake(self) -> None:
        """Sync at once (e.g. this replica just became the primary)."""
        self._wake.set()

    def report_with(self, post: Callable[[dict[str, Any], str, str], None]) -> None:
        """`post(involved, reason, message)`: how Events about the key-revocations ConfigMap go out."""
        self._events = post

    # -- the loop --

    async def run(self, interval: float) -> None:
        """Follow the key-revocations ConfigMap and sync: at once on a change, every second while a
        requested revocation is not stored yet, else every `interval` seconds."""
        follower = asyncio.create_task(self._follow_requests(), name="agenttoken-key-revocations")
        try:
            while True:
                # Sooner while a requested revocation is not stored yet, or while a standby has
                # no ring to serve (the primary is creating it).
                pending = bool(self.requested - self.rings.revoked_kids()) or not self.ring.keys
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), PENDING_POLL_SECONDS if pending else interval)
                self._wake.clear()
                try:
                    await self.sync()
                except Exception:
                    log.exception("signing-key sync failed; retrying")
        finally:
            follower.cancel()

    async def _follow_requests(self) -> None:
        async for configmap in self.kube.watch_configmap(self.namespace, KEY_REVOCATIONS_CONFIGMAP):
            self.observe_requests(configmap)

    def observe_requests(self, configmap: Mapping[str, Any] | None) -> None:
        kids = requested_kids(configmap)
        self._request_source = dict(configmap) if configmap else None
        if kids != self.requested:
            new = kids - self.requested - self.rings.revoked_kids()
            if new:
                log.warning("signing keys: revocation requested for %s", ", ".join(sorted(new)))
            # Exactly the ConfigMap: once the primary tombstoned a kid, the ring keeps it revoked
            # whatever the ConfigMap says later; a kid withdrawn before that is simply withdrawn.
            self.requested = kids
            self._wake.set()

    async def load_requests(self) -> None:
        self.observe_requests(await self.kube.get_configmap(self.namespace, KEY_REVOCATIONS_CONFIGMAP))

    async def sync(self) -> None:
        """Load the rings; as the primary revoke what is requested, rotate if due, store; publish.
        Safe to call at any time, from any replica."""
        async with self._lock:
            before = self.rings.revoked_kids()
            rings, revoked_now = await retry_on_conflict(self._load_and_update, what="signing keys")
            self.rings = rings
            newly = rings.revoked_kids() - before
            if newly:
                for listener in self._revoked_listeners:
                    listener(newly)
            if not self.may_write():
                return
            await self._publish()  # before the hooks: the list's new signer must be published
            if revoked_now:
                self._report_revocation(revoked_now)
            await self._run_hooks()

    async def _load_and_update(self) -> tuple[Rings, list[str]]:
        """One read-modify-write of the Secret (409 when someone else wrote first: then `sync`
        reads and decides again). Returns the rings and the kids this call revoked."""
        secret = await self.kube.get_secret(self.namespace, KEYS_SECRET)
        data = decode_data(secret.get("data")) if secret is not None else {}
        stored = Rings(
            *(
                KeyRing.from_json(data[key], purpose=purpose) if data.get(key) else KeyRing(purpose=purpose)
                for purpose, key in RING_KEYS.items()
            )
        )
        if not self.may_write():
            return stored, []
        now = self.clock()
        changes: list[str] = []
        revoked_now: list[str] = []
        updated: dict[str, KeyRing] = {}
        for purpose in RING_KEYS:
            ring = stored.get(purpose)
            # A requested kid is tombstoned in both rings: "never comes back" whichever ring a
            # future key would be generated for (a kid names one key, so the other is a no-op).
            for kid in sorted(self.requested - ring.revoked_kids):
                ring, why = revoke_key(ring, kid, self.policy, now)
                changes.extend(f"{purpose}: {w}" for w in why)
                if purpose == PURPOSE_ACCESS:
                    revoked_now.append(kid)
            ring, why = plan_rotation(ring, self.policy, now)
            changes.extend(f"{purpose}: {w}" for w in why)
            updated[purpose] = ring
        rings = Rings(updated[PURPOSE_ACCESS], updated[PURPOSE_ASSERTION])
        if changes:
            if not self.may_write():  # lost leadership meanwhile: leave it to the new primary
                return stored, []
            await self._store(secret, rings)
            for change in changes:
                log.info("signing keys: %s", change)
        return rings, revoked_now

    async def _store(self, current: dict[str, Any] | None, rings: Rings) -> None:
        data = encode_data({RING_KEY: rings.access.to_json(), ASSERTION_RING_KEY: rings.assertion.to_json()})
        labels = {api.LABEL_MANAGED_BY: api.OPERATOR_NAME}
        if current is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": KEYS_SECRET, "namespace": self.namespace, "labels": labels},
                "data": data,
            }
            await self.kube.create_secret(self.namespace, body)
        else:
            body = {**current, "data": data}
            await self.kube.replace_secret(self.namespace, KEYS_SECRET, body)

    async def _run_hooks(self) -> None:
        try:
            key = self.signing_key()
        except RuntimeError:
            return
        if key.kid == self._hooked_kid:
            return
        for hook in self._revoked_hooks:
            await hook(key)
        self._hooked_kid = key.kid

    def _report_revocation(self, kids: Iterable[str]) -> None:
        key = self.signing_key()
        if self._events is not None and self._request_source is not None:
            meta = self._request_source.get("metadata") or {}
            involved = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": self.namespace,
                "name": KEY_REVOCATIONS_CONFIGMAP,
                "uid": meta.get("uid"),
            }
            message = (
                f"revoked signing key {', '.join(kids)}: removed from the JWKS, key {key.kid} signs now; "
                "every AgentToken holding a token it signed is being re-issued"
            )
            self._events(involved, api.REASON_KEY_REVOKED, message)

    async def _publish(self) -> None:
        jwks = json.dumps(self.jwks(), sort_keys=True)
        client = json.dumps(self.client_jwks(), sort_keys=True)
        if (jwks, client) == self._published:
            return
        await self.kube.apply_configmap(
            self.namespace,
            JWKS_CONFIGMAP,
            {
                JWKS_KEY: jwks,
                CLIENT_JWKS_KEY: client,
                "openid-configuration.json": json.dumps(discovery_document(self.issuer), sort_keys=True),
            },
        )
        self._published = (jwks, client)
