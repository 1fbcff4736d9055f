"""Processes of a cluster: free ports, spawning with a log file, and stopping only our own PIDs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel hands out for `host`; held open together so they are distinct."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_is_ours(pid: int, marker: str) -> bool:
    """A recorded PID is ours only if its command line still names our cluster dir (PIDs get reused)."""
    return marker in cmdline(pid)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    try:
        # New session: the cluster outlives `make cluster-up` and a Ctrl-C in the shell.
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            pass_fds=pass_fds,
        )
    finally:
        log.close()


def stop_pid(pid: int, marker: str, grace: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM one of our processes (only if its command line still names `marker`), SIGKILL later."""
    if not pid_alive(pid) or not pid_is_ours(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=5)
    else:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
