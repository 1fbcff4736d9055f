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

from devcluster import cache_bins_dir, free_ports

VERSION = "26.7.3"
REALM = "agents"
CLIENT_ID = "agent-bot"
CLIENT_SECRET = "bot-s3cret-value"  # a test credential; the leak checks look for it


# Preview features the oauth2 grants need: RFC 7523 jwt-bearer (`jwt-authorization-grant`), and
# RFC 8693 exchange of an external token (legacy `token-exchange` v1, whose per-IdP permission
# needs fine-grained admin permissions v1; standard exchange v2 only takes this realm's tokens).
FEATURES = ("jwt-authorization-grant", "token-exchange", "admin-fine-grained-authz:v1")


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
    scope_id: str = ""

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
             f"--http-port={port}", f"--http-management-port={management}", "--cache=local",
             f"--features={','.join(FEATURES)}"],
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


def _admin_token(kc: Keycloak) -> str:
    status, _, raw = _request(
        "POST",
        f"{kc.base}/realms/master/protocol/openid-connect/token",
        {"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin-pass"},
        form=True,
    )
    assert status == 200, raw[:300]
    return str(json.loads(raw)["access_token"])


def admin(kc: Keycloak, method: str, path: str, body: Any = None) -> tuple[dict[str, str], Any]:
    """One admin REST call under /admin/realms: (headers, parsed JSON body or None)."""
    status, headers, raw = _request(method, f"{kc.base}/admin/realms{path}", body, token=_admin_token(kc))
    assert status < 300, f"{method} {path}: {status} {raw[:300]!r}"
    return headers, (json.loads(raw) if raw.strip() else None)


def _created_id(headers: dict[str, str]) -> str:
    return headers["Location"].rsplit("/", 1)[1]


def _prepare(kc: Keycloak) -> None:
    admin(kc, "POST", "", {"realm": REALM, "enabled": True, "accessTokenLifespan": 60})
    headers, _ = admin(
        kc,
        "POST",
        f"/{REALM}/client-scopes",
        {
            "name": "tickets:read",
            "protocol": "openid-connect",
            "attributes": {"include.in.token.scope": "true"},
        },
    )
    kc.scope_id = _created_id(headers)
    admin(
        kc,
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
    _, clients = admin(kc, "GET", f"/{REALM}/clients?clientId={CLIENT_ID}")
    admin(kc, "PUT", f"/{REALM}/clients/{clients[0]['id']}/optional-client-scopes/{kc.scope_id}")


def trust_operator(
    kc: Keycloak,
    *,
    alias: str,
    client_id: str,
    issuer: str,
    jwks_url: str | None = None,
    jwks: Any = None,
    client_jwks_url: str | None = None,
) -> None:
    """Make Keycloak trust tokens signed by the operator (or by the apiserver's ServiceAccount keys).

    - an OpenID Connect identity provider `alias` whose issuer and keys (a JWKS URL, or a JWKS
      given inline) are those of the subject tokens, with the JWT Authorization Grant switched on;
    - a confidential client `client_id` that authenticates with `private_key_jwt` against the
      operator's client-assertion JWKS when `client_jwks_url` is given (else with CLIENT_SECRET),
      may use the jwt-bearer grant with that provider, and may exchange its tokens (legacy token
      exchange permission).
    """
    keys = {"useJwksUrl": "true", "jwksUrl": jwks_url} if jwks_url else {
        "useJwksUrl": "false", "publicKeySignatureVerifier": json.dumps(jwks)
    }  # fmt: skip
    admin(
        kc,
        "POST",
        f"/{REALM}/identity-provider/instances",
        {
            "alias": alias,
            "providerId": "oidc",
            "enabled": True,
            "config": {
                "issuer": issuer,
                "validateSignature": "true",
                # Exchange v1 otherwise wants Keycloak's own `typ` claim (ID/Bearer) in the subject token.
                "disableTypeClaimCheck": "true",
                **keys,
                "jwtAuthorizationGrantEnabled": "true",
                # ServiceAccount tokens live at least 10 minutes (the default allows 5).
                "jwtAuthorizationGrantMaxAllowedAssertionExpiration": "3600",
                "clientId": "unused",
                "clientSecret": "unused",
                "clientAuthMethod": "client_secret_post",
                "authorizationUrl": f"{issuer}/unused/authorize",
                "tokenUrl": f"{issuer}/unused/token",
                "syncMode": "IMPORT",
            },
        },
    )
    auth = (
        {"clientAuthenticatorType": "client-jwt"}
        if client_jwks_url
        else {"clientAuthenticatorType": "client-secret", "secret": CLIENT_SECRET}
    )
    attributes = {
        "oauth2.jwt.authorization.grant.enabled": "true",
        "oauth2.jwt.authorization.grant.idp": alias,
        **({"use.jwks.url": "true", "jwks.url": client_jwks_url} if client_jwks_url else {}),
    }
    headers, _ = admin(
        kc,
        "POST",
        f"/{REALM}/clients",
        {
            "clientId": client_id,
            "publicClient": False,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            **auth,
            "attributes": attributes,
        },
    )
    client = _created_id(headers)
    admin(kc, "PUT", f"/{REALM}/clients/{client}/optional-client-scopes/{kc.scope_id}")
    # Legacy token exchange: the client may exchange tokens of this identity provider.
    _, perms = admin(
        kc, "PUT", f"/{REALM}/identity-provider/instances/{alias}/management/permissions", {"enabled": True}
    )
    _, mgmt = admin(kc, "GET", f"/{REALM}/clients?clientId=realm-management")
    authz = f"/{REALM}/clients/{mgmt[0]['id']}/authz/resource-server"
    headers, _ = admin(
        kc, "POST", f"{authz}/policy/client", {"name": f"{client_id}-may-exchange", "clients": [client]}
    )
    _, policies = admin(kc, "GET", f"{authz}/policy?name={client_id}-may-exchange")
    permission_id = perms["scopePermissions"]["token-exchange"]
    _, permission = admin(kc, "GET", f"{authz}/permission/scope/{permission_id}")
    permission["policies"] = [policies[0]["id"]]
    admin(kc, "PUT", f"{authz}/permission/scope/{permission_id}", permission)


def link_user(kc: Keycloak, *, alias: str, subject: str) -> str:
    """A Keycloak user linked to `subject` at identity provider `alias` (the jwt-bearer grant and
    the legacy exchange map the subject token's `sub` to this user). Returns the user id."""
    username = "linked-" + subject.replace(":", "-").lower()[-60:]
    headers, _ = admin(
        kc, "POST", f"/{REALM}/users", {"username": username, "enabled": True, "email": f"{username}@example.com",
                                        "firstName": "Agent", "lastName": "Linked", "emailVerified": True}
    )  # fmt: skip
    user = _created_id(headers)
    admin(
        kc,
        "POST",
        f"/{REALM}/users/{user}/federated-identity/{alias}",
        {"identityProvider": alias, "userId": subject, "userName": subject},
    )
    return user
