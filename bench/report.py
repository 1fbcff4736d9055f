"""Renders the goals table of docs/performance.md from bench/results/*.json (run by `make bench`).

Replaces the text between `<!-- bench:table:start -->` and `<!-- bench:table:end -->`. Each line:
goal, before (bench/results/before/*.json: the figures of the last run before the current work,
kept when a benchmark is rerun), after (bench/results/*.json), the ceiling the line is measured
against where there is one, and each figure's load average (1 min, at the start of its run).

    .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchsupport import RESULTS

DOC = RESULTS.parent.parent / "docs" / "performance.md"
BEFORE = RESULTS / "before"
START, END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
NAMES = ("lifecycle", "steady", "restart", "api_economy", "crypto", "failover", "sharding", "token-endpoint")
NEW = ("failover", "sharding", "token-endpoint")  # [ha], [agents]: no run before them, no "before" column

Results = dict[str, dict[str, Any]]  # benchmark name -> its JSON
Measure = Callable[[Results], "tuple[str, bool | None] | None"]


def load(name: str, folder: Path = RESULTS) -> dict[str, Any]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def yes(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


@dataclass(frozen=True)
class Line:
    what: str
    goal: str
    source: str  # the benchmark whose JSON holds it
    measure: Measure  # -> (text, goal met?) or None when that run did not measure it
    ceiling: Callable[[Results], str] | None = None


def _get(r: Results, name: str, *path: str) -> Any:
    node: Any = r.get(name, {})
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _writes(key: str, goal: float | None) -> Measure:
    def measure(r: Results) -> tuple[str, bool | None] | None:
        v = _get(r, "api_economy", key, "writes_per_renewal")
        return None if v is None else (f"{v}", None if goal is None else v <= goal)

    return measure


def _new_token_writes(r: Results) -> tuple[str, bool | None] | None:
    n = _get(r, "api_economy", "new_tokens")
    if n is None:
        return None
    return (
        f"{n['writes_per_new_token']} + {n['events_per_new_token']} Events "
        f"({n['agenttokens']} created at once)",
        n["writes_per_new_token"] <= 3,
    )


def _burst_p99(r: Results) -> tuple[str, bool | None] | None:
    b = _get(r, "lifecycle", "burst_apply_to_secret")
    if b is None:
        return None
    return f"p50 {b['p50_s']:.2f} s, p99 {b['p99_s']:.2f} s", b["p99_s"] <= 1.5


def _burst_throughput(r: Results) -> tuple[str, bool | None] | None:
    b = _get(r, "lifecycle", "burst_apply_to_secret")
    if b is None:
        return None
    share = _get(r, "lifecycle", "burst_vs_three_write_ceiling")
    if share is None:
        return f"{b['throughput_per_s']:.0f}/s (ceiling not measured then)", None
    return f"{b['throughput_per_s']:.0f}/s = {100 * share:.0f} % of the ceiling", share >= 0.8


def _ceiling(r: Results) -> str:
    c = _get(r, "lifecycle", "ceiling")
    if c is None:
        return "—"
    return (
        f"{c['three_writes_per_token']['per_s']:.0f} tokens/s (the three in a row); alone: "
        f"AgentToken creates {c['agenttoken_creates']['per_s']:.0f}/s, Secret creates "
        f"{c['secret_creates']['per_s']:.0f}/s, status patches {c['status_patches']['per_s']:.0f}/s"
    )


def _cpu_per_token(r: Results) -> tuple[str, bool | None] | None:
    v = _get(r, "lifecycle", "burst_operator_cpu_ms_per_token")
    return None if v is None else (f"{v} ms", v <= 2)


def _rss(r: Results) -> tuple[str, bool | None] | None:
    v = _get(r, "steady", "idle", "operator_rss_max_mb")
    return None if v is None else (f"{v:.0f} MB", v <= 200)


def _restart_rss(r: Results) -> tuple[str, bool | None] | None:
    rst = _get(r, "steady", "restart")
    if rst is None:
        return None
    if "operator_rss_peak_mb" not in rst:  # older runs sampled RSS once, once all were scheduled
        return f"{rst['operator_rss_mb']:.0f} MB once all scheduled (peak not recorded)", None
    text = f"peak {rst['operator_rss_peak_mb']:.0f} MB, {rst['operator_rss_settled_mb']:.0f} MB {rst['settle_s']:.0f} s later"
    return text, rst["operator_rss_peak_mb"] <= 250


def _idle_cpu(r: Results) -> tuple[str, bool | None] | None:
    v = _get(r, "steady", "idle", "operator_cpu_fraction_of_core")
    return None if v is None else (f"{100 * v:.2f} %", v <= 0.05)


def _lag(r: Results) -> tuple[str, bool | None] | None:
    lag = _get(r, "steady", "renewal_lag")
    return None if lag is None else (f"p50 {lag['p50_s']:.2f} s, p99 {lag['p99_s']:.2f} s", lag["p99_s"] <= 2)


def _restart(r: Results) -> tuple[str, bool | None] | None:
    rst = _get(r, "steady", "restart")
    if rst is None:
        return None
    return f"{rst['all_scheduled_s']:.1f} s ({rst['agenttokens']:,} AgentTokens)", rst[
        "all_scheduled_s"
    ] <= 10


def _debounce(d: str) -> Measure:
    def measure(r: Results) -> tuple[str, bool | None] | None:
        x = _get(r, "restart", d)
        if x is None:
            return None
        ours, theirs = x.get("operator_secret_to_patch", {}), x.get("reloader_secret_to_patch")
        text = f"p50 {ours.get('p50_s', 0):.3f} s"
        if theirs:
            text += f"; Reloader p50 {theirs['p50_s']:.3f} s"
        return text, x.get("operator_faster_p50") if theirs else None

    return measure


def _crypto(r: Results) -> tuple[str, bool | None] | None:
    es = _get(r, "crypto", "algorithms", "ES256")
    if es is None:
        return None
    return f"{es['mint_per_s']:,}/s / {es['verify_per_s']:,}/s", es["mint_per_s"] >= 10000 and es[
        "verify_per_s"
    ] >= 5000


def _failover(r: Results) -> tuple[str, bool | None] | None:
    f = _get(r, "failover", "failover_s")
    if f is None:
        return None
    n = _get(r, "failover", "params") or {}
    text = f"min {f['min']:.2f} s, median {f['median']:.2f} s, max {f['max']:.2f} s ({n.get('kills')} kills, {n.get('tokens')} AgentTokens)"
    return text, f["max"] <= 15


def _size(r: Results) -> str:
    p = _get(r, "sharding", "params") or {}
    return f"{p.get('tokens', 0) + p.get('short', 0):,} AgentTokens, {p.get('replicas')} replicas x {p.get('shards')} shards"


def _at_goal_size(r: Results, ok: bool) -> bool | None:
    """Met only if measured at the goal's 30,000 AgentTokens; smaller runs say "—"."""
    p = _get(r, "sharding", "params") or {}
    return ok if p.get("tokens", 0) + p.get("short", 0) >= 30000 else None


def _shard_lag(r: Results) -> tuple[str, bool | None] | None:
    lag = _get(r, "sharding", "renewal_lag")
    return (
        None
        if lag is None
        else (f"p99 {lag['p99_s']:.2f} s ({_size(r)})", _at_goal_size(r, lag["p99_s"] <= 2))
    )


def _shard_kill(r: Results) -> tuple[str, bool | None] | None:
    held = _get(r, "sharding", "kill", "reserved_after_s")
    if held is None:
        return None
    # Since the takeover reads the shard fresh: served = held again and every AgentToken queued.
    queued = _get(r, "sharding", "kill", "queued_again_after_s")
    v = max(held, queued or 0.0)
    more = f"; every AgentToken queued again at {queued:.1f} s" if queued is not None else ""
    return f"held again {held:.1f} s{more} ({_size(r)})", _at_goal_size(r, v <= 20)


def _shard_rss(r: Results) -> tuple[str, bool | None] | None:
    reps = _get(r, "sharding", "replicas")
    if not reps:
        return None
    rss = sorted(v["rss_mb"] for v in reps.values())
    proj = _get(r, "sharding", "projection_100k", "replica_rss_mb")
    more = f"; projected at 100,000: {proj:,} MB" if proj else ""
    return f"{rss[0]:.0f}-{rss[-1]:.0f} MB ({_size(r)}){more}", None


def _grants(r: Results) -> tuple[str, bool | None] | None:
    warm = _get(r, "token-endpoint", "warm")
    if warm is None:
        return None
    return f"{warm['grants_per_s']:,.0f}/s, p99 {warm['p99_s'] * 1000:.1f} ms", warm["grants_per_s"] >= 500


def _paced(r: Results) -> tuple[str, bool | None] | None:
    paced = _get(r, "token-endpoint", "paced")
    if paced is None:
        return None
    ok = paced["grants_per_s"] >= 0.95 * paced["offered_per_s"] and paced["p99_s"] <= 0.05
    return f"{paced['grants_per_s']:,.0f}/s served, p99 {paced['p99_s'] * 1000:.1f} ms", ok


LINES = (
    Line("API writes per new AgentToken (audit log), burst", "≤ 3 (+ Events, bounded)", "api_economy", _new_token_writes),
    Line("API writes per renewal, no rollout targets (audit log)", "≤ 3", "api_economy", _writes("without_targets", 3)),
    Line("API writes per renewal, one Deployment target (audit log)", "≤ 6", "api_economy", _writes("with_targets", 6)),
    Line("Burst: 1,000 AgentTokens at once, apply → Secret", "p99 ≤ 1.5 s", "lifecycle", _burst_p99),
    Line("Burst throughput vs the three-write ceiling", "≥ 80 %", "lifecycle", _burst_throughput, _ceiling),
    Line("Operator CPU per new AgentToken (burst)", "≤ 2 ms", "lifecycle", _cpu_per_token),
    Line("Operator RSS, 10,000 AgentTokens steady", "≤ 200 MB", "steady", _rss),
    Line("Operator RSS after a restart at 10,000", "≤ 250 MB at any moment", "steady", _restart_rss),
    Line("Operator CPU, 10,000 AgentTokens idle", "≤ 5 % of a core", "steady", _idle_cpu),
    Line("Renewal lag (seen - due) beside 10,000", "p99 ≤ 2 s", "steady", _lag),
    Line("Restart at 10,000 → all scheduled", "≤ 10 s", "steady", _restart),
    Line("Secret written → pod-template patch (--restart-debounce 0)", "faster than Reloader", "restart", _debounce("debounce_0s")),
    Line("Secret written → pod-template patch (default debounce 2 s)", "faster than Reloader", "restart", _debounce("debounce_2s")),
    Line("Crypto: ES256 mint / verify per core", "≥ 10k/s / ≥ 5k/s", "crypto", _crypto),
    Line("Failover: kill -9 of the leader → the standby holds the Lease", "≤ 15 s", "failover", _failover),
    Line("Sharding: renewal lag, all replicas up", "p99 ≤ 2 s (30,000 AgentTokens)", "sharding", _shard_lag),
    Line("Sharding: kill -9 of a replica → its shards served again", "≤ 20 s", "sharding", _shard_kill),
    Line("Sharding: RSS per replica", "—", "sharding", _shard_rss),
    Line("Token endpoint (PerPod): grants, closed loop, 16 clients", "≥ 500/s", "token-endpoint", _grants),
    Line("Token endpoint at 500 grants/s offered", "p99 ≤ 50 ms", "token-endpoint", _paced),
)  # fmt: skip


def _cell(line: Line, r: Results) -> tuple[str, bool | None]:
    got = line.measure(r)
    if got is None:
        return "not measured", None
    text, ok = got
    load = (r.get(line.source) or {}).get("loadavg_start") or [None]
    when = (r.get(line.source) or {}).get("date", "")[:10]
    return f"{text} (load {load[0]}, {when})", ok


def rows(before: Results, after: Results) -> list[tuple[str, ...]]:
    out = []
    for line in LINES:
        b, ok = _cell(line, before)
        same_run = before.get(line.source, {}).get("date") == after.get(line.source, {}).get("date")
        a, ok = ("not rerun", ok) if same_run else _cell(line, after)
        ceiling = line.ceiling(after) if line.ceiling else "—"
        out.append((line.what, line.goal, b, a, ceiling, yes(ok)))
    return out


def main() -> int:
    after = {n: load(n) for n in NAMES}
    before = {n: load(n, BEFORE) or ({} if n in NEW else after[n]) for n in NAMES}
    dates = sorted({r.get("date", "")[:16] for r in after.values()} - {""})
    lines = [
        START,
        "",
        f"After: runs of {', '.join(dates) or 'no run yet'} (UTC), from `bench/results/*.json`; before: "
        "`bench/results/before/*.json` (the runs before [perf] #17). Load: the machine's 1-minute "
        "load average when that run started (2 cores, shared: absolute figures are pessimistic).",
        "",
    ]
    lines += ["| what | goal | before | after | ceiling | met? |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(before, after)]
    crypto = after["crypto"].get("algorithms", {})
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
