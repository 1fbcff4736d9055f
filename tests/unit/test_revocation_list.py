"""The signed revocation list: what the operator signs and stores, what the SDK verifier accepts,
and how both behave through an outage of every operator pod and at the list's size bound."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from agenttoken import api
from agenttoken.cli.status import summary
from agenttoken.controllers.revocation import (
    PART_CONFIGMAPS,
    PENDING_CONFIGMAP,
    RevocationStore,
    next_pending,
    part_key,
)
from agenttoken.core import revocation
from agenttoken.core.keys import KeyRing, SigningKey, generate_key
from agenttoken.core.revocation import PARTS, RevocationListFull, Revoked
from agenttoken.core.tokens import MintedToken, TokenRequest, mint
from agenttoken.kube.adapter import Kube
from agenttoken_sdk.jose import REVOCATION_LIST_TYPE, TOKEN_TYPE
from agenttoken_sdk.verify import VerificationError, Verifier

from .test_kube_retry import ConfigMaps

ISSUER = "https://issuer.example.com"
AUDIENCE = "https://api.example.com"
T0 = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
KEY = generate_key("ES256", T0 - datetime.timedelta(days=1))
OTHER_KEY = generate_key("ES256", T0 - datetime.timedelta(days=1))  # not in the JWKS
JWKS = KeyRing((KEY,)).jwks(T0)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


class Source:
    """The revocation document behind the verifier's fetch; None: nothing answers (outage)."""

    def __init__(self, body: bytes | None) -> None:
        self.body = body

    def __call__(self, url: str) -> bytes:
        if self.body is None:
            raise ConnectionRefusedError("no operator pod behind the Service")
        return self.body


def token(jti: str | None = None, now: datetime.datetime = T0, ttl_hours: int = 2) -> MintedToken:
    req = TokenRequest(
        namespace="team-a",
        name="crawler",
        uid="u",
        subject=None,
        audience=(AUDIENCE,),
        scopes=(),
        ttl=datetime.timedelta(hours=ttl_hours),
    )
    return mint(req, KEY, issuer=ISSUER, now=now, jti=jti)


def entry(t: MintedToken) -> Revoked:
    return Revoked(t.token_id, t.expires_at, "team-a", "crawler", T0, "Revoked")


def signed_parts(
    entries: list[Revoked], now: datetime.datetime = T0, key: SigningKey = KEY, issuer: str = ISSUER
) -> list[str]:
    parts = [revocation.next_part(revocation.empty_part(i), entries, now) for i in range(PARTS)]
    return [revocation.sign_part(p, key, issuer) for p in parts]


def document(parts: list[str]) -> bytes:
    return json.dumps({"lists": parts}).encode()


def verifier(source: Source, clock: Clock, **options: Any) -> Verifier:
    return Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks=JWKS,
        revocations_url="http://operator/revocations.json",
        fetch=source,
        clock=clock,
        audit=False,
        **options,
    )


def check(v: Verifier, t: MintedToken) -> str | None:
    """None when accepted, else the failed check."""
    try:
        v.verify(t.token)
    except VerificationError as exc:
        return exc.check
    return None


def b64json(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


# ------------------------------------------------------------------ what verifiers accept


def test_a_signed_list_revokes_and_leaves_other_tokens_alone() -> None:
    victim, bystander = token(), token()
    v = verifier(Source(document(signed_parts([entry(victim)]))), Clock())
    assert check(v, victim) == "revoked"
    assert check(v, bystander) is None


def forged_documents(victim: MintedToken) -> dict[str, bytes]:
    good = signed_parts([entry(victim)])
    header, payload, signature = good[0].split(".")
    emptied = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    emptied["revoked"] = {}
    as_token_typ = revocation.sign_part(revocation.empty_part(0), KEY, ISSUER)
    _, p, _ = as_token_typ.split(".")
    return {
        "unsigned (the format of earlier versions)": json.dumps(
            {"revoked": [{"jti": victim.token_id}]}
        ).encode(),
        "signed by a key outside the JWKS": document(signed_parts([entry(victim)], key=OTHER_KEY)),
        "payload changed after signing": document([f"{header}.{b64json(emptied)}.{signature}", *good[1:]]),
        "alg none": document([f"{b64json({'alg': 'none', 'typ': REVOCATION_LIST_TYPE})}.{p}.", *good[1:]]),
        "typ of an access token": document([_resign_header(as_token_typ, {"typ": TOKEN_TYPE}), *good[1:]]),
        "another issuer's list": document(signed_parts([entry(victim)], issuer="https://evil.example.com")),
        "a part missing": document(good[1:]),
        "a part twice": document([good[0], *good]),
        "signed in the future": document(signed_parts([entry(victim)], now=T0 + datetime.timedelta(hours=1))),
        "empty": document([]),
    }


def _resign_header(signed: str, changes: dict[str, Any]) -> str:
    """The same payload signed by the real key under a changed header."""
    from joserfc import jws

    from agenttoken.core.keys import jws_registry

    _, payload, _ = signed.split(".")
    body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    header = {"alg": KEY.algorithm, "kid": KEY.kid, **changes}
    return str(jws.serialize_compact(header, body, KEY.joserfc_key, registry=jws_registry([KEY.algorithm])))


@pytest.mark.parametrize("case", list(forged_documents(token("x"))))
def test_a_list_that_is_not_genuine_and_complete_is_refused_and_fails_closed(case: str) -> None:
    victim = token("x")
    v = verifier(Source(forged_documents(victim)[case]), Clock())
    with pytest.raises(VerificationError, match="failing closed") as caught:
        v.verify(token().token)
    assert caught.value.check == "revoked"


def test_a_forged_list_never_replaces_the_last_good_one() -> None:
    victim = token()
    source, clock = Source(document(signed_parts([entry(victim)]))), Clock()
    v = verifier(source, clock)
    assert check(v, victim) == "revoked"
    source.body = document(signed_parts([], key=OTHER_KEY))  # an attacker's empty list
    clock.now += datetime.timedelta(seconds=1)
    assert check(v, victim) == "revoked"


def test_a_replayed_older_list_is_refused() -> None:
    """An attacker who recorded an older (still valid) list cannot hide a newer revocation."""
    victim = token()
    older = document(signed_parts([], now=T0))
    newer = document(signed_parts([entry(victim)], now=T0 + datetime.timedelta(seconds=5)))
    source, clock = Source(newer), Clock()
    clock.now = T0 + datetime.timedelta(seconds=6)
    v = verifier(source, clock)
    assert check(v, victim) == "revoked"
    source.body = older
    clock.now += datetime.timedelta(seconds=1)
    assert check(v, victim) == "revoked"


def test_a_revocation_list_is_never_accepted_as_an_access_token() -> None:
    """Both are signed by the same key; the typ (and the claims) keep them apart."""
    part = signed_parts([])[0]
    v = verifier(Source(document(signed_parts([]))), Clock())
    with pytest.raises(VerificationError) as caught:
        v.verify(part)
    assert caught.value.check in {"format", "typ"}
    # Even with every claim a token needs, the list's typ is refused.
    claims = {**token().claims}
    forged = _resign_header(f"x.{b64json(claims)}.x", {"typ": REVOCATION_LIST_TYPE})
    with pytest.raises(VerificationError) as caught:
        v.verify(forged)
    assert caught.value.check == "typ"


# ------------------------------------------------------------------ through an outage


def test_defaults_survive_a_five_minute_outage_of_every_operator_pod() -> None:
    """Worst case: the outage starts when the served list has half its validity left (it would be
    signed again any moment). With the default grace, revoked stays revoked and valid stays valid
    for the whole outage; after validity + grace it fails closed."""
    victim, bystander = token(), token()
    clock = Clock()
    signed_at = T0 - revocation.VALIDITY / 2
    source = Source(document(signed_parts([entry(victim)], now=signed_at)))
    v = verifier(source, clock)
    assert check(v, victim) == "revoked"
    source.body = None  # every operator pod is gone
    outage_end = T0 + datetime.timedelta(minutes=5)
    while clock.now <= outage_end:
        assert check(v, victim) == "revoked"
        assert check(v, bystander) is None
        clock.now += datetime.timedelta(seconds=20)
    clock.now = signed_at + revocation.VALIDITY + datetime.timedelta(minutes=5, seconds=1)
    assert check(v, bystander) == "revoked"  # the list is too old now: fail closed


def test_a_stale_list_fetched_late_is_still_used_within_the_grace() -> None:
    """A mounted ConfigMap nobody re-signs: its list is past next_update but within grace."""
    victim = token()
    clock = Clock()
    clock.now = T0 + revocation.VALIDITY + datetime.timedelta(minutes=1)
    v = verifier(Source(document(signed_parts([entry(victim)]))), clock)
    assert check(v, victim) == "revoked"
    assert check(v, token(now=clock.now)) is None
    v2 = verifier(
        Source(document(signed_parts([entry(victim)]))), clock, revocations_stale_grace=datetime.timedelta(0)
    )
    assert check(v2, token(now=clock.now)) == "revoked"  # no grace: expired list, fail closed


def test_the_last_good_jwks_is_kept_through_an_outage() -> None:
    clock = Clock()
    docs: dict[str, bytes] = {
        "http://operator/jwks.json": json.dumps(JWKS).encode(),
        "http://operator/revocations.json": document(signed_parts([])),
    }

    def fetch(url: str) -> bytes:
        if url not in docs:
            raise ConnectionRefusedError(url)
        return docs[url]

    v = Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url="http://operator/jwks.json",
        revocations_url="http://operator/revocations.json",
        fetch=fetch,
        clock=clock,
        audit=False,
    )
    assert check(v, token()) is None
    docs.clear()
    clock.now += datetime.timedelta(minutes=4)
    assert check(v, token()) is None


def test_the_list_is_read_from_a_mounted_directory_of_parts(tmp_path: Path) -> None:
    """A projected volume of the part ConfigMaps, with kubelet's ..data entries beside them."""
    victim = token()
    for i, signed in enumerate(signed_parts([entry(victim)])):
        (tmp_path / part_key(i)).write_text(signed)
    (tmp_path / "..data").mkdir()
    jwks_file = tmp_path.parent / f"{tmp_path.name}-jwks.json"
    jwks_file.write_text(json.dumps(JWKS))
    v = Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_path=str(jwks_file),
        revocations_path=str(tmp_path),
        clock=Clock(),
        audit=False,
    )
    assert check(v, victim) == "revoked"
    assert check(v, token()) is None
    (tmp_path / part_key(1)).unlink()  # a part missing: that list is incomplete, the last good one stays
    assert check(v, victim) == "revoked"


def test_verifier_options_are_checked() -> None:
    with pytest.raises(ValueError, match="at most one of revocations_url and revocations_path"):
        Verifier(issuer=ISSUER, audience=AUDIENCE, jwks=JWKS, revocations_url="u", revocations_path="p")


# ------------------------------------------------------------------ what the operator signs


def test_a_token_id_always_lands_in_the_same_part() -> None:
    """sha256, never hash(): every process and version puts an id in the same object."""
    assert revocation.part_of("0b8f6c2e-1111-2222-3333-444455556666") == revocation.part_of(
        "0b8f6c2e-1111-2222-3333-444455556666"
    )
    assert {revocation.part_of(f"jti-{i}") for i in range(200)} == set(range(PARTS))


def test_next_part_prunes_expired_ids_and_only_moves_forward() -> None:
    live = token()
    dead = Revoked("dead", T0 - revocation.LEEWAY - datetime.timedelta(seconds=1), "ns", "n", T0)
    part = revocation.part_of(live.token_id)
    current = revocation.ListPart(part, PARTS, seq=10**15, issued_at=0, next_update=0, revoked={"old": 1})
    updated = revocation.next_part(current, [entry(live), dead], T0)
    assert updated.revoked == {live.token_id: int(live.expires_at.timestamp())}
    assert updated.seq == 10**15 + 1  # above the stored one even with a clock behind it
    assert updated.next_update - updated.issued_at == revocation.VALIDITY.total_seconds()
    again = revocation.next_part(updated, [], T0 + datetime.timedelta(seconds=1))
    assert again.seq > updated.seq


def test_a_part_past_its_byte_bound_is_refused_not_truncated() -> None:
    entries = [Revoked(f"{i:036d}", T0 + datetime.timedelta(hours=1), "ns", "n", T0) for i in range(400)]
    part = revocation.next_part(
        revocation.empty_part(0), [e for e in entries if revocation.part_of(e.token_id) == 0], T0
    )
    signed = revocation.sign_part(part, KEY, ISSUER)
    with pytest.raises(RevocationListFull) as caught:
        revocation.sign_part(part, KEY, ISSUER, limit=len(signed) - 1)
    assert caught.value.part == 0
    assert "refusing" in str(caught.value)


def test_twenty_thousand_live_revocations_fit_the_bound() -> None:
    """The goal of issue #16: 20,000 live (UUID) revocations, each part within MAX_PART_BYTES."""
    import uuid

    entries = [
        Revoked(str(uuid.uuid4()), T0 + datetime.timedelta(hours=1), "ns", "n", T0) for _ in range(20_000)
    ]
    parts = signed_parts(entries)
    assert all(len(p) <= revocation.MAX_PART_BYTES for p in parts)
    v = verifier(Source(document(parts)), Clock())
    assert check(v, token(entries[12_345].token_id)) == "revoked"


# ------------------------------------------------------------------ the store (fake cluster)


def store_on(
    cms: ConfigMaps, clock: Clock, key: list[SigningKey] | None = None, **options: Any
) -> RevocationStore:
    keys = key or [KEY]
    return RevocationStore(
        cast(Kube, cms), "agenttoken-system", clock, issuer=ISSUER, signer=lambda: keys[0], **options
    )


def served(store: RevocationStore) -> bytes:
    return json.dumps(store.document()).encode()


def test_startup_signs_every_part_and_resigns_only_when_half_the_validity_is_gone() -> None:
    cms, clock = ConfigMaps(), Clock()
    store = store_on(cms, clock)
    assert asyncio.run(store.resign()) == PARTS
    assert set(cms.bodies) == set(PART_CONFIGMAPS)
    assert check(verifier(Source(served(store)), clock), token()) is None
    clock.now += revocation.VALIDITY / 2 - datetime.timedelta(seconds=1)
    assert asyncio.run(store.resign()) == 0
    clock.now += datetime.timedelta(seconds=1)
    assert asyncio.run(store.resign()) == PARTS


def test_a_new_signing_key_signs_the_list_at_once() -> None:
    """Rotation or emergency key revocation: parts signed by another key are signed again."""
    cms, clock = ConfigMaps(), Clock()
    keys = [KEY]
    store = store_on(cms, clock, keys)
    asyncio.run(store.resign())
    keys[0] = OTHER_KEY
    assert asyncio.run(store.resign()) == PARTS
    assert all(p.kid == OTHER_KEY.kid for p in store.parts.values())


def test_no_write_without_leadership() -> None:
    cms, clock = ConfigMaps(), Clock()
    store = store_on(cms, clock)
    assert asyncio.run(store.resign(may_write=lambda: False)) == 0
    assert cms.writes == 0


def test_every_replica_serves_the_stored_list() -> None:
    cms, clock = ConfigMaps(), Clock()
    writer, standby = store_on(cms, clock), store_on(cms, clock)
    victim = token()
    asyncio.run(writer.resign())
    asyncio.run(writer.revoke([entry(victim)]))
    asyncio.run(standby.load())  # what its watch delivers
    assert served(standby) == served(writer)
    assert check(verifier(Source(served(standby)), clock), victim) == "revoked"


def test_pending_entries_from_the_cli_are_folded_in_then_cleared() -> None:
    cms, clock = ConfigMaps(), Clock()
    store = store_on(cms, clock)
    asyncio.run(store.resign())
    victim = token()
    body, _ = next_pending(None, [entry(victim)], T0, "agenttoken-system")
    asyncio.run(cms.write_configmap("agenttoken-system", body))
    assert asyncio.run(store.fold_pending(may_write=lambda: False)) == 0  # a standby leaves it
    assert asyncio.run(store.fold_pending()) == 1
    assert store.is_revoked(victim.token_id)
    assert json.loads(cms.bodies[PENDING_CONFIGMAP]["data"]["pending.json"])["revoked"] == []
    assert check(verifier(Source(served(store)), clock), victim) == "revoked"


def test_at_the_bound_revocations_are_refused_counted_and_kept_pending() -> None:
    cms, clock = ConfigMaps(), Clock()
    store = store_on(cms, clock, max_part_bytes=2000)
    asyncio.run(store.resign())
    before = REGISTRY.get_sample_value("agenttoken_revocation_list_refused_total") or 0.0
    many = [Revoked(f"jti-{i:04d}", T0 + datetime.timedelta(hours=1), "ns", "n", T0) for i in range(200)]
    with pytest.raises(RevocationListFull):
        asyncio.run(store.revoke(many))
    assert (REGISTRY.get_sample_value("agenttoken_revocation_list_refused_total") or 0.0) > before
    body, _ = next_pending(None, many, T0, "agenttoken-system")
    asyncio.run(cms.write_configmap("agenttoken-system", body))
    asyncio.run(store.fold_pending())
    pending = json.loads(cms.bodies[PENDING_CONFIGMAP]["data"]["pending.json"])["revoked"]
    on_list = {jti for p in store.parts.values() for jti in p.revoked}
    # Nothing dropped: every id is either signed into the list or still pending.
    assert {e.token_id for e in many} == on_list | {e["jti"] for e in pending}
    assert pending


# ------------------------------------------------------------------ status during an outage


def test_status_reports_expired_when_the_stored_ready_is_stale() -> None:
    obj = {
        "metadata": {"namespace": "team-a", "name": "crawler"},
        "spec": {},
        "status": {
            "expiresAt": "2026-11-30T12:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": api.REASON_READY, "message": "ok"}],
        },
    }
    before = summary(obj, T0 - datetime.timedelta(seconds=1))
    assert (before["ready"], before["reason"]) == ("True", api.REASON_READY)
    after = summary(obj, T0)
    assert (after["ready"], after["reason"]) == ("False", api.REASON_EXPIRED)
    assert "2026-11-30T12:00:00Z" in after["message"]


class Watching(ConfigMaps):
    """ConfigMaps whose watches deliver the given events, then end."""

    def __init__(self, events: dict[str, list[dict[str, Any] | None]]) -> None:
        super().__init__()
        self.events = events

    async def watch_configmap(self, namespace: str, name: str) -> AsyncIterator[dict[str, Any] | None]:
        for event in self.events.get(name, []):
            yield event


def test_a_deleted_part_is_no_longer_served_and_is_signed_again_at_once() -> None:
    cms, clock = Watching({}), Clock()
    store = store_on(cms, clock)
    asyncio.run(store.resign())
    del cms.bodies[PART_CONFIGMAPS[2]]
    cms.events = {PART_CONFIGMAPS[2]: [None]}
    asyncio.run(store.follow())
    assert len(store.document()["lists"]) == PARTS - 1
    assert asyncio.run(store.resign()) == 1
    assert PART_CONFIGMAPS[2] in cms.bodies
    assert check(verifier(Source(served(store)), clock), token()) is None


class SlowConfigMaps(ConfigMaps):
    """Each call takes a few turns of the event loop, as a round trip to the apiserver does."""

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        for _ in range(3):
            await asyncio.sleep(0)
        return await super().get_configmap(namespace, name)


def test_revocations_that_arrive_together_share_a_write_and_none_is_lost() -> None:
    """600 AgentTokens finalized at once: not 600 read-sign-write rounds in a row per part."""
    cms, clock = SlowConfigMaps(interfere=3), Clock()
    store = store_on(cms, clock)
    victims = [token() for _ in range(200)]

    async def go() -> None:
        await store.resign()
        before = cms.writes
        await asyncio.gather(*(store.revoke([entry(v)]) for v in victims))
        cms.writes -= before

    asyncio.run(go())
    assert cms.writes <= 4 * PARTS  # the first write of each part, then one per batch behind it
    v = verifier(Source(served(store)), clock)
    assert all(check(v, t) == "revoked" for t in victims)


def test_a_failed_group_write_fails_every_revocation_in_it() -> None:
    cms, clock = SlowConfigMaps(), Clock()
    store = store_on(cms, clock, max_part_bytes=600)  # room for a few entries only
    victims = [token() for _ in range(40)]

    async def go() -> list[BaseException | None]:
        await store.resign()
        return await asyncio.gather(*(store.revoke([entry(v)]) for v in victims), return_exceptions=True)

    results = asyncio.run(go())
    refused = [r for r in results if isinstance(r, RevocationListFull)]
    assert refused
    assert all(r is None or isinstance(r, RevocationListFull) for r in results)
    v = verifier(Source(served(store)), clock)
    for t, r in zip(victims, results, strict=True):
        assert (check(v, t) == "revoked") == (r is None)  # refused ones are said so, never dropped


def test_a_caller_that_may_not_write_never_holds_back_another_callers_revocation() -> None:
    """The pod sweeper revokes with its leader check; a finalizer revokes unconditionally. When
    both wait behind one write and the leader check says no, the finalizer's entry is still written."""
    cms, clock = SlowConfigMaps(), Clock()
    store = store_on(cms, clock)
    finalized = token()
    part = revocation.part_of(finalized.token_id)
    first, swept = (
        next(t for t in iter(token, None) if revocation.part_of(t.token_id) == part) for _ in "ab"
    )

    async def go() -> None:
        await store.resign()
        await asyncio.gather(  # the first write holds the part; the other two queue behind it
            store.revoke([entry(first)]),
            store.revoke([entry(swept)], may_write=lambda: False),
            store.revoke([entry(finalized)]),
        )

    asyncio.run(go())
    v = verifier(Source(served(store)), clock)
    assert check(v, first) == "revoked"
    assert check(v, finalized) == "revoked"
    assert check(v, swept) is None
