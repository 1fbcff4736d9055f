"""The other side of the token: HTTP endpoints, the SDK token source and verifier, the CLI."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from agenttoken_sdk.client import TokenSource
from agenttoken_sdk.verify import VerificationError, Verifier

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import ISSUER, SEEN_TOKENS, agenttoken, secret_data, status, wait_ready

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, dict(resp.headers), resp.read()


def verifier(operator: OperatorProcess, audience: str = "https://api.example.com") -> Verifier:
    return Verifier(
        issuer=ISSUER,
        audience=audience,
        jwks_url=f"{operator.base_url}/jwks.json",
        revocations_url=f"{operator.base_url}/revocations.json",
    )


def test_http_endpoints_publish_keys_and_revocations(kube: Kube, operator: OperatorProcess) -> None:
    code, headers, body = get(f"{operator.base_url}/.well-known/openid-configuration")
    assert code == 200
    doc = json.loads(body)
    assert doc["issuer"] == ISSUER
    assert doc["jwks_uri"] == f"{ISSUER}/jwks.json"
    # The same documents under the issuer's own path, as the discovery URL implies.
    assert get(f"{operator.base_url}/issuers/builtin/.well-known/openid-configuration")[2] == body

    code, headers, body = get(f"{operator.base_url}/jwks.json")
    assert headers["Content-Type"].startswith("application/jwk-set+json")
    max_age = int(re.search(r"max-age=(\d+)", headers["Cache-Control"]).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= 300, (
        "a cached JWKS must still show a new key before it signs (published 10 min ahead)"
    )
    keys = json.loads(body)["keys"]
    assert keys
    assert all("d" not in k for k in keys)
    cm = kube.get_json("configmap", "agenttoken-jwks", "-n", "agenttoken-system")
    assert cm is not None
    assert {k["kid"] for k in keys} == {k["kid"] for k in json.loads(cm["data"]["jwks.json"])["keys"]}

    code, headers, _ = get(f"{operator.base_url}/revocations.json")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["ETag"]
    assert b"agenttoken_" in get(f"{operator.base_url}/metrics")[2]
    assert get(f"{operator.base_url}/healthz")[0] == 200


def test_revoked_token_is_rejected_within_a_second(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    for name in ("doomed", "spared"):
        kube.apply(agenttoken(name, f"{name}-token"), "-n", namespace)
    for name in ("doomed", "spared"):
        wait_ready(kube, namespace, name)
    doomed = secret_data(kube, namespace, "doomed-token")
    spared = secret_data(kube, namespace, "spared-token")
    assert doomed is not None
    assert spared is not None
    v = verifier(operator)
    assert v.verify(doomed["token"]).token_id == status(kube, namespace, "doomed")["tokenId"]

    cli = subprocess.run(
        [str(BIN / "agenttoken"), "revoke", "doomed", "-n", namespace, "--no-rotate"],
        env=kube.env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    revoked_at = time.monotonic()

    def rejected() -> str | None:
        try:
            v.verify(doomed["token"])
        except VerificationError as exc:
            return exc.check
        return None

    assert (
        wait_for("the verifier to reject the revoked token", rejected, timeout=1.0, interval=0.05)
        == "revoked"
    )
    assert time.monotonic() - revoked_at <= 1.0
    assert v.verify(spared["token"]).token_id == status(kube, namespace, "spared")["tokenId"]


def _node_jose() -> Path:
    """jose from npm, installed once into the cache (never into the repo)."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the jose cross-check")
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agent-token-operator" / "node-jose"
    )
    if not (cache / "node_modules" / "jose" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "jose@6"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return cache


def test_node_jose_verifies_operator_tokens(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    cache = _node_jose()
    kube.apply(agenttoken("polyglot", "polyglot-token"), "-n", namespace)
    wait_ready(kube, namespace, "polyglot")
    data = secret_data(kube, namespace, "polyglot-token")
    assert data is not None
    script = """
      const { createLocalJWKSet, jwtVerify } = await import('jose');
      const [jwks, token, issuer, audience] = JSON.parse(process.argv[1]);
      const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(jwks), { issuer, audience, typ: 'at+jwt' });
      console.log(JSON.stringify({ jti: payload.jti, alg: protectedHeader.alg }));
    """
    jwks = json.loads(get(f"{operator.base_url}/jwks.json")[2])
    args = json.dumps([jwks, data["token"], ISSUER, "https://api.example.com"])
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script, args],
        cwd=cache, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-500:]
    assert json.loads(result.stdout)["jti"] == status(kube, namespace, "polyglot")["tokenId"]


class Kubelet:
    """Projects a Secret into a directory exactly like kubelet's AtomicWriter: a timestamped
    directory, `..data` swapped by renaming `..data_tmp` over it, and per-key symlinks."""

    def __init__(self, kube: Kube, namespace: str, secret: str, target: Path) -> None:
        self.kube, self.namespace, self.secret, self.target = kube, namespace, secret, target
        self.swaps = 0
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def write(self, data: dict[str, str]) -> None:
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + str(time.time_ns() % 10**9)
        new = self.target / stamp
        new.mkdir()
        for key, value in data.items():
            (new / key).write_text(value)
        old = (self.target / "..data").resolve() if (self.target / "..data").exists() else None
        tmp = self.target / "..data_tmp"
        tmp.symlink_to(stamp)
        os.replace(tmp, self.target / "..data")
        for key in data:
            link = self.target / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        if old is not None:
            shutil.rmtree(old)
        self.swaps += 1

    def _run(self) -> None:
        last = None
        while not self.stop.is_set():
            try:
                secret = self.kube.get_json("secret", self.secret, "-n", self.namespace)
                rv = secret["metadata"]["resourceVersion"] if secret else None
                if secret and rv != last:
                    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
                    SEEN_TOKENS.add(data["token"])
                    self.write(data)
                    last = rv
            except Exception as exc:  # surfaced by the test, never swallowed
                self.errors.append(repr(exc)[:200])
            self.stop.wait(0.2)


def test_token_source_never_sees_an_expired_or_torn_token_across_20_renewals(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    # Renew with 95 % of the lifetime left: a new token every ~3 s.
    kube.apply(agenttoken("churn", "churn-token", ttl="60s", renewBeforePercentage=95), "-n", namespace)
    wait_ready(kube, namespace, "churn")
    mount = tmp_path / "mount"
    mount.mkdir()
    kubelet = Kubelet(kube, namespace, "churn-token", mount)
    kubelet.thread.start()
    wait_for("the first projection", lambda: kubelet.swaps >= 1, timeout=10)
    source = TokenSource(mount)
    first = status(kube, namespace, "churn")["revision"]
    v = verifier(operator)
    problems: list[str] = []
    reads = 0
    ids: set[str] = set()
    try:
        deadline = time.monotonic() + 150
        while status(kube, namespace, "churn")["revision"] < first + 20:
            assert time.monotonic() < deadline, "fewer than 20 renewals in 150 s"
            for _ in range(20):
                token = source.token()
                reads += 1
                try:
                    claims = v.verify(token)  # signature, expiry: a torn or expired token fails here
                    ids.add(claims.token_id)
                except VerificationError as exc:
                    problems.append(exc.check)
                time.sleep(0.01)
    finally:
        kubelet.stop.set()
        kubelet.thread.join(timeout=10)
    assert not kubelet.errors, kubelet.errors[:3]
    assert not problems, problems[:5]
    assert kubelet.swaps >= 20
    assert len(ids) >= 15, f"the source followed only {len(ids)} of {kubelet.swaps} tokens"
    assert reads > 0


def cli(kube: Kube, *args: str, via_kubectl: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**kube.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [str(BIN / "kubectl"), "agenttoken", *args] if via_kubectl else [str(BIN / "agenttoken"), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)


def test_cli_commands(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "agenttoken-basic.yaml"))
    kube.kubectl("label", "agenttoken", "research-agent", "-n", namespace, "team=tickets")
    wait_ready(kube, namespace, "research-agent")
    st = status(kube, namespace, "research-agent")
    data = secret_data(kube, namespace, "research-agent-token")
    assert data is not None
    kube.wait_event(namespace, "research-agent", "TokenIssued")  # posted in the background

    out = cli(kube, "status", "research-agent", "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert st["tokenId"] in out.stdout
    assert "Events:" in out.stdout
    assert "TokenIssued" in out.stdout
    listed = json.loads(cli(kube, "status", "-A", "-o", "json").stdout)
    assert any(i["name"] == "research-agent" and i["namespace"] == namespace for i in listed)
    selected = cli(kube, "status", "-n", namespace, "-l", "team=tickets")
    assert "research-agent" in selected.stdout
    assert "yaml" not in cli(kube, "status", "research-agent", "-n", namespace, "-o", "yaml").stderr

    inspected = cli(kube, "inspect", "research-agent", "-n", namespace, "-o", "json")
    assert inspected.returncode == 0, inspected.stderr
    doc = json.loads(inspected.stdout)
    assert doc["claims"]["jti"] == st["tokenId"]
    assert doc["header"]["typ"] == "at+jwt"

    verified = cli(
        kube,
        "verify",
        "research-agent",
        "-n",
        namespace,
        "--audience",
        "https://tickets.example.com",
        "--scope",
        "tickets:read",
    )
    assert verified.returncode == 0, verified.stderr
    assert "VALID" in verified.stdout
    wrong = cli(kube, "verify", "research-agent", "-n", namespace, "--audience", "https://other.example.com")
    assert wrong.returncode == 1
    assert "(aud)" in wrong.stderr
    over_http = cli(
        kube,
        "verify",
        "research-agent",
        "-n",
        namespace,
        "--audience",
        "https://tickets.example.com",
        "--url",
        operator.base_url,
    )
    assert over_http.returncode == 0, over_http.stderr

    keys = cli(kube, "jwks", "-o", "json")
    assert keys.returncode == 0
    assert st["keyId"] in {k["kid"] for k in json.loads(keys.stdout)["keys"]}

    rotated = cli(kube, "rotate", "research-agent", "-n", namespace, via_kubectl=True)
    assert rotated.returncode == 0, rotated.stderr
    wait_for(
        "the rotation",
        lambda: status(kube, namespace, "research-agent")["revision"] == st["revision"] + 1,
        timeout=15,
    )
    assert cli(kube, "rotate", "-n", namespace, "--all").returncode == 0
    wait_for(
        "the second rotation",
        lambda: status(kube, namespace, "research-agent")["revision"] == st["revision"] + 2,
        timeout=15,
    )
    via_plugin = cli(kube, "status", "research-agent", "-n", namespace, via_kubectl=True)
    assert via_plugin.returncode == 0, via_plugin.stderr
    missing = cli(kube, "status", "nope", "-n", namespace)
    assert missing.returncode == 1
    assert 'AgentToken "nope" not found' in missing.stderr

    # No command prints a token.
    for output in (out, inspected, verified, over_http, via_plugin):
        assert data["token"] not in output.stdout + output.stderr


def test_cli_doc_examples_run(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    """Every `$ agenttoken ...` / `$ kubectl agenttoken ...` line in docs/cli.md runs and succeeds."""
    kube.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "agenttoken-basic.yaml"))
    wait_ready(kube, namespace, "research-agent")
    # Not `keys revoke`: revoking the signing key re-mints every token of the shared cluster
    # (tests/e2e/test_key_revocation.py runs it against its own tokens).
    lines = [
        line.removeprefix("$ ").strip()
        for line in (REPO / "docs" / "cli.md").read_text().splitlines()
        if line.startswith(("$ agenttoken ", "$ kubectl agenttoken ")) and " keys revoke " not in line
    ]
    assert len(lines) >= 8
    for line in lines:
        args = line.replace("$NS", namespace).replace("$URL", operator.base_url).split()
        via_kubectl = args[0] == "kubectl"
        result = cli(kube, *args[2 if via_kubectl else 1 :], via_kubectl=via_kubectl)
        assert result.returncode == 0, f"{line}: {result.stderr[-300:]}"


def test_sdk_doc_examples_run(kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    """The Python blocks of docs/sdk.md run as written (paths and URLs pointed at this cluster)."""
    kube.apply(
        agenttoken(
            "documented",
            "documented-token",
            audience=["https://tickets.example.com"],
            scopes=["tickets:read"],
            environment="prod",
        ),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "documented")
    data = secret_data(kube, namespace, "documented-token")
    assert data is not None
    mount = tmp_path / "mount"
    mount.mkdir()
    Kubelet(kube, namespace, "documented-token", mount).write(data)
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "sdk.md").read_text(), re.S)
    # The first two run here; the later ones (an MCP server's wiring, a pod's token source) need
    # a server or a pod around them and run in test_mcp / the node tier: here they must compile.
    assert len(blocks) >= 2
    agent, api_side, *later = blocks
    for i, block in enumerate(later):
        compile(block, f"docs/sdk.md python block {i + 3}", "exec")
    scope: dict[str, object] = {}
    exec(agent.replace("/var/run/agenttoken", str(mount)), scope)  # noqa: S102 (our own docs)
    assert scope["token"] == data["token"]
    rejected: list[object] = []
    scope = {"token": data["token"], "peer_ip": "10.1.2.3", "reject": lambda *a: rejected.append(a)}
    code = api_side.replace("http://agent-token-operator.agenttoken-system.svc:8080", operator.base_url)
    exec(code, scope)  # noqa: S102 (our own docs)
    assert not rejected
    assert scope["claims"].token_id == status(kube, namespace, "documented")["tokenId"]  # type: ignore[attr-defined]
