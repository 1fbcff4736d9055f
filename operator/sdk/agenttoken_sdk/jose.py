"""The token format the operator signs and the verifier accepts: algorithms, typ, claim namespace.

Shared by both sides (the operator imports it from the SDK) so that what one issues is exactly what
the other checks.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from joserfc.errors import InvalidKeyCurveError
from joserfc.jwa import EdDSAAlgorithm
from joserfc.jws import JWSRegistry

__all__ = [
    "CLAIM_NAMESPACE",
    "MAX_REVOCATION_LIST_BYTES",
    "POD_CLAIM",
    "REVOCATION_LIST_TYPE",
    "SUPPORTED_ALGORITHMS",
    "TOKEN_TYPE",
    "jws_registry",
    "revoked_pod_id",
]

SUPPORTED_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA")
#: JWS "typ" header of RFC 9068 access tokens.
TOKEN_TYPE: Final = "at+jwt"
#: JWS "typ" header of the signed revocation list: never TOKEN_TYPE, so a list can never pass as an
#: access token and a token never as a list (each side demands its own typ).
REVOCATION_LIST_TYPE: Final = "agenttoken-revocations+jwt"
#: Largest signed revocation list part (a ConfigMap holds 1 MiB); joserfc's default payload cap
#: (128 kB) stays in force for tokens.
MAX_REVOCATION_LIST_BYTES: Final = 1024 * 1024
#: Private claim (collision-resistant name, RFC 7519 section 4.2) holding operator-specific data.
CLAIM_NAMESPACE: Final = "agenttoken.dev"
#: Claim of per-pod tokens (delivery PerPod) naming the pod, shaped like a projected ServiceAccount
#: token's: {"namespace", "pod": {"name", "uid"}, "serviceaccount": {"name"}}.
POD_CLAIM: Final = "kubernetes.io"


def revoked_pod_id(pod_uid: str) -> str:
    """The revocation list entry that revokes every token issued to a pod (the pod was deleted)."""
    return f"pod:{pod_uid}"


class _Ed25519Only(EdDSAAlgorithm):
    """JWS "EdDSA" restricted to Ed25519 keys.

    RFC 9864 deprecates "EdDSA" because it does not say which curve; joserfc warns on every use.
    Verifiers in the field (PyJWT, most gateways) still only know "EdDSA", so we keep the name and
    remove the ambiguity ourselves by refusing any key that is not Ed25519.
    """

    security_warning = None  # type: ignore[assignment]  # joserfc types it as str; None means "no warning"

    def check_key(self, key: Any) -> None:
        super().check_key(key)
        if key.curve_name != "Ed25519":
            raise InvalidKeyCurveError("Algorithm 'EdDSA' is only used with Ed25519 keys here")


class _Registry(JWSRegistry):
    # A copy: joserfc's class-level table is shared by every registry and must not change.
    algorithms = {**JWSRegistry.algorithms, "EdDSA": _Ed25519Only()}


def jws_registry(
    algorithms: Collection[str] = SUPPORTED_ALGORITHMS, *, max_payload: int | None = None
) -> JWSRegistry:
    """A joserfc JWS registry that allows only the given algorithms (all supported ones by default);
    `max_payload` raises joserfc's payload cap (for revocation lists, never for tokens)."""
    unknown = set(algorithms) - set(SUPPORTED_ALGORITHMS)
    if unknown:
        raise ValueError(f"unsupported signing algorithm(s): {', '.join(sorted(unknown))}")
    registry = _Registry(algorithms=list(algorithms))
    if max_payload is not None:
        registry.max_payload_length = max_payload
    return registry
