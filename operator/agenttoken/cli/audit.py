"""`agenttoken audit`: the periodic review of AgentTokens (rules in `agenttoken.core.audit`)."""

from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING, Any

from agenttoken.cli.options import common
from agenttoken.cli.output import emit, render_table
from agenttoken.cli.session import CliError, Session
from agenttoken.core import audit as review
from agenttoken.core.timing import parse_duration

if TYPE_CHECKING:
    from agenttoken.cli.options import Subparsers

# Exit status when findings reach --fail-on (1 is for errors, so a pipeline can tell them apart).
AUDIT_FAILED = 2


def register(sub: Subparsers) -> None:
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


def _policy(args: argparse.Namespace) -> review.ReviewPolicy:
    try:
        return review.ReviewPolicy(
            admin_words=tuple(args.admin_scope) if args.admin_scope else review.DEFAULT_ADMIN_WORDS,
            max_ttl=parse_duration(args.max_ttl),
            rotation_age=parse_duration(args.rotation_age),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


async def cmd_audit(args: argparse.Namespace, session: Session) -> int:
    policy = _policy(args)
    now = datetime.datetime.now(datetime.UTC)
    objects = await session.agenttokens(await session.scope(args), args.selector)
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
