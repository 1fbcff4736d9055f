"""Shared by the benchmarks: the operator as a process, statistics, process probes, the machine's load."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from devcluster import REPO_ROOT, LocalCluster, free_ports

RESULTS = REPO_ROOT / "bench" / "results"
SELECTOR = "app.kubernetes.io%2Fmanaged-by%3Dagent-token-operator"


def start_operator(
    env: dict[str, str], log_path: Path, timeout: float = 60, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`python -m agenttoken run` on free ports; returns once its liveness endpoint answers."""
    http_port, live_port = free_ports(2)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            # A stable identity: a restarted bench operator takes its Lease back at once (the
            # restart figures measure the operator, not a 15 s Lease expiry).
            [sys.executable, "-m", "agenttoken", "run", "--http-port", str(http_port),
             "--liveness", f"http://127.0.0.1:{live_port}/healthz", "--identity", "bench-operator", *extra],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{live_port}/healthz", timeout=1).close()
            proc.http_port = http_port  # type: ignore[attr-defined]
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the operator did not come up; log {log_path}") from None
            time.sleep(0.2)


def wait_for(what: str, probe: Any, timeout: float = 60, interval: float = 0.05) -> Any:
    """Poll `probe` until it returns something other than None; TimeoutError(what) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(interval)
    raise TimeoutError(what)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def metric(port: int, name: str) -> float | None:
    """A sample from the operator's /metrics, summed over its labels (only that family is rendered)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]={name}", timeout=10) as resp:
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in resp.read().decode().splitlines()
            if line.startswith((name + " ", name + "{"))
        ]
    return sum(values) if values else None


def teardown(
    watchers: list[SecretWatcher], op: subprocess.Popen[bytes] | None, cluster: LocalCluster
) -> None:
    """Stop the watches, the operator and the control plane of one benchmark."""
    for w in watchers:
        w.stop.set()
    if op is not None:
        stop(op)
    cluster.stop()


def log_tail(path: Path, lines: int = 40) -> None:
    print(f"{path.name} tail:\n" + "\n".join(path.read_text().splitlines()[-lines:]))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_s": round(percentile(values, 50), 4),
        "p95_s": round(percentile(values, 95), 4),
        "p99_s": round(percentile(values, 99), 4),
        "max_s": round(max(values), 4),
        "mean_s": round(statistics.fmean(values), 4),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """The process's high-water RSS since it started (VmHWM): a peak no sampling interval misses."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(pids: dict[str, int], since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds per named process (with `since`: used since that snapshot)."""
    now = {}
    for name, pid in pids.items():
        try:
            now[name] = cpu_seconds(pid)
        except OSError:
            continue
    if since is None:
        return now
    return {k: round(v - since.get(k, 0.0), 2) for k, v in now.items()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def header(name: str, **params: Any) -> dict[str, Any]:
    """The common head of every result file: what, when, on what, and how loaded the machine was.
    Also turns SIGTERM into SystemExit, so a stopped benchmark still stops its cluster."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": params,
        "loadavg_start": loadavg(),
    }


def write(name: str, results: dict[str, Any], out: Path | None = None) -> None:
    """To bench/results/<name>.json, or to `out` (a trial run that must not replace the committed figures)."""
    results["loadavg_end"] = loadavg()
    out = out or RESULTS / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


class Profiler:
    """py-spy on a PID for the duration of a `with` block; writes a flame graph (SVG) and the
    top functions by own time (text) next to the results. A no-op when py-spy is absent."""

    def __init__(self, pid: int, name: str, enabled: bool = True, rate: int = 100) -> None:
        self.pid, self.name, self.rate = pid, name, rate
        self.exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) if enabled else None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.exe:
            self.raw = RESULTS / "profiles" / f"{self.name}.folded"
            self.raw.parent.mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen(
                [self.exe, "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw",
                 "--output", str(self.raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)  # py-spy attaches
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return
        top_functions(self.raw)


class ApiserverProfiler:
    """The apiserver's own CPU profile (its /debug/pprof, on by default) over a `with` block,
    summarised by `go tool pprof -top` when Go is installed."""

    def __init__(self, cluster: LocalCluster, name: str, seconds: int, enabled: bool = True) -> None:
        self.cluster, self.name, self.seconds, self.enabled = cluster, name, seconds, enabled
        self.thread: threading.Thread | None = None

    def _fetch(self) -> None:
        status, data = self.cluster.api(
            "GET", f"/debug/pprof/profile?seconds={self.seconds}", timeout=self.seconds + 30
        )
        if status != 200:
            return
        out = RESULTS / "profiles" / f"{self.name}-apiserver.pb.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        go = shutil.which("go")
        if go:
            top = subprocess.run(
                [go, "tool", "pprof", "-top", "-nodecount=60", str(out)], capture_output=True, text=True
            )
            cum = subprocess.run(
                [go, "tool", "pprof", "-top", "-cum", "-nodecount=80", str(out)],
                capture_output=True,
                text=True,
            )
            out.with_name(f"{self.name}-apiserver.top.txt").write_text(top.stdout + "\n" + cum.stdout)
        out.unlink()  # binary; the text summary is what we keep

    def __enter__(self) -> ApiserverProfiler:
        if self.enabled:
            self.thread = threading.Thread(target=self._fetch, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread is not None:
            self.thread.join(timeout=self.seconds + 60)


def top_functions(raw: Path, limit: int = 40) -> None:
    """Folded stacks -> `<name>.top.txt`: share of samples per function, own and inclusive."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].rsplit(":", 1)[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";")]  # fmt: skip
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    if not total:
        return
    lines = [f"{total} samples\n", "own%   function"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:limit]]
    lines += ["", "incl%  function"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in sorted(incl.items(), key=lambda x: -x[1])[:limit]]
    raw.with_suffix(".top.txt").write_text("\n".join(lines) + "\n")


class SecretWatcher:
    """Records when each managed Secret in `namespace` first appears: a raw watch stream on the
    apiserver (resumed from the last resourceVersion if it drops), not polling. `key` maps a
    Secret's name to the name it is recorded under."""

    def __init__(
        self,
        cluster: LocalCluster,
        namespace: str,
        selector: str = SELECTOR,
        key: Any = None,
        keep_events: bool = False,
        collection: str = "",
    ) -> None:
        self.cluster, self.namespace, self.selector = cluster, namespace, selector
        # any namespaced collection can be watched the same way (e.g. /apis/apps/v1/.../deployments)
        self.collection = collection or f"/api/v1/namespaces/{namespace}/secrets"
        self.key = key or (lambda n: n.removesuffix("-tok"))
        self.seen: dict[str, float] = {}
        # with keep_events: (wall-clock time received, event type, the object) for each
        self.events: list[tuple[float, str, dict[str, Any]]] | None = [] if keep_events else None
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        sel = f"labelSelector={selector}&" if selector else ""
        _, raw = cluster.api("GET", f"{self.collection}?{sel}limit=1")
        self.rv = json.loads(raw)["metadata"]["resourceVersion"]
        self.thread.start()

    def _run(self) -> None:
        sel = f"&labelSelector={self.selector}" if self.selector else ""
        while not self.stop.is_set():
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.cluster.ports["apiserver"], context=self.cluster._ssl_context(), timeout=60
            )
            try:
                conn.request(
                    "GET",
                    f"{self.collection}?watch=1{sel}"
                    f"&resourceVersion={self.rv}&allowWatchBookmarks=true&timeoutSeconds=50",
                )
                resp = conn.getresponse()
                for line in resp:
                    event = json.loads(line)
                    obj = event["object"]
                    self.rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    now = time.monotonic()
                    if self.events is not None:
                        self.events.append((time.time(), event["type"], obj))
                    with self.cond:
                        self.seen.setdefault(self.key(obj["metadata"]["name"]), now)
                        self.cond.notify_all()
                    if self.stop.is_set():
                        return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not self.stop.is_set():
                    print(f"secret watch resumed after {exc!r}"[:200], file=sys.stderr)
                    self.stop.wait(0.2)
            finally:
                conn.close()

    def wait(self, names: list[str], timeout: float) -> None:
        """Until every name was seen. Looks at most every 0.1 s, and only at the names still
        missing: checking all on every event is quadratic (minutes of CPU at 30,000 names). The
        figures come from `seen` (when the watch saw each), not from when this returns."""
        deadline = time.monotonic() + timeout
        missing = set(names)
        while True:
            with self.cond:
                missing = {n for n in missing if n not in self.seen}
                if not missing:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(missing)} Secrets not ready after {timeout}s")
                self.cond.wait(left)
            self.stop.wait(min(0.1, max(0.0, deadline - time.monotonic())))
