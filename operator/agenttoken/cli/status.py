"""`agenttoken status`: token id, expiry, renewal, rollout, usage and Events of AgentTokens."""

from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING, Any

from agenttoken import api
from agenttoken.cli.options import common
from agenttoken.cli.output import emit, render_table
from agenttoken.cli.session import Session
from agenttoken.core.times import format_time, parse_time

if TYPE_CHECKING:
    from agenttoken.cli.options import Subparsers


def register(sub: Subparsers) -> None:
    status = sub.add_parser("status", help="show AgentTokens: token id, expiry, renewal, rollout, events")
    status.add_argument("name", nargs="?")
    common(status, listing=True)
    status.set_defaults(func=cmd_status)


async def cmd_status(args: argparse.Namespace, session: Session) -> int:
    ns = await session.scope(args)
    if args.name:
        namespace = ns or await session.default_namespace()
        item = summary(await session.agenttoken(namespace, args.name))
        events = await (await session.kube()).list_events(item["namespace"], item["name"])
        item["events"] = [
            f"{e.get('lastTimestamp') or e.get('eventTime')}  {e.get('type')}  {e.get('reason')}  {e.get('message')}"
            for e in events[-10:]
        ]
        emit(item, args.output, _status_detail)
        return 0
    items = [summary(o) for o in await session.agenttokens(ns, args.selector)]
    emit(items, args.output, _status_table)
    return 0


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == type_), {})


def _ready(obj: dict[str, Any], now: datetime.datetime) -> tuple[str, str | None, str | None]:
    """Ready's status, reason and message, checked against the clock: a stored Ready=True whose
    token is past expiresAt is reported Expired (no operator ran to flip it, e.g. an outage)."""
    ready = _condition(obj, api.COND_READY)
    status, reason, message = ready.get("status", "Unknown"), ready.get("reason"), ready.get("message")
    expires = parse_time((obj.get("status") or {}).get("expiresAt"))
    if expires is not None and expires <= now and status == "True":
        return (
            "False",
            api.REASON_EXPIRED,
            f"the token expired at {format_time(expires)}; the stored status still says Ready=True "
            "(no operator has updated it since: is one running?)",
        )
    return status, reason, message


def summary(obj: dict[str, Any], now: datetime.datetime | None = None) -> dict[str, Any]:
    """What `status` shows about one AgentToken: ids, times and states; never the token."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    ready, reason, message = _ready(obj, now or datetime.datetime.now(datetime.UTC))
    issuer = spec.get("issuerRef") or {}
    rollout = st.get("rollout") or {}
    return {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "ready": ready,
        "reason": reason,
        "message": message,
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
        "delivery": spec.get("delivery") or "Secret",
        "podTokens": st.get("podTokens") or {},
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")} for c in st.get("conditions") or []
        ],
    }


def _status_table(items: list[dict[str, Any]]) -> str:
    return render_table(
        ["NAMESPACE", "NAME", "READY", "TOKEN ID", "EXPIRES", "RENEWS", "ISSUER", "SECRET", "ROLLOUT", "USAGE"],
        [
            [
                i["namespace"], i["name"], i["ready"], i["tokenId"], i["expiresAt"], i["renewalTime"],
                i["issuer"], i["secret"] if i.get("delivery") != "PerPod" else "(per pod)",
                i["rollout"]["state"], i["usage"].get("state"),
            ]
            for i in items
        ],
    )  # fmt: skip


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
        f"Secret:        {item['secret']}"
        if item.get("delivery") != "PerPod"
        else f"Delivery:      PerPod ({_pod_line(item['podTokens'])})",
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


def _pod_line(pod_tokens: dict[str, Any]) -> str:
    """status.podTokens in one line: counts and times, never a token."""
    line = (
        f"{pod_tokens.get('issued', 0)} pod tokens issued, last {pod_tokens.get('lastIssuedAt') or 'never'}"
    )
    line += f"; {pod_tokens.get('failures', 0)} refused"
    if pod_tokens.get("lastFailureAt"):
        line += f", last {pod_tokens['lastFailureAt']} ({pod_tokens.get('lastFailureReason')})"
    return line


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
