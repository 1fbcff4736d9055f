"""Practices 1 and 2, end to end: delivery formats (env-style key, rendered config file) and the
connectivity check a new token must pass before any workload is switched over."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import REPO, SEEN_TOKENS, agenttoken, claims_of, secret_data, status, wait_ready
from .test_rollouts import KEY_PREFIX, replicasets, rotate, wait_rolled

# Tokens spec.verify held back and that were never delivered: the final leak scan checks that
# they are in no Secret either (test_zz_final.py).
NEVER_DELIVERED: set[str] = set()

CONFIG_TEMPLATE = 'api_token: {{ token }}\nscopes: {{ scopes | tojson }}\nexpires_at: "{{ expiresAt }}"\n'


def deployment(name: str, pod_spec: dict[str, Any], replicas: int = 2) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
            },
        }
    )


def env_from_pod(secret: str) -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "agent",
                "image": "example.invalid/agent:1",
                "envFrom": [{"secretRef": {"name": secret}}],
            }
        ]
    }


def config_file_pod(secret: str, key: str) -> dict[str, Any]:
    # The agent reads /etc/agent/config.yaml once at start-up (a subPath mount never refreshes).
    return {
        "containers": [
            {
                "name": "agent",
                "image": "example.invalid/agent:1",
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/agent/config.yaml", "subPath": "config.yaml"}
                ],
            }
        ],
        "volumes": [
            {
                "name": "config",
                "secret": {"secretName": secret, "items": [{"key": key, "path": "config.yaml"}]},
            }
        ],
    }


def token_spec(name: str, secret: dict[str, Any] | str, **spec: Any) -> str:
    """An AgentToken whose spec.secret may carry keys and a config template."""
    body = json.loads(agenttoken(name, secret if isinstance(secret, str) else secret["name"], **spec))
    if isinstance(secret, dict):
        body["spec"]["secret"] = secret
    return json.dumps(body)


def template_annotation(kube: Kube, namespace: str, name: str, agenttoken_name: str) -> str | None:
    obj = kube.get_json("deployment", name, "-n", namespace)
    assert obj is not None
    annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
    value: str | None = annotations.get(KEY_PREFIX + agenttoken_name)
    return value


def events_of(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    events = kube.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return list((events or {}).get("items", []))


def conditions_of(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions") or []}


def test_env_and_config_consumers_receive_the_renewed_token(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(deployment("env-agent", env_from_pod("agent-token")), "-n", namespace)
    kube.apply(deployment("file-agent", config_file_pod("agent-token", "config.yaml")), "-n", namespace)
    secret = {
        "name": "agent-token",
        "keys": {"env": "AGENT_API_TOKEN"},
        "config": {"key": "config.yaml", "template": CONFIG_TEMPLATE},
    }
    kube.apply(token_spec("agent", secret, rollout={"autoDiscover": True}), "-n", namespace)
    wait_ready(kube, namespace, "agent")
    first = wait_rolled(kube, namespace, "agent")

    def delivered(token_id: str) -> dict[str, str]:
        data = secret_data(kube, namespace, "agent-token")
        assert data is not None
        token = data["token"]
        assert claims_of(token)["jti"] == token_id
        assert data["AGENT_API_TOKEN"] == token
        config = yaml.safe_load(data["config.yaml"])
        assert config == {
            "api_token": token,
            "scopes": ["read"],
            "expires_at": status(kube, namespace, "agent")["expiresAt"],
        }
        return data

    before = delivered(first["tokenId"])
    for app in ("env-agent", "file-agent"):
        assert template_annotation(kube, namespace, app, "agent") == first["tokenId"]
    consumers = {c["name"]: c for c in status(kube, namespace, "agent")["consumers"]}
    assert consumers["env-agent"]["via"] == ["envFrom"]
    assert "volume+subPath" in consumers["file-agent"]["via"]
    assert all(c["needsRestart"] and c["restartedOnRenewal"] for c in consumers.values())

    rotate(kube, namespace, "agent", "r1")
    after = wait_for(
        "the rollout of the renewed token",
        lambda: (
            (r := status(kube, namespace, "agent").get("rollout") or {}).get("tokenId") != first["tokenId"]
            and r.get("state") == "Complete"
            and r
        ),
        timeout=120,
    )
    renewed = delivered(after["tokenId"])
    assert renewed["AGENT_API_TOKEN"] != before["AGENT_API_TOKEN"]
    for app in ("env-agent", "file-agent"):
        assert template_annotation(kube, namespace, app, "agent") == after["tokenId"]
    assert {(t["name"], t["state"]) for t in after["targets"]} == {
        ("env-agent", "Complete"),
        ("file-agent", "Complete"),
    }


# Each tries to reach a file, the operator's environment or Python internals.
ESCAPES = [
    ("include a file", "{% include '/etc/passwd' %}", "include is not allowed"),
    ("import a file", "{% import '/proc/self/environ' as e %}", "import is not allowed"),
    ("extends a file", "{% extends '/etc/hostname' %}", "extends is not allowed"),
    ("env lookup", "home: {{ lookup('env', 'HOME') }}", "calls is not allowed"),
    ("os.environ via globals", "{{ cycler.__init__.__globals__.os.environ }}", "forbidden by the sandbox"),
    ("class walk", "{{ token.__class__.__mro__[1].__subclasses__() }}", "calls is not allowed"),
    ("class attribute", "{{ token.__class__ }}", "access to attribute '__class__'"),
    ("environment variable name", "{{ KUBECONFIG }}", "'KUBECONFIG' is undefined"),
    ("template self", "{{ self._TemplateReference__context }}", "forbidden by the sandbox"),
]


@pytest.mark.parametrize(("case", "template", "message"), ESCAPES, ids=[c[0] for c in ESCAPES])
def test_config_template_cannot_read_files_or_environment(
    kube: Kube, operator: OperatorProcess, namespace: str, case: str, template: str, message: str
) -> None:
    secret = {"name": "escape-token", "config": {"key": "config.yaml", "template": template}}
    kube.apply(token_spec("escape", secret), "-n", namespace)
    stalled = wait_for(
        f"{case}: Stalled",
        lambda: (c := conditions_of(status(kube, namespace, "escape")).get("Stalled")) and c,
        timeout=30,
    )
    assert stalled["reason"] == "InvalidConfigTemplate"
    assert message in stalled["message"], stalled["message"]
    ready = conditions_of(status(kube, namespace, "escape"))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidConfigTemplate")
    assert kube.get_json("secret", "escape-token", "-n", namespace) is None, "nothing may be written"
    assert "tokenId" not in status(kube, namespace, "escape"), "nothing may be minted"


def test_a_bad_template_fixed_later_renders_and_a_good_one_changes_without_a_new_token(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    secret: dict[str, Any] = {"name": "cfg-token", "config": {"key": "c.json", "template": "{{ nope }}"}}
    kube.apply(token_spec("cfg", secret), "-n", namespace)
    wait_for(
        "Stalled on the undefined variable",
        lambda: (
            "'nope' is undefined"
            in conditions_of(status(kube, namespace, "cfg")).get("Stalled", {}).get("message", "")
        ),
        timeout=30,
    )
    secret["config"]["template"] = '{"api_token": {{ token | tojson }}}'
    kube.apply(token_spec("cfg", secret), "-n", namespace)
    wait_ready(kube, namespace, "cfg")
    data = secret_data(kube, namespace, "cfg-token")
    assert data is not None
    assert json.loads(data["c.json"]) == {"api_token": data["token"]}
    token_id = status(kube, namespace, "cfg")["tokenId"]
    secret["config"]["template"] = "api_token: {{ token }}\n"
    kube.apply(token_spec("cfg", secret), "-n", namespace)
    wait_for(
        "the config re-rendered",
        lambda: (
            (d := secret_data(kube, namespace, "cfg-token")) and d["c.json"] == f"api_token: {d['token']}\n"
        ),
        timeout=30,
    )
    assert status(kube, namespace, "cfg")["tokenId"] == token_id, "a template change mints nothing"
    # Dropping the config from the spec removes its key rather than leaving a stale copy.
    kube.apply(token_spec("cfg", {"name": "cfg-token"}), "-n", namespace)
    wait_for(
        "the config key removed",
        lambda: (d := secret_data(kube, namespace, "cfg-token")) is not None and "c.json" not in d,
        timeout=30,
    )
    assert status(kube, namespace, "cfg")["tokenId"] == token_id


def test_env_consumers_the_strategy_cannot_restart_are_warned(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(deployment("stranded", env_from_pod("warn-token"), replicas=1), "-n", namespace)
    kube.apply(deployment("targeted", env_from_pod("warn-token"), replicas=1), "-n", namespace)
    kube.apply(
        token_spec(
            "warn",
            {"name": "warn-token", "keys": {"env": "AGENT_API_TOKEN"}},
            rollout={"targets": [{"kind": "Deployment", "name": "targeted"}]},
        ),
        "-n",
        namespace,
    )
    consumers = wait_for(
        "both consumers in status",
        lambda: len(c := status(kube, namespace, "warn").get("consumers") or []) == 2 and c,
        timeout=60,
    )
    by_name = {c["name"]: c for c in consumers}
    assert (by_name["stranded"]["needsRestart"], by_name["stranded"]["restartedOnRenewal"]) == (True, False)
    assert (by_name["targeted"]["needsRestart"], by_name["targeted"]["restartedOnRenewal"]) == (True, True)
    warning = wait_for(
        "a ConsumerNeedsRestart warning",
        lambda: next(
            (e for e in events_of(kube, namespace, "warn") if e["reason"] == "ConsumerNeedsRestart"), None
        ),
        timeout=30,
    )
    assert warning["type"] == "Warning"
    assert "Deployment/stranded" in warning["message"]
    assert "Deployment/targeted" not in warning["message"]
    assert "not rollout targets" in warning["message"]


INVALID = [
    ("env key not an env name", {"name": "s", "keys": {"env": "agent-api-token"}}, "spec.secret.keys.env"),
    ("env key clashes", {"name": "s", "keys": {"env": "token"}}, "must differ"),
    ("config key clashes", {"name": "s", "config": {"key": "token.json", "template": "x"}}, "must differ"),
    ("config without template", {"name": "s", "config": {"key": "c.yaml"}}, "template"),
]


@pytest.mark.parametrize(("case", "secret", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_delivery_specs_are_rejected(
    kube: Kube, crds: Path, namespace: str, case: str, secret: dict[str, Any], message: str
) -> None:
    result = kube.apply(token_spec("bad", secret), "-n", namespace, "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr


INVALID_VERIFY = [
    ("no url", {"method": "GET"}, "url"),
    ("not http", {"url": "ftp://api.example.com/"}, "verify.url must be an http"),
    ("long timeout", {"url": "https://api.example.com/", "timeout": "5m"}, "at most 30s"),
    ("bad status", {"url": "https://api.example.com/", "expectedStatus": [99]}, "expectedStatus"),
    (
        "two CA sources",
        {"url": "https://a.example/", "caBundle": "x", "caBundleRef": {"kind": "ConfigMap", "name": "ca"}},
        "mutually exclusive",
    ),
]


@pytest.mark.parametrize(("case", "verify", "message"), INVALID_VERIFY, ids=[c[0] for c in INVALID_VERIFY])
def test_invalid_verify_specs_are_rejected(
    kube: Kube, crds: Path, namespace: str, case: str, verify: dict[str, Any], message: str
) -> None:
    result = kube.apply(
        token_spec("bad", "s", verify=verify), "-n", namespace, "--dry-run=server", check=False
    )
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr


class TicketsAPI(http.server.BaseHTTPRequestHandler):
    """A real API for the connectivity check: accepts bearer tokens while `accepting`, and
    (pathologically) echoes the token in its body, which must never end up anywhere."""

    accepting = True
    seen: list[str] = []  # bearer tokens received, in order (never printed)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ")
        TicketsAPI.seen.append(token)
        SEEN_TOKENS.add(token)
        code = 200 if TicketsAPI.accepting and auth.startswith("Bearer ") else 401
        body = json.dumps({"echo": token, "ok": code == 200}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tickets_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TicketsAPI)
    server.daemon_threads, server.block_on_close = False, True
    TicketsAPI.accepting, TicketsAPI.seen = True, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whoami?probe=1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_verify_blocks_the_rollout_until_the_api_accepts_the_new_token(
    kube: Kube, operator: OperatorProcess, namespace: str, tickets_api: str
) -> None:
    kube.apply(deployment("caller", env_from_pod("caller-token")), "-n", namespace)
    verify = {"url": tickets_api, "expectedStatus": [200, 204], "timeout": "3s"}
    kube.apply(
        token_spec(
            "caller",
            {"name": "caller-token", "keys": {"env": "AGENT_API_TOKEN"}},
            rollout={"targets": [{"kind": "Deployment", "name": "caller"}]},
            verify=verify,
        ),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "caller")
    first = wait_rolled(kube, namespace, "caller")
    st = status(kube, namespace, "caller")
    assert st["verification"]["tokenId"] == st["tokenId"]
    assert st["verification"]["statusCode"] == 200
    assert st["verification"]["request"] == f"GET {tickets_api.split('?')[0]}", "no query in status"
    assert st["verification"]["lastSuccessTime"]
    data = secret_data(kube, namespace, "caller-token")
    assert data is not None
    assert TicketsAPI.seen == [data["token"]], "the delivered token is the one that was checked"
    old_token = data["token"]
    sets_before = len(replicasets(kube, namespace, "caller"))

    TicketsAPI.accepting = False
    rotate(kube, namespace, "caller", "r1")
    blocked = wait_for(
        "Ready to say why the new token is held back",
        lambda: (
            conditions_of(s := status(kube, namespace, "caller"))["Ready"]["reason"] == "VerificationFailed"
            and s
        ),
        timeout=60,
    )
    ready = conditions_of(blocked)["Ready"]
    assert ready["status"] == "True", "the old token is still valid"
    assert "answered HTTP 401" in ready["message"]
    assert "?probe" not in ready["message"], "the query is redacted"
    assert conditions_of(blocked)["Reconciling"]["reason"] == "VerificationFailed"
    assert blocked["tokenId"] == first["tokenId"]
    assert blocked["failedAttempts"] >= 1
    warning = wait_for(
        "a VerificationFailed warning",
        lambda: next(
            (e for e in events_of(kube, namespace, "caller") if e["reason"] == "VerificationFailed"), None
        ),
        timeout=30,
    )
    assert warning["type"] == "Warning"
    # Wait for a retry: the backoff re-checks the same held token (one mint, not one per attempt).
    wait_for("a second check", lambda: len(TicketsAPI.seen) >= 3, timeout=60)
    rejected = set(TicketsAPI.seen[1:])
    assert len(rejected) == 1, "retries re-check the same new token instead of minting again"
    data = secret_data(kube, namespace, "caller-token")
    assert data is not None
    assert data["token"] == old_token, "the old token is still served"
    assert data["AGENT_API_TOKEN"] == old_token
    assert template_annotation(kube, namespace, "caller", "caller") == first["tokenId"], "no workload patched"
    assert len(replicasets(kube, namespace, "caller")) == sets_before
    assert status(kube, namespace, "caller")["verification"]["tokenId"] == first["tokenId"]

    TicketsAPI.accepting = True
    after = wait_for(
        "the rollout of the verified token",
        lambda: (
            (r := status(kube, namespace, "caller").get("rollout") or {}).get("tokenId") != first["tokenId"]
            and r.get("state") == "Complete"
            and r
        ),
        timeout=400,  # the backoff doubles from 5 s; a few failures fit well inside this
    )
    data = secret_data(kube, namespace, "caller-token")
    assert data is not None
    assert data["token"] in rejected, "the token delivered is the one held back, now accepted"
    assert claims_of(data["token"])["jti"] == after["tokenId"]
    assert template_annotation(kube, namespace, "caller", "caller") == after["tokenId"]
    final = status(kube, namespace, "caller")
    assert final["verification"]["tokenId"] == after["tokenId"]
    assert final["failedAttempts"] == 0
    assert conditions_of(final)["Ready"]["reason"] == "TokenReady"
    # Nothing the API said (its body echoes the token) and no token reached status or Events.
    texts = json.dumps(final) + kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert not any(t in texts for t in TicketsAPI.seen)


def test_verify_with_a_missing_ca_bundle_delivers_nothing(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    verify = {"url": "https://127.0.0.1:1/", "caBundleRef": {"kind": "ConfigMap", "name": "api-ca"}}
    kube.apply(token_spec("unsure", "unsure-token", verify=verify), "-n", namespace)
    ready = wait_for(
        "Ready False with VerificationFailed",
        lambda: (
            (c := conditions_of(status(kube, namespace, "unsure")).get("Ready"))
            and c["reason"] == "VerificationFailed"
            and c
        ),
        timeout=60,
    )
    assert ready["status"] == "False"
    assert "ConfigMap api-ca" in ready["message"]
    assert kube.get_json("secret", "unsure-token", "-n", namespace) is None, "no unverified token delivered"


def test_kill9_while_a_new_token_is_held_back_remints_only_that_one(
    kube: Kube, operator: OperatorProcess, namespace: str, tickets_api: str
) -> None:
    kube.apply(agenttoken("bystander", "bystander-token"), "-n", namespace)
    kube.apply(deployment("guarded", env_from_pod("guarded-token"), replicas=1), "-n", namespace)
    kube.apply(
        token_spec(
            "guarded",
            "guarded-token",
            rollout={"targets": [{"kind": "Deployment", "name": "guarded"}]},
            verify={"url": tickets_api},
        ),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "bystander")
    first = wait_rolled(kube, namespace, "guarded")
    bystander = status(kube, namespace, "bystander")
    data = secret_data(kube, namespace, "guarded-token")
    assert data is not None
    old_token = data["token"]

    TicketsAPI.accepting = False
    rotate(kube, namespace, "guarded", "r1")
    wait_for("a rejected check", lambda: len(TicketsAPI.seen) >= 2, timeout=60)
    operator.kill9()
    operator.start()
    operator.wait_reconciled(kube)
    wait_for("a check after the restart", lambda: len(set(TicketsAPI.seen[1:])) >= 2, timeout=120)
    # The held token died with the process: one more token was minted for the rotation, and
    # it was held back too. Nothing else was re-minted or restarted.
    assert len(set(TicketsAPI.seen[1:])) == 2
    after_restart = status(kube, namespace, "bystander")
    assert (after_restart["tokenId"], after_restart["revision"]) == (
        bystander["tokenId"],
        bystander["revision"],
    )
    data = secret_data(kube, namespace, "guarded-token")
    assert data is not None
    assert data["token"] == old_token
    assert template_annotation(kube, namespace, "guarded", "guarded") == first["tokenId"]

    TicketsAPI.accepting = True
    after = wait_for(
        "the rollout of the verified token",
        lambda: (
            (r := status(kube, namespace, "guarded").get("rollout") or {}).get("tokenId") != first["tokenId"]
            and r.get("state") == "Complete"
            and r
        ),
        timeout=400,
    )
    data = secret_data(kube, namespace, "guarded-token")
    assert data is not None
    assert data["token"] == TicketsAPI.seen[-1], "the token delivered is the last one checked"
    NEVER_DELIVERED.update(set(TicketsAPI.seen) - {old_token, data["token"]})
    assert NEVER_DELIVERED, "the token held when the operator was killed"
    assert claims_of(data["token"])["jti"] == after["tokenId"]


def test_delivery_example_applies_and_renders(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "agenttoken-delivery.yaml"))
    wait_ready(kube, namespace, "config-agent")
    data = secret_data(kube, namespace, "config-agent-token")
    assert data is not None
    assert data["AGENT_API_TOKEN"] == data["token"]
    assert yaml.safe_load(data["config.yaml"])["api_token"] == data["token"]
    full = REPO / "examples" / "agenttoken-full.yaml"
    kube.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(full))
