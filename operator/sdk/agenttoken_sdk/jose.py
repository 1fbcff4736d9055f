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

__all__ = ["CLAIM_NAMESPACE", "SUPPORTED_ALGORITHMS", "TOKEN_TYPE", "jws_registry"]

SUPPORTED_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA")
#: JWS "typ" header of RFC 9068 access tokens.
TOKEN_TYPE: Final = "at+jwt"
#: Private claim (collision-resistant name, RFC 7519 section 4.2) holding operator-specific data.
CLAIM_NAMESPACE: Final = "agenttoken.dev"


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


def jws_registry(algorithms: Collection[str] = SUPPORTED_ALGORITHMS) -> JWSRegistry:
    """A joserfc JWS registry that allows only the given algorithms (all supported ones by default)."""
    unknown = set(algorithms) - set(SUPPORTED_ALGORITHMS)
    if unknown:
        raise ValueError(f"unsupported signing algorithm(s): {', '.join(sorted(unknown))}")
    return _Registry(algorithms=list(algorithms))
