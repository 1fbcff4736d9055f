"""Renders the goals table of docs/performance.md from bench/results/*.json (run by `make bench`).

Replaces the text between `<!-- bench:table:start -->` and `<!-- bench:table:end -->`.
"""

from __future__ import annotations

import json
from typing import Any

from benchsupport import RESULTS

DOC = RESULTS.parent.parent / "docs" / "performance.md"
START, END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"


def load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def yes(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def rows() -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    lc, st, rs, ec, cr = (load(n) for n in ("lifecycle", "steady", "restart", "api_economy", "crypto"))
    if lc:
        b, base = lc["burst_apply_to_secret"], lc["baseline_create_secret"]
        out.append(
            (
                "Burst: 1,000 AgentTokens applied at once, apply → Secret p99",
                "≤ 1 s",
                f"p50 {b['p50_s']:.2f} s, p95 {b['p95_s']:.2f} s, p99 {b['p99_s']:.2f} s",
                yes(b["p99_s"] <= 1),
            )
        )
        out.append(
            (
                "Burst throughput vs the same client creating 1,000 Secrets",
                "≥ 50 %",
                f"{b['throughput_per_s']:.0f}/s vs {base['throughput_per_s']:.0f}/s = "
                f"{100 * lc['burst_vs_baseline_throughput']:.0f} % (all Ready after {lc['burst_all_ready_s']:.1f} s)",
                yes(lc["burst_vs_baseline_throughput"] >= 0.5),
            )
        )
    if st:
        idle, lag, rst = st["idle"], st["renewal_lag"], st["restart"]
        n = f"{st['params']['tokens']:,}"
        out.append(
            (
                "Operator RSS, " + n + " AgentTokens",
                "≤ 250 MB",
                f"{idle['operator_rss_max_mb']:.0f} MB",
                yes(idle["operator_rss_max_mb"] <= 250),
            )
        )
        out.append(
            (
                f"Operator CPU, {n} AgentTokens, {idle['window_s'] / 60:.0f} idle minutes",
                "≤ 5 % of a core",
                f"{100 * idle['operator_cpu_fraction_of_core']:.2f} %",
                yes(idle["operator_cpu_fraction_of_core"] <= 0.05),
            )
        )
        out.append(
            (
                f"Renewal lag (seen - due), {lag['count']} renewals of 60 s-TTL tokens beside {n}",
                "p99 ≤ 2 s",
                f"p50 {lag['p50_s']:.2f} s, p99 {lag['p99_s']:.2f} s",
                yes(lag["p99_s"] <= 2),
            )
        )
        out.append(
            (
                f"Restart with {rst['agenttokens']:,} AgentTokens → all scheduled / all looked at once",
                "—",
                f"{rst['all_scheduled_s']:.1f} s / {rst['all_looked_at_once_s']:.1f} s; "
                f"{rst['reminted_long_ttl_tokens']} re-minted",
                "—",
            )
        )
    if rs:
        for d, label in (
            ("debounce_0s", "--restart-debounce 0"),
            ("debounce_2s", "default --restart-debounce 2"),
        ):
            r = rs.get(d, {})
            ours = r.get("operator_secret_to_patch", {})
            theirs = r.get("reloader_secret_to_patch")
            measured = f"p50 {ours.get('p50_s', 0):.3f} s, p95 {ours.get('p95_s', 0):.3f} s"
            if theirs:
                measured += f"; Reloader p50 {theirs['p50_s']:.3f} s, p95 {theirs['p95_s']:.3f} s"
            out.append(
                (
                    f"Secret written → pod-template patch ({label})",
                    "faster than Reloader",
                    measured,
                    yes(r.get("operator_faster_p50")) if theirs else "Reloader not run",
                )
            )
    if ec:
        wo, wi = ec["without_targets"], ec["with_targets"]
        out.append(
            (
                "API writes per renewal, no rollout targets",
                "≤ 3",
                f"{wo['writes_per_renewal']}",
                yes(wo["writes_per_renewal"] <= 3),
            )
        )
        out.append(
            ("API writes per renewal, one Deployment target each", "—", f"{wi['writes_per_renewal']}", "—")
        )
    if cr:
        es = cr["algorithms"]["ES256"]
        out.append(
            (
                "Crypto: ES256 mint / verify per core",
                "≥ 10k/s / ≥ 5k/s",
                f"{es['mint_per_s']:,}/s / {es['verify_per_s']:,}/s",
                yes(es["mint_per_s"] >= 10000 and es["verify_per_s"] >= 5000),
            )
        )
    return out


def main() -> int:
    dates = sorted(
        {load(n).get("date", "")[:16] for n in ("lifecycle", "steady", "restart", "api_economy", "crypto")}
        - {""}
    )
    lines = [
        START,
        "",
        f"Results of {', '.join(dates) or 'no run yet'} (UTC), from `bench/results/*.json`.",
        "",
    ]
    lines += ["| what | goal | measured | met? |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows()]
    crypto = load("crypto").get("algorithms", {})
    if crypto:
        lines += [
            "",
            "Crypto per core (`crypto.json`):",
            "",
            "| algorithm | mint / s | verify / s |",
            "|---|---|---|",
        ]
        lines += [f"| {a} | {v['mint_per_s']:,} | {v['verify_per_s']:,} |" for a, v in crypto.items()]
    lines += ["", END]
    text = DOC.read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + "\n".join(lines) + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    DOC.write_text(text)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
