"""The parts behind `agenttoken_sdk.verify.Verifier`; private, import the public names from there.

Bottom to top (an import-linter contract keeps it so):

* `model`    the public types (CHECKS, VerificationError, Claims) and the Failure of one check;
* `token`    reading a compact JWS: base64url, strict JSON, header, the payload's shape ("format");
* `sources`  the issuer's documents over HTTP: the JWKS and the revocation list, fetched and cached;
* `checks`   the claim checks after the signature (typ ... cidr), a chain of small pure functions.

`verify.Verifier` wires them in the order of CHECKS.
"""
