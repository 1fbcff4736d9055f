"""The CLI without a cluster: its argument tree, its errors, and how it finds the cluster.

The commands against a cluster are covered by tests/e2e/test_sdk.py and test_practices_review.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agenttoken.cli import main
from agenttoken.cli.audit import AUDIT_FAILED, cmd_audit
from agenttoken.cli.keys import cmd_list as cmd_keys_list
from agenttoken.cli.keys import cmd_revoke as cmd_keys_revoke
from agenttoken.cli.options import DEFAULT_ISSUER, DEFAULT_OPERATOR_NAMESPACE
from agenttoken.cli.parser import build_parser
from agenttoken.cli.rotate import cmd_revoke, cmd_rotate
from agenttoken.cli.run import cmd_run
from agenttoken.cli.status import cmd_status
from agenttoken.cli.tokens import cmd_inspect, cmd_jwks, cmd_verify
from agenttoken.kube.kubeconfig import KubeConfigError, connect_kubeconfig

REPO = Path(__file__).resolve().parents[2]
EXEC_API = "client.authentication.k8s.io/v1beta1"
COMMANDS = {
    "status": cmd_status,
    "rotate": cmd_rotate,
    "revoke": cmd_revoke,
    "inspect": cmd_inspect,
    "verify": cmd_verify,
    "jwks": cmd_jwks,
    "audit": cmd_audit,
    "run": cmd_run,
    "keys list": cmd_keys_list,
    "keys revoke": cmd_keys_revoke,
}


def command_of(args: Any) -> str:
    """The COMMANDS key: the command, and the subcommand of a group (`keys list`)."""
    return f"{args.command} {args.keys_command}" if args.command == "keys" else str(args.command)


def parse(line: str) -> Any:
    return build_parser().parse_args(shlex.split(line))


def test_every_command_is_there_with_its_function() -> None:
    minimal = {
        "verify": "verify x --audience a",
        "jwks": "jwks",
        "audit": "audit",
        "run": "run",
        "keys list": "keys list",
    }
    for command, func in COMMANDS.items():
        args = parse(minimal.get(command, f"{command} x"))
        assert command_of(args) == command
        assert args.func is func


def test_every_documented_example_parses() -> None:
    lines = [
        line.removeprefix("$ ").removeprefix("kubectl ").strip()
        for line in (REPO / "docs" / "cli.md").read_text().splitlines()
        if line.startswith(("$ agenttoken ", "$ kubectl agenttoken "))
    ]
    assert len(lines) >= 8
    for line in lines:
        args = parse(line.removeprefix("agenttoken ").replace("$NS", "ns").replace("$URL", "http://x"))
        assert args.func is COMMANDS[command_of(args)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("status", {"name": None, "namespace": None, "all_namespaces": False, "selector": None, "output": "table"}),
        ("status a -A -l team=x -o yaml", {"name": "a", "all_namespaces": True, "selector": "team=x", "output": "yaml"}),
        ("rotate --all -n ns", {"name": None, "all": True, "namespace": "ns"}),
        ("revoke a --token-id j --no-rotate", {"token_id": "j", "no_rotate": True, "operator_namespace": DEFAULT_OPERATOR_NAMESPACE}),
        ("inspect a -o json", {"name": "a", "output": "json"}),
        ("verify --token-file f --audience a --scope s1 --scope s2", {"token_file": "f", "scope": ["s1", "s2"], "issuer": DEFAULT_ISSUER}),
        ("jwks --url http://x", {"url": "http://x", "output": "table"}),
        ("audit -A --fail-on high --admin-scope w", {"fail_on": "high", "max_ttl": "24h", "rotation_age": "168h", "admin_scope": ["w"]}),
        ("run -n a -n b --metrics-port 9 --log-format plain", {"namespace": ["a", "b"], "http_port": 9, "log_format": "plain", "workers": 32}),
    ],
)  # fmt: skip
def test_options_and_defaults(line: str, expected: dict[str, Any]) -> None:
    args = vars(parse(line))
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize(
    "line",
    ["", "status --bogus", "run -n a -A", "audit --fail-on severe", "verify a", "revoke", "status -o wide"],
)
def test_usage_errors_exit_2(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(shlex.split(line))
    assert exited.value.code == 2
    assert "usage: agenttoken" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("agenttoken ")


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.mark.usefixtures("no_cluster")
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("status", "no cluster configured (KUBECONFIG): "),
        ("audit -A", "no cluster configured (KUBECONFIG): "),
        ("rotate", "give a NAME, --all or -l SELECTOR"),
        ("rotate a --all", "give a NAME, or --all / -l, not both"),
        ("verify --audience a", "give an AgentToken NAME or --token-file"),
        ("audit --max-ttl forever", "forever"),
        ("jwks --url http://127.0.0.1:1", "fetching http://127.0.0.1:1/jwks.json failed"),
    ],
)
def test_errors_are_one_line_and_exit_1(line: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(shlex.split(line)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1
    assert "no such file" in err or "no cluster" not in err


def test_audit_failure_is_its_own_exit_status() -> None:
    assert AUDIT_FAILED not in (0, 1)


def kubeconfig(path: Path, current: str, contexts: dict[str, str | None]) -> Path:
    """A kubeconfig with one cluster per context (server https://<context>.example:6443)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": c, "cluster": {"server": f"https://{c}.example:6443"}} for c in contexts],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [
            {"name": c, "context": {"cluster": c, "user": "u", **({"namespace": ns} if ns else {})}}
            for c, ns in contexts.items()
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def connect(context: str | None = None) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        kube, namespace = await connect_kubeconfig(context)
        try:
            return kube.api_client.configuration.host, namespace
        finally:
            await kube.close()

    return asyncio.run(go())


def test_the_kubeconfig_context_gives_server_and_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = kubeconfig(tmp_path / "config", "dev", {"dev": "team-a", "prod": None})
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert connect() == ("https://dev.example:6443", "team-a")
    assert connect("prod") == ("https://prod.example:6443", "default")


def test_kubeconfig_files_are_merged_like_kubectl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a", "dev", {"dev": "team-a"})
    second = kubeconfig(tmp_path / "b", "staging", {"staging": "team-s"})
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'absent'}:{second}")
    # Contexts from every file; the first file's current-context wins, as in kubectl.
    assert connect() == ("https://dev.example:6443", "team-a")
    assert connect("staging") == ("https://staging.example:6443", "team-s")
    monkeypatch.setenv("KUBECONFIG", f"{second}:{first}")
    assert connect() == ("https://staging.example:6443", "team-s")


def test_an_unknown_context_or_no_kubeconfig_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "config", "dev", {"dev": None})))
    with pytest.raises(KubeConfigError, match="nope"):
        connect("nope")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubeConfigError, match="no such file"):
        connect()


def test_a_broken_kubeconfig_is_not_quoted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    broken = tmp_path / "config"
    broken.write_text("users:\n- name: u\n  user: {token: s3cr3t-value\n")
    monkeypatch.setenv("KUBECONFIG", str(broken))
    with pytest.raises(KubeConfigError) as caught:
        connect()
    assert "s3cr3t" not in str(caught.value)


def test_an_exec_credential_plugin_supplies_the_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cloud kubeconfigs (EKS, GKE, AKS via kubelogin) get their token from a command."""
    path = kubeconfig(tmp_path / "config", "dev", {"dev": "team-a"})
    doc = yaml.safe_load(path.read_text())
    credential = {"apiVersion": EXEC_API, "kind": "ExecCredential", "status": {"token": "from-the-plugin"}}
    doc["users"][0]["user"] = {
        "exec": {
            "apiVersion": EXEC_API,
            "command": sys.executable,
            "args": ["-c", f"print({json.dumps(credential)!r})"],
        }
    }
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("KUBECONFIG", str(path))

    async def go() -> dict[str, str]:
        kube, _ = await connect_kubeconfig()
        try:
            return dict(kube.api_client.configuration.api_key)
        finally:
            await kube.close()

    assert asyncio.run(go()) == {"BearerToken": "Bearer from-the-plugin"}


BROKEN_PIPE_SCRIPT = """
import argparse, sys
import agenttoken.cli as cli

def lots(args):
    for _ in range(10_000):
        print("ns  name  Ready  True  Issued")
    return 0

class Parser:
    def parse_args(self, argv):
        return argparse.Namespace(func=lots)

cli.build_parser = lambda: Parser()
sys.exit(cli.main([]))
"""


def test_a_reader_that_leaves_is_not_a_traceback() -> None:
    """`agenttoken status -A | head -1`: the pipe closes under a long listing; exit quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [sys.executable, "-c", BROKEN_PIPE_SCRIPT],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 141


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "revoke", "-N9cpNAX"],
        ["keys", "revoke", "--wait", "-N9cpNAX", "--timeout", "5"],
        ["keys", "revoke", "--operator-namespace=ops", "-N9cpNAX"],
        ["keys", "revoke", "--", "-N9cpNAX"],
    ],
)
def test_a_kid_starting_with_a_dash_is_the_kid(argv: list[str]) -> None:
    from agenttoken.cli.keys import kid_as_positional

    args = build_parser().parse_args(kid_as_positional(argv))
    assert args.kid == "-N9cpNAX"
    assert args.func is cmd_keys_revoke
