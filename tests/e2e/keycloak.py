"""A real Keycloak on 127.0.0.1 for the oauth2 issuer tests.

The server distribution comes from Maven Central (`org.keycloak:keycloak-quarkus-dist`, fetched
with mvn into the cache once), runs in dev mode with an in-memory database on Java >= 21 (the
machine's Temurin JDK), and gets a realm, a client scope and a confidential client through the
admin REST API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenttoken.devcluster import cache_bins_dir, free_ports

VERSION = "26.7.3"
REALM = "agents"
CLIENT_ID = "agent-bot"
CLIENT_SECRET = "bot-s3cret-value"  # a test credential; the leak checks look for it


def _java_home() -> str | None:
    candidates = [
        os.environ.get("KEYCLOAK_JAVA_HOME", ""),
        *sorted(Path("/usr/lib/jvm").glob("temurin-2[1-9]*"), reverse=True),
    ]
    for home in candidates:
        if home and (Path(home) / "bin" / "java").exists():
            return str(home)
    return None


def distribution() -> Path:
    """The unpacked distribution in the cache (downloaded with mvn on first use)."""
    root = cache_bins_dir().parent / "keycloak"
    home = root / f"keycloak-{VERSION}"
    if (home / "bin" / "kc.sh").exists():
        return home
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"keycloak-quarkus-dist-{VERSION}.tar.gz"
    if not archive.exists():
        mvn = shutil.which("mvn")
        if not mvn:
            raise RuntimeError("mvn is needed to fetch Keycloak from Maven Central")
        subprocess.run(
            [mvn, "-q", "-B", "dependency:copy", f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{VERSION}:tar.gz",
             f"-DoutputDirectory={root}"],
            check=True, timeout=900,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return home


def _request(
    method: str, url: str, body: Any = None, token: str | None = None, form: bool = False
) -> tuple[int, dict[str, str], bytes]:
    data = None
    headers = {}
    if body is not None:
        data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass
class Keycloak:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def issuer(self) -> str:
        return f"{self.base}/realms/{REALM}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start(workdir: Path, timeout: float = 300) -> Keycloak:
    java = _java_home()
    if java is None:
        raise RuntimeError(
            "Keycloak needs Java >= 21 (no Temurin 21+ under /usr/lib/jvm; set KEYCLOAK_JAVA_HOME)"
        )
    home = distribution()
    port, management = free_ports(2)
    log = workdir / "keycloak.log"
    env = {
        **os.environ,
        "JAVA_HOME": java,
        "PATH": f"{java}/bin:{os.environ.get('PATH', '')}",
        "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
        "KC_BOOTSTRAP_ADMIN_PASSWORD": "admin-pass",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(home / "bin" / "kc.sh"), "start-dev", "--db=dev-mem", "--http-host=127.0.0.1",
             f"--http-port={port}", f"--http-management-port={management}", "--cache=local"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Keycloak exited ({proc.returncode}); log {log}:\n" + log.read_text()[-3000:])
        try:
            if _request("GET", f"{base}/realms/master")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Keycloak not ready within {timeout:.0f}s; log {log}")
        time.sleep(1)
    kc = Keycloak(base, proc, log)
    _prepare(kc)
    return kc


def _prepare(kc: Keycloak) -> None:
    status, _, raw = _request(
        "POST",
        f"{kc.base}/realms/master/protocol/openid-connect/token",
        {"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin-pass"},
        form=True,
    )
    assert status == 200, raw[:300]
    admin = json.loads(raw)["access_token"]

    def call(method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        status, headers, raw = _request(method, f"{kc.base}/admin/realms{path}", body, token=admin)
        assert status < 300, f"{method} {path}: {status} {raw[:300]!r}"
        return status, headers, raw

    call("POST", "", {"realm": REALM, "enabled": True, "accessTokenLifespan": 60})
    _, headers, _ = call(
        "POST",
        f"/{REALM}/client-scopes",
        {
            "name": "tickets:read",
            "protocol": "openid-connect",
            "attributes": {"include.in.token.scope": "true"},
        },
    )
    scope_id = headers["Location"].rsplit("/", 1)[1]
    call(
        "POST",
        f"/{REALM}/clients",
        {
            "clientId": CLIENT_ID,
            "publicClient": False,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "clientAuthenticatorType": "client-secret",
            "secret": CLIENT_SECRET,
        },
    )
    _, _, raw = call("GET", f"/{REALM}/clients?clientId={CLIENT_ID}")
    client = json.loads(raw)[0]["id"]
    call("PUT", f"/{REALM}/clients/{client}/optional-client-scopes/{scope_id}")
