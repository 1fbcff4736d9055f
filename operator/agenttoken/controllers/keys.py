"""Keeps the built-in issuer's key ring in the cluster and publishes its JWKS.

The ring (private keys) lives in one Secret in the operator's namespace; the public JWKS and a
minimal discovery document go to a ConfigMap that verifiers can mount. Rotation is decided by
`core.keys.plan_rotation` (pure); this module only reads, writes and publishes. Writes use the
Secret's resourceVersion, so two operator instances can never overwrite each other's keys.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any

from agenttoken import api
from agenttoken.core.keys import KeyPolicy, KeyRing, SigningKey, plan_rotation
from agenttoken.core.secretdata import decode_data, encode_data
from agenttoken.kube.adapter import Kube
from agenttoken.kube.retry import retry_on_conflict

log = logging.getLogger(__name__)

KEYS_SECRET = "agenttoken-signing-keys"
JWKS_CONFIGMAP = "agenttoken-jwks"
RING_KEY = "keyring.json"


def discovery_document(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer.rstrip('/')}/jwks.json",
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
    }


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
        self.ring = KeyRing(keys=())
        self._published: str | None = None
        self._lock = asyncio.Lock()

    def signing_key(self) -> SigningKey:
        key = self.ring.signing_key(self.clock())
        if key is None:
            raise RuntimeError("no active signing key (key ring not loaded yet)")
        return key

    def jwks(self) -> dict[str, Any]:
        return self.ring.jwks(self.clock())

    async def sync(self) -> None:
        """Load the ring, rotate if due, store and publish; safe to call at any time."""
        async with self._lock:
            self.ring = await retry_on_conflict(self._load_and_rotate, what="signing keys")
            if self.may_write():
                await self._publish()

    async def _load_and_rotate(self) -> KeyRing:
        """One read-modify-write: the stored ring, rotated and stored back if due (409 when
        someone else wrote first: then `sync` reads and decides again)."""
        secret = await self.kube.get_secret(self.namespace, KEYS_SECRET)
        stored = KeyRing(keys=())
        if secret is not None:
            text = decode_data(secret.get("data")).get(RING_KEY, "")
            if text:
                stored = KeyRing.from_json(text)
        ring, changes = plan_rotation(stored, self.policy, self.clock())
        if changes and not self.may_write():
            return stored  # due, but the primary's to do: never serve keys that were not stored
        if changes:
            await self._store(secret, ring)
            for change in changes:
                log.info("signing keys: %s", change)
        return ring

    async def _store(self, current: dict[str, Any] | None, ring: KeyRing) -> None:
        data = encode_data({RING_KEY: ring.to_json()})
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

    async def _publish(self) -> None:
        jwks = json.dumps(self.ring.jwks(self.clock()), sort_keys=True)
        if jwks == self._published:
            return
        await self.kube.apply_configmap(
            self.namespace,
            JWKS_CONFIGMAP,
            {
                "jwks.json": jwks,
                "openid-configuration.json": json.dumps(discovery_document(self.issuer), sort_keys=True),
            },
        )
        self._published = jwks
