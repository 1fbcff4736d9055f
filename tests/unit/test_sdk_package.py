"""agent-token-sdk as its own distribution: the wheel installs alone, and the old paths still work.

The wheel test builds operator/sdk, installs it with its dependencies from PyPI into an empty venv
(no pip, no site-packages of ours) and, in that venv's interpreter, reads a token bundle and
verifies a token the operator's own minting code signed, with the JWKS from a file and from a URL.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
import venv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.parser import HeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from zipfile import ZipFile

import pytest

import agenttoken_sdk.client
import agenttoken_sdk.verify
import agenttoken_sdk.verifylog
from agenttoken.core.keys import KeyRing, generate_key
from agenttoken.core.tokens import TokenRequest, mint

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "operator" / "sdk"
ISSUER = "https://issuer.example.com"
AUDIENCE = "https://api.example.com"
# What an agent's image must not get from installing the SDK (the operator's runtime stack).
OPERATOR_ONLY = (
    "kopf",
    "kubernetes",
    "kubernetes-asyncio",
    "jinja2",
    "aiohttp",
    "pyyaml",
    "prometheus-client",
)

# Runs in the fresh venv: argv = bundle directory, JWKS file, JWKS URL, issuer, audience.
PROBE = """
import importlib.metadata, json, sys
from pathlib import Path

from agenttoken_sdk.client import TokenSource
from agenttoken_sdk.verify import VerificationError, Verifier

directory, jwks_file, jwks_url, issuer, audience = sys.argv[1:]
token = TokenSource(directory).token()
results = {}
for how, source in (("file", {"jwks": json.loads(Path(jwks_file).read_text())}), ("url", {"jwks_url": jwks_url})):
    verifier = Verifier(issuer=issuer, audience=audience, **source)
    claims = verifier.verify(token, required_scopes=["read:docs"])
    try:
        verifier.verify(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
        rejected = None
    except VerificationError as error:
        rejected = error.check
    results[how] = {"token_id": claims.token_id, "name": claims.name, "tampered": rejected}
installed = sorted(d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions())
print(json.dumps({"results": results, "installed": installed, "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize(
    "module",
    [agenttoken_sdk.client, agenttoken_sdk.verify, agenttoken_sdk.verifylog],
    ids=lambda module: module.__name__,
)
def test_old_import_path_warns_and_still_works(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    old = module.__name__.replace("agenttoken_sdk.", "agenttoken.")
    monkeypatch.delitem(sys.modules, old, raising=False)  # import it afresh, so it warns again

    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated.*import {module.__name__}"):
        shim = importlib.import_module(old)

    assert shim.__all__ == module.__all__
    assert all(getattr(shim, name) is getattr(module, name) for name in module.__all__)


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server for the JWKS file; yields (url, file)."""
    jwks_file = tmp_path / "jwks.json"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = jwks_file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/jwk-set+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", jwks_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run(*args: str | Path) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def test_sdk_wheel_installs_alone_and_verifies_operator_tokens(
    tmp_path: Path, jwks_server: tuple[str, Path]
) -> None:
    jwks_url, jwks_file = jwks_server
    now = datetime.now(UTC)
    key = generate_key("ES256", now - timedelta(minutes=1))
    request = TokenRequest(
        namespace="team-a",
        name="crawler",
        uid="0b8f6c2e-1111-2222-3333-444455556666",
        subject=None,
        audience=(AUDIENCE,),
        scopes=("read:docs",),
        ttl=timedelta(hours=1),
    )
    minted = mint(request, key, issuer=ISSUER, now=now)
    jwks_file.write_text(json.dumps(KeyRing((key,)).jwks(now)))
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "token.json").write_text(
        json.dumps(
            {
                "token": minted.token,
                "tokenId": minted.token_id,
                "issuedAt": minted.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "expiresAt": minted.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "revision": 1,
                "scopes": list(request.scopes),
                "audience": list(request.audience),
            }
        )
    )

    # Built from a copy: setuptools writes build/ next to the sources, and the checkout stays clean.
    source = shutil.copytree(
        SDK, tmp_path / "sdk", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, source)
    (wheel,) = wheels.glob("agent_token_sdk-*.whl")
    with ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = HeaderParser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist") or []
    assert "agenttoken_sdk/py.typed" in names
    assert not [n for n in names if n.startswith("agenttoken/")], (
        "the operator package is not in the SDK wheel"
    )
    # The size and dependency list, for the record (-s shows them).
    print(f"SDK wheel {wheel.name}: {wheel.stat().st_size} bytes; Requires-Dist: {requires}")

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)  # empty: not even pip; the outer pip installs into it
    python = target / "bin" / "python"
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        "--disable-pip-version-check",
        wheel,
    )

    report = json.loads(run(python, "-c", PROBE, volume, jwks_file, jwks_url, ISSUER, AUDIENCE))
    print(f"installed with the SDK wheel: {report['installed']}")

    for how in ("file", "url"):
        assert report["results"][how] == {
            "token_id": minted.token_id,
            "name": "crawler",
            "tampered": "signature",
        }
    assert "agent-token-sdk" in report["installed"]
    assert "agent-token-operator" not in report["installed"]
    assert [d for d in OPERATOR_ONLY if d in report["installed"]] == []
    assert [m for m in report["modules"] if m == "agenttoken" or m.startswith("agenttoken.")] == []
