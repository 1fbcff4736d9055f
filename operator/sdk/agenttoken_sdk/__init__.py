"""agent-token-sdk: the agent's side of agent-token-operator.

* `agenttoken_sdk.client.TokenSource` reads the token the operator keeps fresh in a Secret volume
  (standard library only).
* `agenttoken_sdk.verify.Verifier` checks such tokens in the APIs that receive them, and
  `agenttoken_sdk.verifylog` writes one audit record per verification.
* `agenttoken_sdk.jose` and `agenttoken_sdk.times` hold the token format both sides share; the
  operator imports them from here so issuer and verifier cannot drift apart.

Submodules are imported on demand (nothing here imports them), so an agent that only reads its
token never loads joserfc or cryptography.
"""

__version__ = "0.1.0"
