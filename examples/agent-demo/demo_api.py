"""A demo API that accepts only valid agent tokens, verified with the SDK's Verifier.

The Verifier fetches the operator's JWKS and revocation list through its Service, so a revoked
token is refused within a second. Every request to /call logs one JSON line - accepted or
rejected, the failed check and its reason, the caller (the agent's pod and mode headers, the
token's subject and id) - never the token. Counting those lines gives the accepted/rejected totals;
/stats returns the same counts as JSON.

Configuration (environment):

  ISSUER            the `iss` the operator puts into tokens                 (required)
  AUDIENCE          this API's audience, as the AgentToken's spec.audience  (required)
  JWKS_URL          e.g. http://agent-token-operator.agenttoken-system.svc:8080/jwks.json
  REVOCATIONS_URL   e.g. http://agent-token-operator.agenttoken-system.svc:8080/revocations.json
  REQUIRED_SCOPES   space-separated scopes every call needs (default: none)
  REVOCATIONS_PATH  instead of REVOCATIONS_URL: a mounted directory of the signed list's parts
                    (projected volume of the agenttoken-revocations-<i> ConfigMaps); with
                    JWKS_PATH (the mounted agenttoken-jwks jwks.json) the API never calls the operator
  REVOCATIONS_STALE_GRACE  seconds the last signed revocation list keeps answering after its
                    next update when no newer one can be had (default: the SDK's, 300)
  FETCH_TIMEOUT     seconds for fetching the JWKS and the revocation list (default 2): a fetch
                    holds back the requests waiting for it, so keep it short inside a cluster
  PORT              default 8080
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agenttoken_sdk.verify import VerificationError, Verifier

_counts: collections.Counter[str] = collections.Counter()
_counts_lock = threading.Lock()


def log(**fields: object) -> None:
    print(json.dumps({"ts": round(time.time(), 3), **fields}, sort_keys=True), flush=True)


def fetcher(timeout: float) -> Callable[[str], bytes]:
    """GET with a short timeout (the SDK's default fetch waits 5 s)."""

    def fetch(url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (config)
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: bytes = response.read(16 * 1024 * 1024)
        return body

    return fetch


def make_handler(verifier: Verifier, required_scopes: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._reply(200, {"ok": True})
            elif self.path == "/stats":
                with _counts_lock:
                    self._reply(200, dict(_counts))
            elif self.path == "/call":
                self._call()
            else:
                self._reply(404, {"error": "not found"})

        def _call(self) -> None:
            caller = {
                "pod": self.headers.get("X-Agent-Pod", "")[:64],
                "mode": self.headers.get("X-Agent-Mode", "")[:16],
                "address": self.client_address[0],
            }
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                self._count_and_log("rejected", caller, check="format", reason="no bearer token")
                self._reply(401, {"error": "no bearer token"})
                return
            try:
                claims = verifier.verify(token.strip(), required_scopes=required_scopes)
            except VerificationError as exc:
                self._count_and_log("rejected", caller, check=exc.check, reason=exc.reason)
                self._reply(401, {"error": exc.check})
                return
            self._count_and_log("accepted", caller, subject=claims.subject, token_id=claims.token_id)
            self._reply(200, {"subject": claims.subject, "token_id": claims.token_id})

        def _count_and_log(self, result: str, caller: dict[str, str], **fields: str) -> None:
            with _counts_lock:
                _counts[result] += 1
                if "check" in fields:
                    _counts[f"rejected:{fields['check']}"] += 1
            log(event="request", result=result, **caller, **fields)

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            """Silence the default access log: the JSON line above is the log."""

    return Handler


def main() -> int:
    grace = os.environ.get("REVOCATIONS_STALE_GRACE")
    verifier = Verifier(
        issuer=os.environ["ISSUER"],
        audience=os.environ["AUDIENCE"],
        jwks_url=os.environ.get("JWKS_URL") or None,
        jwks_path=os.environ.get("JWKS_PATH") or None,
        revocations_url=os.environ.get("REVOCATIONS_URL") or None,
        revocations_path=os.environ.get("REVOCATIONS_PATH") or None,
        **({"revocations_stale_grace": timedelta(seconds=float(grace))} if grace else {}),
        fetch=fetcher(float(os.environ.get("FETCH_TIMEOUT", "2"))),
        # The verifier's own audit log would repeat each line above; one line per request.
        audit=False,
    )
    scopes = os.environ.get("REQUIRED_SCOPES", "").split()
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(verifier, scopes))  # noqa: S104 (a pod)
    log(event="start", port=port, audience=os.environ["AUDIENCE"])
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
