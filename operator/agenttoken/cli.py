"""The `agenttoken` command line (also `kubectl agenttoken` and `python -m agenttoken`).

`run` starts the operator. The other commands talk to the cluster of the current KUBECONFIG with
the synchronous kubernetes client (a CLI has no event loop to protect):

    agenttoken status [NAME] [-n NS | -A] [-l SELECTOR] [-o table|json|yaml]
    agenttoken rotate (NAME | --all | -l SELECTOR) [-n NS]
    agenttoken revoke NAME [--token-id JTI] [-n NS]
    agenttoken inspect NAME [-n NS] [-o ...]
    agenttoken verify (NAME | --token-file F) --audience AUD [--scope S ...] [--url URL]
    agenttoken jwks [--url URL]
    agenttoken audit [-n NS | -A] [-l SELECTOR] [-o ...] [--fail-on low|medium|high]

No command ever prints a token: `inspect` shows its header and claims, `verify` the result.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from agenttoken import __version__, api

DEFAULT_OPERATOR_NAMESPACE = os.environ.get("AGENTTOKEN_OPERATOR_NAMESPACE", "agenttoken-system")
DEFAULT_ISSUER = os.environ.get(
    "AGENTTOKEN_ISSUER_URL", "https://agent-token-operator.agenttoken-system.svc/issuers/builtin"
)


class CliError(RuntimeError):
    """A user-facing error: printed as one line, exit code 1."""


# -- cluster access -------------------------------------------------------------------------------


class Cluster:
    """The few reads and writes the CLI needs, as plain dicts."""

    def __init__(self) -> None:
        import kubernetes as kubernetes_module

        # Any: the client's config helpers are untyped and its API stubs do not know raw responses.
        kubernetes: Any = kubernetes_module
        try:
            kubernetes.config.load_kube_config()
        except Exception:
            try:
                kubernetes.config.load_incluster_config()
            except Exception as exc:
                raise CliError(f"no cluster configured (KUBECONFIG): {exc}") from None
        self.kubernetes = kubernetes
        self.client = kubernetes.client.ApiClient()
        # Any: we pass plain dicts and raw-response kwargs the generated stubs do not declare.
        self.core: Any = kubernetes.client.CoreV1Api(self.client)
        self.custom: Any = kubernetes.client.CustomObjectsApi(self.client)

    def default_namespace(self) -> str:
        try:
            _, context = self.kubernetes.config.list_kube_config_contexts()
            return str(context.get("context", {}).get("namespace") or "default")
        except Exception:
            return "default"

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            resp = fn(*args, _preload_content=False, **kwargs)
        except self.kubernetes.client.exceptions.ApiException as exc:
            message = exc.reason
            with contextlib.suppress(TypeError, ValueError):
                message = json.loads(exc.body or "").get("message", message)
            if exc.status == 404:
                return None
            raise CliError(f"HTTP {exc.status}: {message}") from None
        return json.loads(resp.data)

    def tokens(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        kwargs = {"label_selector": selector} if selector else {}
        if namespace is None:
            result = self._call(
                self.custom.list_cluster_custom_object,
                api.GROUP,
                api.VERSION,
                api.AGENTTOKEN_PLURAL,
                **kwargs,
            )
        else:
            result = self._call(
                self.custom.list_namespaced_custom_object,
                api.GROUP,
                api.VERSION,
                namespace,
                api.AGENTTOKEN_PLURAL,
                **kwargs,
            )
        return list((result or {}).get("items", []))

    def token(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self._call(
            self.custom.get_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            namespace,
            api.AGENTTOKEN_PLURAL,
            name,
        )
        if obj is None:
            raise CliError(f'AgentToken "{name}" not found in namespace "{namespace}"')
        result: dict[str, Any] = obj
        return result

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            api.GROUP,
            api.VERSION,
            namespace,
            api.AGENTTOKEN_PLURAL,
            name,
            {"metadata": {"annotations": annotations}},
        )

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._call(self.core.read_namespaced_secret, name, namespace)
        return result

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._call(self.core.read_namespaced_config_map, name, namespace)
        return result

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        result = self._call(
            self.core.list_namespaced_event, namespace, field_selector=f"involvedObject.name={name}"
        )
        items = list((result or {}).get("items", []))
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def write_configmap(self, namespace: str, body: dict[str, Any]) -> None:
        """Create `body`, or replace it when it carries a resourceVersion (ApiException 409 if it moved)."""
        if body["metadata"].get("resourceVersion") is None:
            self.core.create_namespaced_config_map(namespace, body)
        else:
            self.core.replace_namespaced_config_map(body["metadata"]["name"], namespace, body)


# -- output ---------------------------------------------------------------------------------------


def emit(data: Any, fmt: str, table: Callable[[Any], str]) -> None:
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=True), end="")
    else:
        print(table(data))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == type_), {})


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    """What `status` shows about one AgentToken: ids, times and states; never the token."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    ready = _condition(obj, api.COND_READY)
    issuer = spec.get("issuerRef") or {}
    rollout = st.get("rollout") or {}
    return {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason"),
        "message": ready.get("message"),
        "tokenId": st.get("tokenId"),
        "keyId": st.get("keyId"),
        "revision": st.get("revision"),
        "issuedAt": st.get("issuedAt"),
        "expiresAt": st.get("expiresAt"),
        "renewalTime": st.get("renewalTime"),
        "issuer": f"{issuer.get('kind', api.CLUSTERTOKENISSUER_KIND)}/{issuer.get('name', api.BUILTIN_ISSUER_NAME)}",
        "secret": (spec.get("secret") or {}).get("name"),
        "failedAttempts": st.get("failedAttempts", 0),
        "rollout": {
            "state": rollout.get("state"),
            "message": rollout.get("message"),
            "targets": [
                {k: t.get(k) for k in ("kind", "name", "state", "message")}
                for t in rollout.get("targets") or []
            ],
        },
        "consumers": st.get("consumers") or [],
        "verification": st.get("verification"),
        "usage": st.get("usage") or {},
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")} for c in st.get("conditions") or []
        ],
    }


def _status_table(items: list[dict[str, Any]]) -> str:
    return render_table(
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "TOKEN ID",
            "EXPIRES",
            "RENEWS",
            "ISSUER",
            "SECRET",
            "ROLLOUT",
            "USAGE",
        ],
        [
            [
                i["namespace"],
                i["name"],
                i["ready"],
                i["tokenId"],
                i["expiresAt"],
                i["renewalTime"],
                i["issuer"],
                i["secret"],
                i["rollout"]["state"],
                i["usage"].get("state"),
            ]
            for i in items
        ],
    )


def _restart_note(consumer: dict[str, Any]) -> str:
    if not consumer.get("needsRestart"):
        return ""
    if consumer.get("restartedOnRenewal") is False:
        return " (needs restart; NOT restarted on renewal: keeps the old token)"
    return " (needs restart)"


def _status_detail(item: dict[str, Any]) -> str:
    lines = [
        f"Name:          {item['namespace']}/{item['name']}",
        f"Ready:         {item['ready']} ({item['reason']}): {item['message']}",
        f"Issuer:        {item['issuer']}",
        f"Secret:        {item['secret']}",
        f"Token ID:      {item['tokenId']} (key {item['keyId']}, revision {item['revision']})",
        f"Issued:        {item['issuedAt']}",
        f"Expires:       {item['expiresAt']}",
        f"Renews:        {item['renewalTime']}",
        f"Failures:      {item['failedAttempts']}",
        *(
            [f"Verified:      {v.get('request')} -> HTTP {v.get('statusCode')} at {v.get('lastSuccessTime')}"]
            if (v := item.get("verification"))
            else []
        ),
        "Conditions:",
        *[f"  {c['type']}={c['status']} {c['reason']}: {c['message']}" for c in item["conditions"]],
        f"Rollout:       {item['rollout']['state']}: {item['rollout']['message']}",
        *[f"  {t['kind']}/{t['name']}: {t['state']} ({t['message']})" for t in item["rollout"]["targets"]],
        "Consumers:",
        *[f"  {c['kind']}/{c['name']} via {','.join(c['via'])}{_restart_note(c)}" for c in item["consumers"]],
        f"Usage:         {_usage_line(item['usage'])}",
        "Events:",
        *[f"  {e}" for e in item.get("events", [])],
    ]
    return "\n".join(lines)


def _usage_line(usage: dict[str, Any]) -> str:
    """The unused-token policy's facts from status.usage, in one line."""
    if not usage:
        return "unknown"
    parts = [str(usage.get("state"))]
    labels = (
        ("unusedSince", "unused since"),
        ("lastConsumedAt", "last consumed"),
        ("markedAt", "marked"),
        ("suspendedAt", "suspended"),
        ("revokedAt", "revoked"),
        ("revokedTokenId", "revoked token"),
    )
    parts += [f"{label} {usage[key]}" for key, label in labels if usage.get(key)]
    return "; ".join(parts)


# -- commands -------------------------------------------------------------------------------------


def _namespace(args: argparse.Namespace, cluster: Cluster) -> str | None:
    if getattr(args, "all_namespaces", False):
        return None
    return str(args.namespace or cluster.default_namespace())


def cmd_status(args: argparse.Namespace) -> int:
    cluster = Cluster()
    ns = _namespace(args, cluster)
    if args.name:
        obj = cluster.token(ns or cluster.default_namespace(), args.name)
        item = summary(obj)
        item["events"] = [
            f"{e.get('lastTimestamp') or e.get('eventTime')}  {e.get('type')}  {e.get('reason')}  {e.get('message')}"
            for e in cluster.events(item["namespace"], item["name"])[-10:]
        ]
        emit(item, args.output, _status_detail)
        return 0
    items = [summary(o) for o in cluster.tokens(ns, args.selector)]
    emit(items, args.output, _status_table)
    return 0


def _targets(args: argparse.Namespace, cluster: Cluster) -> list[tuple[str, str]]:
    ns = _namespace(args, cluster)
    if args.name:
        if args.all or args.selector:
            raise CliError("give a NAME, or --all / -l, not both")
        namespace = ns or cluster.default_namespace()
        cluster.token(namespace, args.name)
        return [(namespace, args.name)]
    if not (args.all or args.selector):
        raise CliError("give a NAME, --all or -l SELECTOR")
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in cluster.tokens(ns, args.selector)]


def cmd_rotate(args: argparse.Namespace) -> int:
    cluster = Cluster()
    # A new, unique value: each value is handled exactly once, and a rotate request skips backoff.
    value = f"cli-{time.time_ns()}"
    for namespace, name in _targets(args, cluster):
        cluster.annotate(namespace, name, {api.ANN_ROTATE: value})
        print(f"agenttoken {namespace}/{name}: rotation requested ({api.ANN_ROTATE}={value})")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from agenttoken.controllers.revocation import REVOCATIONS_CONFIGMAP, next_list
    from agenttoken.core import revocation
    from agenttoken.core.times import parse_time

    cluster = Cluster()
    namespace = args.namespace or cluster.default_namespace()
    obj = cluster.token(namespace, args.name)
    st = obj.get("status") or {}
    current = st.get("tokenId")
    token_id = args.token_id or current
    if not token_id:
        raise CliError(f"AgentToken {namespace}/{args.name} has no token yet")
    now = datetime.datetime.now(datetime.UTC)
    if token_id == current:
        expires = parse_time(st.get("expiresAt"))
    elif token_id == (st.get("rollout") or {}).get("previousTokenId"):
        # The previous token's expiry is recorded on the Secret; fall back to the longest lifetime.
        secret = cluster.secret(namespace, (obj.get("spec") or {}).get("secret", {}).get("name", ""))
        ann = ((secret or {}).get("metadata") or {}).get("annotations") or {}
        expires = parse_time(ann.get(api.ANN_PREVIOUS_EXPIRES_AT))
    else:
        expires = None
    expires = expires or now + datetime.timedelta(hours=168)
    entry = revocation.Revoked(token_id, expires, namespace, args.name, now, "Revoked")
    for _attempt in range(5):
        cm = cluster.configmap(args.operator_namespace, REVOCATIONS_CONFIGMAP)
        body, _ = next_list(cm, [entry], now, args.operator_namespace)
        try:
            cluster.write_configmap(args.operator_namespace, body)
            break
        except cluster.kubernetes.client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise CliError(f"writing the revocation list failed: HTTP {exc.status}") from None
    else:
        raise CliError("writing the revocation list kept conflicting; try again")
    print(f"revoked token {token_id} of {namespace}/{args.name}")
    if token_id == current and not args.no_rotate:
        cluster.annotate(namespace, args.name, {api.ANN_ROTATE: f"revoke-{time.time_ns()}"})
        print("rotation requested so the agent gets a new token")
    return 0


def _decode_segment(segment: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return result


def _secret_token(cluster: Cluster, namespace: str, name: str) -> tuple[str, dict[str, Any]]:
    obj = cluster.token(namespace, name)
    spec = obj.get("spec") or {}
    secret_name = (spec.get("secret") or {}).get("name", "")
    key = ((spec.get("secret") or {}).get("keys") or {}).get("token", api.DEFAULT_TOKEN_KEY)
    secret = cluster.secret(namespace, secret_name)
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        raise CliError(f"Secret {namespace}/{secret_name} holds no token (key {key!r})")
    return base64.b64decode(raw).decode(), obj


def cmd_inspect(args: argparse.Namespace) -> int:
    cluster = Cluster()
    namespace = args.namespace or cluster.default_namespace()
    token, _ = _secret_token(cluster, namespace, args.name)
    parts = token.split(".")
    if len(parts) != 3:
        raise CliError("the Secret's token is not a JWS compact serialization")
    data = {"header": _decode_segment(parts[0]), "claims": _decode_segment(parts[1])}
    claims = data["claims"]
    for field in ("iat", "nbf", "exp"):
        if isinstance(claims.get(field), int):
            data.setdefault("times", {})[field] = datetime.datetime.fromtimestamp(
                claims[field], datetime.UTC
            ).strftime("%Y-%m-%dT%H:%M:%SZ")
    emit(data, args.output if args.output != "table" else "yaml", lambda d: "")
    return 0


def _fetcher(cluster: Cluster | None, operator_namespace: str) -> Callable[[str], bytes]:
    """GETs http(s) URLs; `configmap://<ns>/<name>/<key>` reads a ConfigMap key instead."""

    def fetch(url: str) -> bytes:
        if url.startswith("configmap://"):
            assert cluster is not None
            ns, name, key = url.removeprefix("configmap://").split("/", 2)
            cm = cluster.configmap(ns, name)
            return str(((cm or {}).get("data") or {}).get(key, "")).encode()
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (http(s) URLs from the user)
            return bytes(resp.read())

    return fetch


def cmd_jwks(args: argparse.Namespace) -> int:
    if args.url:
        data = json.loads(_fetcher(None, args.operator_namespace)(args.url.rstrip("/") + "/jwks.json"))
    else:
        cluster = Cluster()
        cm = cluster.configmap(args.operator_namespace, "agenttoken-jwks")
        if cm is None:
            raise CliError(f"no JWKS published in {args.operator_namespace} (is the operator running?)")
        data = json.loads(cm["data"]["jwks.json"])
    emit(
        data,
        args.output,
        lambda d: render_table(
            ["KID", "ALG", "KTY", "USE"],
            [[k.get("kid"), k.get("alg"), k.get("kty"), k.get("use")] for k in d["keys"]],
        ),
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from agenttoken_sdk.verify import VerificationError, Verifier

    cluster = None if (args.url and args.token_file) else Cluster()
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    elif args.name:
        assert cluster is not None
        token, _ = _secret_token(cluster, args.namespace or cluster.default_namespace(), args.name)
    else:
        raise CliError("give an AgentToken NAME or --token-file")
    if args.url:
        base = args.url.rstrip("/")
        jwks_url, revocations_url = f"{base}/jwks.json", f"{base}/revocations.json"
    else:
        jwks_url = f"configmap://{args.operator_namespace}/agenttoken-jwks/jwks.json"
        revocations_url = f"configmap://{args.operator_namespace}/agenttoken-revocations/revoked.json"
    verifier = Verifier(
        issuer=args.issuer,
        audience=args.audience,
        jwks_url=jwks_url,
        revocations_url=revocations_url,
        environment=args.environment,
        fetch=_fetcher(cluster, args.operator_namespace),
    )
    try:
        claims = verifier.verify(token, required_scopes=args.scope, client_address=args.client_address)
    except VerificationError as exc:
        print(f"INVALID ({exc.check}): {exc}", file=sys.stderr)
        return 1
    result = {
        "valid": True,
        "tokenId": claims.token_id,
        "subject": claims.subject,
        "scopes": list(claims.scopes),
        "audience": list(claims.audience),
        "expiresAt": claims.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    emit(
        result,
        args.output,
        lambda r: f"VALID: token {r['tokenId']} for {r['subject']}, expires {r['expiresAt']}",
    )
    return 0


def _audit_table(data: dict[str, Any]) -> str:
    rows = data["items"]
    table = render_table(
        ["NAMESPACE", "NAME", "SCOPES", "AUDIENCE", "TTL", "ISSUER", "CONSUMERS", "LAST ROTATION",
         "DAYS UNUSED", "FINDINGS"],
        [
            [
                r["namespace"], r["name"], ",".join(r["scopes"]) or "-", ",".join(r["audience"]), r["ttl"],
                r["issuer"], ",".join(r["consumers"]) or "-", r["lastRotation"] or "-",
                "-" if r["daysSinceLastUse"] is None else r["daysSinceLastUse"],
                ",".join(f"{f['id']}({f['severity']})" for f in r["findings"]) or "-",
            ]
            for r in rows
        ],
    )  # fmt: skip
    findings = [(r, f) for r in rows for f in r["findings"]]
    if findings:
        table += "\n\n" + render_table(
            ["SEVERITY", "AGENTTOKEN", "FINDING", "MESSAGE"],
            [[f["severity"], f"{r['namespace']}/{r['name']}", f["id"], f["message"]] for r, f in findings],
        )
    counts = data["summary"]["findings"]
    table += "\n\n" + ", ".join(f"{n} {s}" for s, n in reversed(counts.items())) + " finding(s)"
    if data["summary"]["failOn"]:
        table += f"; --fail-on {data['summary']['failOn']}: {'FAIL' if data['summary']['failed'] else 'pass'}"
    return table


def cmd_audit(args: argparse.Namespace) -> int:
    from agenttoken.core import audit as review
    from agenttoken.core.timing import parse_duration

    try:
        policy = review.ReviewPolicy(
            admin_words=tuple(args.admin_scope) if args.admin_scope else review.DEFAULT_ADMIN_WORDS,
            max_ttl=parse_duration(args.max_ttl),
            rotation_age=parse_duration(args.rotation_age),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    cluster = Cluster()
    now = datetime.datetime.now(datetime.UTC)
    objects = cluster.tokens(_namespace(args, cluster), args.selector)
    rows = [review.review(o, policy, now) for o in sorted(objects, key=lambda o: (
        o["metadata"]["namespace"], o["metadata"]["name"]))]  # fmt: skip
    failed = review.failing(rows, args.fail_on)
    data = {
        "items": [r.to_dict() for r in rows],
        "summary": {
            "agentTokens": len(rows),
            "findings": review.counts(rows),
            "failOn": args.fail_on,
            "failed": bool(failed),
        },
    }
    emit(data, args.output, _audit_table)
    return AUDIT_FAILED if failed else 0


# Exit status when findings reach --fail-on (1 is for errors, so a pipeline can tell them apart).
AUDIT_FAILED = 2


# -- parser ---------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agenttoken", description="agent-token-operator")
    parser.add_argument("--version", action="version", version=f"agenttoken {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, listing: bool = False, output: bool = True) -> None:
        p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        if listing:
            p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
            p.add_argument("-l", "--selector", help="label selector")
        if output:
            p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
        p.add_argument("--operator-namespace", default=DEFAULT_OPERATOR_NAMESPACE)

    status = sub.add_parser("status", help="show AgentTokens: token id, expiry, renewal, rollout, events")
    status.add_argument("name", nargs="?")
    common(status, listing=True)
    status.set_defaults(func=cmd_status)

    rotate = sub.add_parser("rotate", help="ask for a new token now (bypasses backoff)")
    rotate.add_argument("name", nargs="?")
    rotate.add_argument("--all", action="store_true", help="every AgentToken in the namespace (or -A)")
    common(rotate, listing=True, output=False)
    rotate.set_defaults(func=cmd_rotate)

    revoke = sub.add_parser("revoke", help="put a token id on the revocation list (effective immediately)")
    revoke.add_argument("name")
    revoke.add_argument("--token-id", help="revoke this token id instead of the current one")
    revoke.add_argument("--no-rotate", action="store_true", help="do not ask for a new token afterwards")
    common(revoke, output=False)
    revoke.set_defaults(func=cmd_revoke)

    inspect = sub.add_parser("inspect", help="header and claims of the token in the Secret (never the token)")
    inspect.add_argument("name")
    common(inspect)
    inspect.set_defaults(func=cmd_inspect)

    verify = sub.add_parser("verify", help="verify a token against the issuer's JWKS and revocation list")
    verify.add_argument("name", nargs="?", help="AgentToken whose Secret holds the token")
    verify.add_argument("--token-file", help="read the token from this file instead")
    verify.add_argument("--audience", required=True)
    verify.add_argument("--scope", action="append", default=[], help="required scope (repeatable)")
    verify.add_argument("--issuer", default=DEFAULT_ISSUER)
    verify.add_argument("--environment", help="required env claim")
    verify.add_argument("--client-address", help="caller address to check against the cidr claim")
    verify.add_argument("--url", help="operator HTTP base URL (default: read the published ConfigMaps)")
    common(verify)
    verify.set_defaults(func=cmd_verify)

    jwks = sub.add_parser("jwks", help="the published signing keys (public)")
    jwks.add_argument("--url", help="operator HTTP base URL (default: the published ConfigMap)")
    common(jwks)
    jwks.set_defaults(func=cmd_jwks)

    audit = sub.add_parser(
        "audit", help="review AgentTokens: scopes, TTL, consumers, rotation, last use, and findings"
    )
    common(audit, listing=True)
    audit.add_argument(
        "--fail-on",
        choices=["low", "medium", "high"],
        help=f"exit {AUDIT_FAILED} when a finding of this severity or higher is found (default: never)",
    )
    audit.add_argument("--max-ttl", default="24h", help="TTL above which LongTTL is reported (default 24h)")
    audit.add_argument(
        "--rotation-age",
        default="168h",
        help="age after which an AgentToken with a single token ever issued is NeverRotated (default 168h)",
    )
    audit.add_argument(
        "--admin-scope",
        action="append",
        metavar="WORD",
        help="word that makes a scope admin-like (repeatable; replaces the default "
        "admin, administrator, root, superuser, sudo, owner)",
    )
    audit.set_defaults(func=cmd_audit)

    run = sub.add_parser("run", help="run the operator against the configured cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs allowed); default: all namespaces",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (default)")
    run.add_argument(
        "--operator-namespace",
        default=DEFAULT_OPERATOR_NAMESPACE,
        help="namespace holding the signing keys and the published JWKS (env AGENTTOKEN_OPERATOR_NAMESPACE)",
    )
    run.add_argument(
        "--issuer-url",
        default=DEFAULT_ISSUER,
        help="`iss` of tokens from the built-in issuer (env AGENTTOKEN_ISSUER_URL)",
    )
    run.add_argument(
        "--key-algorithm",
        choices=["ES256", "RS256", "EdDSA"],
        default=os.environ.get("AGENTTOKEN_KEY_ALGORITHM", "ES256"),
        help="signing algorithm of the built-in issuer's keys (a change rotates the key with overlap)",
    )
    run.add_argument(
        "--liveness",
        default=os.environ.get("AGENTTOKEN_LIVENESS", "http://127.0.0.1:8081/healthz"),
        help="liveness endpoint URL served by kopf ('' to disable)",
    )
    run.add_argument(
        "--http-port",
        "--metrics-port",
        dest="http_port",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_HTTP_PORT", "8080")),
        help="port serving /metrics, /healthz, the JWKS, discovery and the revocation list (0 disables it)",
    )
    run.add_argument(
        "--http-address",
        "--metrics-address",
        dest="http_address",
        default=os.environ.get("AGENTTOKEN_HTTP_ADDRESS", "127.0.0.1"),
        help="address to serve on (0.0.0.0 in a pod)",
    )
    run.add_argument(
        "--restart-debounce",
        type=float,
        default=float(os.environ.get("AGENTTOKEN_RESTART_DEBOUNCE", "2")),
        help="seconds to gather rotations hitting one workload into a single restart (default 2)",
    )
    run.add_argument(
        "--max-rollouts",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_MAX_ROLLOUTS", "10")),
        help="rollouts the operator lets run at once, cluster-wide (default 10)",
    )
    run.add_argument(
        "--max-rollouts-per-namespace",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_MAX_ROLLOUTS_PER_NAMESPACE", "5")),
        help="rollouts the operator lets run at once in one namespace (default 5)",
    )
    run.add_argument(
        "--usage-warmup",
        type=float,
        default=float(os.environ.get("AGENTTOKEN_USAGE_WARMUP", "30")),
        help="seconds after start before the unused-token policy judges consumers (default 30)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_WORKERS", "32")),
        help="AgentTokens reconciled at once (default 32; each waits on the apiserver most of the time)",
    )
    run.add_argument("--log-format", choices=["json", "plain"], default="json")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging (never logs token material)")
    run.set_defaults(func=cmd_run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from agenttoken.runtime.runner import RunOptions, run_operator

    run_operator(
        RunOptions(
            namespaces=tuple(args.namespace),
            operator_namespace=args.operator_namespace,
            issuer_url=args.issuer_url,
            key_algorithm=args.key_algorithm,
            liveness=args.liveness or None,
            http_port=args.http_port,
            http_address=args.http_address,
            log_json=args.log_format == "json",
            verbose=args.verbose,
            restart_debounce=args.restart_debounce,
            max_rollouts=args.max_rollouts,
            max_rollouts_per_namespace=args.max_rollouts_per_namespace,
            usage_warmup=args.usage_warmup,
            workers=args.workers,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
