"""TokenSource: reading the token bundle from a Secret volume as the kubelet updates it.

The kubelet's AtomicWriter is reproduced step by step (timestamped directory, `..data_tmp` symlink
renamed over `..data`, per-key symlinks, removal of the old directory), tokens are real signed JWTs
and time is an injected clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agenttoken.core.keys import KeyRing, SigningKey, generate_key
from agenttoken.core.tokens import MintedToken, TokenRequest, mint, verify
from agenttoken_sdk import client
from agenttoken_sdk.client import TokenExpiredError, TokenInfo, TokenSource, TokenUnavailableError

ISSUER = "https://issuer.example.com"
T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
KEY = "token.json"
URL = "https://api.example.com/v1/notes"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class AtomicWriter:
    """What kubelet's pkg/volume/util/atomic_writer.go does on every Secret volume update."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def write(self, payload: dict[str, bytes]) -> None:
        data_link = self.target / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        # A new timestamped directory holding the whole payload.
        prefix = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
        new_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.target))
        for key, content in payload.items():
            (new_dir / key).write_bytes(content)
        # ..data_tmp -> the new directory, renamed over ..data in one atomic step.
        tmp_link = self.target / "..data_tmp"
        os.symlink(new_dir.name, tmp_link)
        os.rename(tmp_link, data_link)
        # User-visible files are symlinks through ..data, created once.
        for key in payload:
            visible = self.target / key
            if not visible.is_symlink():
                os.symlink(f"..data/{key}", visible)
        if old is not None:
            shutil.rmtree(self.target / old)


def token_request(**overrides: Any) -> TokenRequest:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "name": "crawler",
        "uid": "0b8f6c2e-1111-2222-3333-444455556666",
        "subject": None,
        "audience": ("https://api.example.com",),
        "scopes": ("read:docs", "write:notes"),
        "ttl": timedelta(hours=1),
    }
    fields.update(overrides)
    return TokenRequest(**fields)


def fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bundle(minted: MintedToken, revision: int = 1, **overrides: Any) -> bytes:
    """The bundle as the operator writes it (secrets.bundle)."""
    doc: dict[str, Any] = {
        "token": minted.token,
        "tokenId": minted.token_id,
        "issuedAt": fmt(minted.issued_at),
        "expiresAt": fmt(minted.expires_at),
        "revision": revision,
        "scopes": minted.claims["scope"].split(),
        "audience": minted.claims["aud"],
    }
    doc.update(overrides)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_key("ES256", T0 - timedelta(days=1))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def minter(key: SigningKey) -> Any:
    def make(now: datetime = T0, ttl: timedelta = timedelta(hours=1)) -> MintedToken:
        return mint(token_request(ttl=ttl), key, issuer=ISSUER, now=now)

    return make


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    path = tmp_path / "secret-volume"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------------------------- reading


def test_reads_token_and_info_from_a_plain_directory(tmp_path: Path, key: SigningKey, clock: Clock) -> None:
    minted = minter(key)()
    (tmp_path / KEY).write_bytes(bundle(minted, revision=3))
    source = TokenSource(tmp_path, clock=clock)

    assert source.token() == minted.token
    assert source.info() == TokenInfo(
        token_id=minted.token_id,
        expires_at=T0 + timedelta(hours=1),
        issued_at=T0,
        revision=3,
        scopes=("read:docs", "write:notes"),
        audience=("https://api.example.com",),
        token=minted.token,
    )
    assert minted.token not in repr(source.info())
    assert minted.token not in repr(source)


def test_follows_kubelet_atomic_updates(volume: Path, key: SigningKey, clock: Clock) -> None:
    make = minter(key)
    writer = AtomicWriter(volume)
    first, second = make(), make(T0 + timedelta(minutes=40))
    writer.write({KEY: bundle(first, 1), "token": first.token.encode()})
    source = TokenSource(volume, clock=clock)
    assert source.token() == first.token

    writer.write({KEY: bundle(second, 2), "token": second.token.encode()})

    assert source.token() == second.token
    assert source.info().revision == 2
    assert sorted(p.name for p in volume.iterdir() if p.name.startswith("..2")) == [
        os.readlink(volume / "..data")
    ]


def test_custom_bundle_key(volume: Path, key: SigningKey, clock: Clock) -> None:
    minted = minter(key)()
    AtomicWriter(volume).write({"agent.json": bundle(minted)})

    assert TokenSource(volume, bundle_key="agent.json", clock=clock).token() == minted.token


@pytest.mark.parametrize("bad", ["", "..data", "../token.json", "sub/token.json"])
def test_bundle_key_must_be_a_plain_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="bundle_key"):
        TokenSource(tmp_path, bundle_key=bad)


def test_unchanged_file_is_not_read_again(
    volume: Path, key: SigningKey, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(client, "open", counting_open, raising=False)
    writer = AtomicWriter(volume)
    writer.write({KEY: bundle(minter(key)())})
    source = TokenSource(volume, clock=clock)

    for _ in range(100):
        source.token()
    assert len(opened) == 1

    writer.write({KEY: bundle(minter(key)(T0 + timedelta(minutes=1)))})
    for _ in range(100):
        source.token()
    assert len(opened) == 2


def test_snapshot_directory_removed_between_resolve_and_open_is_resolved_again(
    volume: Path, key: SigningKey, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    minted = minter(key)()
    AtomicWriter(volume).write({KEY: bundle(minted)})
    real_readlink = os.readlink
    answers = iter(["..2026_11_22_11_59_59.gone"])  # what ..data named before the kubelet removed it

    def racing_readlink(path: Any) -> str:
        return next(answers, None) or real_readlink(path)

    monkeypatch.setattr("agenttoken_sdk.client.os.readlink", racing_readlink)

    assert TokenSource(volume, clock=clock).token() == minted.token


# ---------------------------------------------------------------------------------------------- expiry


def test_expired_only_file_raises_token_expired(tmp_path: Path, key: SigningKey, clock: Clock) -> None:
    minted = minter(key)(T0 - timedelta(hours=2))
    (tmp_path / KEY).write_bytes(bundle(minted))

    with pytest.raises(TokenExpiredError) as caught:
        TokenSource(tmp_path, clock=clock).token()

    message = str(caught.value)
    assert isinstance(caught.value, TokenUnavailableError)
    assert minted.token_id in message
    assert (T0 - timedelta(hours=1)).isoformat() in message
    assert "expired" in message
    assert minted.token not in message
    assert (caught.value.token_id, caught.value.expires_at) == (minted.token_id, T0 - timedelta(hours=1))


def test_token_with_less_than_min_remaining_is_not_returned(tmp_path: Path, key: SigningKey) -> None:
    minted = minter(key)(T0, ttl=timedelta(seconds=60))
    (tmp_path / KEY).write_bytes(bundle(minted))
    clock = Clock(T0 + timedelta(seconds=50))
    source = TokenSource(tmp_path, clock=clock, min_remaining=timedelta(seconds=10))

    assert source.token() == minted.token  # exactly 10s left
    clock.now += timedelta(seconds=1)
    with pytest.raises(TokenExpiredError, match="expires in less than"):
        source.token()


def test_cached_token_about_to_expire_is_read_again(
    tmp_path: Path, key: SigningKey, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A change the stat cannot show (same identity) is still picked up once the cached token is unusable.
    def same_identity(path: Path, st: os.stat_result) -> tuple[object, ...]:
        return ("always the same",)

    monkeypatch.setattr(client, "_identity", same_identity)
    make = minter(key)
    old, new = make(T0), make(T0 + timedelta(minutes=50))
    (tmp_path / KEY).write_bytes(bundle(old))
    source = TokenSource(tmp_path, clock=clock)
    assert source.token() == old.token

    (tmp_path / KEY).write_bytes(bundle(new))
    assert source.token() == old.token  # still valid: served from the cache
    clock.now = T0 + timedelta(minutes=59, seconds=56)

    assert source.token() == new.token


def test_jwt_exp_wins_over_a_later_bundle_expiry(tmp_path: Path, key: SigningKey) -> None:
    minted = minter(key)(T0, ttl=timedelta(minutes=10))
    (tmp_path / KEY).write_bytes(bundle(minted, expiresAt=fmt(T0 + timedelta(hours=5))))
    source = TokenSource(tmp_path, clock=Clock(T0 + timedelta(minutes=11)))

    with pytest.raises(TokenExpiredError):
        source.token()


# ---------------------------------------------------------------------------------------------- unavailable


def test_missing_file_raises_naming_the_path(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(TokenUnavailableError, match="does not exist") as caught:
        TokenSource(tmp_path, clock=clock).token()

    assert str(tmp_path / KEY) in str(caught.value)
    assert not isinstance(caught.value, TokenExpiredError)


def test_missing_directory_raises(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(TokenUnavailableError, match="does not exist"):
        TokenSource(tmp_path / "nowhere", clock=clock).token()


def test_torn_write_is_unavailable_then_read_once_complete(
    tmp_path: Path, key: SigningKey, clock: Clock
) -> None:
    minted = minter(key)()
    content = bundle(minted)
    path = tmp_path / KEY
    source = TokenSource(tmp_path, clock=clock)

    for cut in (1, len(content) // 3, len(content) // 2, len(content) - 1):
        path.write_bytes(content[:cut])  # a non-atomic writer caught halfway
        with pytest.raises(TokenUnavailableError, match="not valid JSON") as caught:
            source.token()
        assert str(path) in str(caught.value)
        assert minted.token[:20] not in str(caught.value)

    path.write_bytes(content)
    assert source.token() == minted.token


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"token": ""}, "token"),
        ({"token": None}, "token"),
        ({"tokenId": 7}, "tokenId"),
        ({"expiresAt": "soon"}, "expiresAt"),
        ({"issuedAt": None}, "issuedAt"),
        ({"revision": "3"}, "revision"),
        ({"scopes": "read:docs"}, "scopes"),
        ({"audience": [1]}, "audience"),
    ],
)
def test_malformed_bundle_names_the_field(
    tmp_path: Path, key: SigningKey, clock: Clock, override: dict[str, Any], field: str
) -> None:
    minted = minter(key)()
    (tmp_path / KEY).write_bytes(bundle(minted, **override))

    with pytest.raises(TokenUnavailableError, match=f"field '{field}'") as caught:
        TokenSource(tmp_path, clock=clock).token()

    assert minted.token not in str(caught.value)


def test_non_object_bundle_is_unavailable(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / KEY).write_text("[]")

    with pytest.raises(TokenUnavailableError, match="not a JSON object"):
        TokenSource(tmp_path, clock=clock).token()


# ---------------------------------------------------------------------------------------------- concurrency


def test_readers_never_see_a_torn_stale_or_expired_token_while_the_kubelet_swaps(
    volume: Path, key: SigningKey
) -> None:
    # Token i is issued at T0 + 100s*i and lives 110s. After writing token i the writer moves the clock
    # to T0 + 100s*i + 50s, where token i-1 has already expired: a reader that served a cached or stale
    # token would return an expired one. The writer swaps again only after a reader saw token i.
    swaps, readers = 60, 4
    make = minter(key)
    minted = [make(T0 + timedelta(seconds=100 * i), ttl=timedelta(seconds=110)) for i in range(swaps)]
    index = {m.token: i for i, m in enumerate(minted)}
    writer = AtomicWriter(volume)
    writer.write({KEY: bundle(minted[0], 0)})
    clock = Clock(T0 + timedelta(seconds=50))
    source = TokenSource(volume, clock=clock, min_remaining=timedelta(seconds=5))

    seen: set[int] = set()
    condition = threading.Condition()
    done = threading.Event()
    results: list[tuple[datetime, str]] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                before = clock()
                token = source.token()
                results.append((before, token))
                with condition:
                    seen.add(index[token])
                    condition.notify_all()
        except BaseException as error:
            errors.append(error)
            done.set()

    def wait_until_seen(n: int) -> None:
        with condition:
            assert condition.wait_for(lambda: n in seen or bool(errors), timeout=10)

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    try:
        for i in range(1, swaps):
            wait_until_seen(i - 1)
            writer.write({KEY: bundle(minted[i], i)})
            clock.now = T0 + timedelta(seconds=100 * i + 50)
        wait_until_seen(swaps - 1)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    assert seen == set(range(swaps))
    jwks = KeyRing((key,)).jwks(T0)
    for before, token in results:
        m = minted[index[token]]  # KeyError if a reader returned anything the writer did not write
        assert m.expires_at - before >= timedelta(seconds=5)
    for token in {token for _, token in results}:
        minted_at = minted[index[token]].issued_at
        assert verify(token, jwks, issuer=ISSUER, now=minted_at)["jti"] == minted[index[token]].token_id


# ---------------------------------------------------------------------------------------------- HTTP hooks


@pytest.fixture
def rotating(volume: Path, clock: Clock) -> tuple[TokenSource, AtomicWriter]:
    return TokenSource(volume, clock=clock), AtomicWriter(volume)


def test_requests_auth_sets_the_bearer_header(
    rotating: tuple[TokenSource, AtomicWriter], key: SigningKey
) -> None:
    requests = pytest.importorskip("requests")
    source, writer = rotating
    first, second = minter(key)(), minter(key)(T0 + timedelta(minutes=1))
    writer.write({KEY: bundle(first)})
    session = requests.Session()
    session.auth = source.requests_auth()

    assert isinstance(session.auth, requests.auth.AuthBase)
    assert (
        session.prepare_request(requests.Request("GET", URL)).headers["Authorization"]
        == f"Bearer {first.token}"
    )
    writer.write({KEY: bundle(second)})
    prepared = requests.Request("GET", URL, auth=source.requests_auth()).prepare()
    assert prepared.headers["Authorization"] == f"Bearer {second.token}"
    assert second.token not in repr(session.auth)


def test_requests_auth_raises_instead_of_sending_an_expired_token(
    tmp_path: Path, key: SigningKey, clock: Clock
) -> None:
    requests = pytest.importorskip("requests")
    (tmp_path / KEY).write_bytes(bundle(minter(key)(T0 - timedelta(hours=2))))
    session = requests.Session()
    session.auth = TokenSource(tmp_path, clock=clock).requests_auth()

    with pytest.raises(TokenExpiredError):
        session.prepare_request(requests.Request("GET", URL))


def test_httpx_auth_sets_the_bearer_header_sync_and_async(
    rotating: tuple[TokenSource, AtomicWriter], key: SigningKey
) -> None:
    httpx = pytest.importorskip("httpx")
    source, writer = rotating
    first, second = minter(key)(), minter(key)(T0 + timedelta(minutes=1))
    writer.write({KEY: bundle(first)})
    auth = source.httpx_auth()
    assert isinstance(auth, httpx.Auth)
    assert first.token not in repr(auth)

    sync_flow = auth.sync_auth_flow(httpx.Request("GET", URL))
    assert next(sync_flow).headers["Authorization"] == f"Bearer {first.token}"

    writer.write({KEY: bundle(second)})

    async def first_request_of_async_flow() -> Any:
        flow = auth.async_auth_flow(httpx.Request("GET", URL))
        try:
            return await flow.__anext__()
        finally:
            await flow.aclose()

    assert asyncio.run(first_request_of_async_flow()).headers["Authorization"] == f"Bearer {second.token}"


def test_httpx_clients_send_the_header_through_a_mock_transport(
    rotating: tuple[TokenSource, AtomicWriter], key: SigningKey
) -> None:
    httpx = pytest.importorskip("httpx")
    source, writer = rotating
    minted = minter(key)()
    writer.write({KEY: bundle(minted)})
    received: list[str] = []

    def handler(request: Any) -> Any:
        received.append(request.headers["Authorization"])
        return httpx.Response(204)

    with httpx.Client(transport=httpx.MockTransport(handler), auth=source.httpx_auth()) as http:
        assert http.get(URL).status_code == 204

    async def call() -> int:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport, auth=source.httpx_auth()) as http:
            response = await http.get(URL)
            return int(response.status_code)

    assert asyncio.run(call()) == 204
    assert received == [f"Bearer {minted.token}"] * 2


def test_importing_the_client_needs_only_the_standard_library() -> None:
    code = (
        "import sys, agenttoken_sdk.client; "
        "heavy = {'joserfc', 'cryptography', 'requests', 'httpx', 'agenttoken_sdk.jose', 'agenttoken'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert out.strip() == "[]"
