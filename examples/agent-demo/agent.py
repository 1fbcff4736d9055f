"""A demo agent: calls an API in a loop with the token the operator keeps in a Secret.

It reads the token the three ways a workload can consume the Secret, each on its own call:

  volume   the Secret mounted as a directory, read through the SDK's TokenSource on every call
           (kubelet refreshes the files in place: no restart needed for a new token)
  env      an environment variable from the Secret (fixed at container start: needs a restart)
  subpath  one key mounted with subPath (never refreshed by kubelet: needs a restart)
  pod      no Secret (AgentToken delivery PerPod): the pod's own token from the operator's token
           endpoint, for its projected ServiceAccount token (SDK PodTokenSource, in memory)

Each call logs one JSON line: mode, HTTP status, outcome and the token's id (jti) - never the
token itself. Configuration (environment):

  DEMO_API_URL       where to call, e.g. http://demo-api.agents.svc:8080/call   (required)
  AGENT_MODES        comma-separated subset of volume,env,subpath (default: all three)
  TOKEN_DIR          the mounted Secret directory (default /var/run/agent-token)
  AGENT_API_TOKEN    the env-var token
  TOKEN_FILE         the subPath-mounted token file (default /etc/agent/token)
  CALL_INTERVAL      seconds between rounds (default 0.5)
  TOKEN_ENDPOINT     mode pod: the operator's token endpoint URL
  SA_TOKEN_FILE      mode pod: the projected ServiceAccount token (the SDK's default path)
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agenttoken_sdk.client import TokenSource, TokenUnavailableError
from agenttoken_sdk.podtoken import DEFAULT_ASSERTION_PATH, PodTokenSource

MODES = ("volume", "env", "subpath", "pod")
_stop = threading.Event()


def claims_of(token: str) -> dict[str, object]:
    """The claims of a JWT, read without verifying (only for the log line; the API verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_id(token: str) -> str:
    jti = claims_of(token).get("jti", "none")
    return jti if isinstance(jti, str) else "none"


def pod_uid_claim(token: str) -> str | None:
    """The pod uid a per-pod token names (its `kubernetes.io` claim), for the log line."""
    claim = claims_of(token).get("kubernetes.io")
    pod = claim.get("pod") if isinstance(claim, dict) else None
    uid = pod.get("uid") if isinstance(pod, dict) else None
    return uid if isinstance(uid, str) else None


def readers() -> dict[str, Callable[[], tuple[str, str]]]:
    """Per mode: a function returning (token, token id) read fresh for this call."""
    source = TokenSource(os.environ.get("TOKEN_DIR", "/var/run/agent-token"))
    token_file = Path(os.environ.get("TOKEN_FILE", "/etc/agent/token"))

    def volume() -> tuple[str, str]:
        info = source.info()
        return info.token, info.token_id

    def env() -> tuple[str, str]:
        token = os.environ.get("AGENT_API_TOKEN", "").strip()
        if not token:
            raise TokenUnavailableError("AGENT_API_TOKEN is not set")
        return token, token_id(token)

    def subpath() -> tuple[str, str]:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise TokenUnavailableError(f"{token_file}: {exc.strerror}") from None
        return token, token_id(token)

    pod_source = None
    if os.environ.get("TOKEN_ENDPOINT"):
        path = os.environ.get("SA_TOKEN_FILE") or DEFAULT_ASSERTION_PATH
        pod_source = PodTokenSource(os.environ["TOKEN_ENDPOINT"], assertion_path=path)

    def pod() -> tuple[str, str]:
        if pod_source is None:
            raise TokenUnavailableError("TOKEN_ENDPOINT is not set")
        info = pod_source.info()
        return info.token, info.token_id

    return {"volume": volume, "env": env, "subpath": subpath, "pod": pod}


def call(url: str, mode: str, token: str, pod: str) -> int:
    request = urllib.request.Request(  # noqa: S310 (the URL is our own configuration)
        url, headers={"Authorization": f"Bearer {token}", "X-Agent-Mode": mode, "X-Agent-Pod": pod}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def log(**fields: object) -> None:
    print(json.dumps({"ts": round(time.time(), 3), **fields}, sort_keys=True), flush=True)


def main() -> int:
    url = os.environ["DEMO_API_URL"]
    default = ",".join(MODES[:3])
    modes = [m.strip() for m in os.environ.get("AGENT_MODES", default).split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        print(f"unknown AGENT_MODES: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    interval = float(os.environ.get("CALL_INTERVAL", "0.5"))
    pod = socket.gethostname()
    read = readers()
    # A replaced container gets SIGTERM: stop calling at once, so no call is made after the
    # rollout that replaced this container's token.
    signal.signal(signal.SIGTERM, lambda *_: _stop.set())
    log(event="start", pod=pod, modes=modes, url=url)
    while not _stop.is_set():
        for mode in modes:
            try:
                token, jti = read[mode]()
            except TokenUnavailableError as exc:
                # The SDK's messages name the file and token id, never the token.
                log(event="call", pod=pod, mode=mode, outcome="no-token", reason=str(exc)[:300])
                continue
            try:
                status = call(url, mode, token, pod)
            except (OSError, TimeoutError) as exc:
                log(
                    event="call",
                    pod=pod,
                    mode=mode,
                    outcome="unreachable",
                    token_id=jti,
                    reason=type(exc).__name__,
                )
                continue
            outcome = "accepted" if status == 200 else "rejected"
            extra = {"pod_uid": pod_uid_claim(token)} if mode == "pod" else {}
            log(event="call", pod=pod, mode=mode, status=status, outcome=outcome, token_id=jti, **extra)
        _stop.wait(interval)
    log(event="stop", pod=pod)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
