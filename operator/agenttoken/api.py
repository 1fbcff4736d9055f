"""Names of our API: group, kinds, labels, annotations, condition types and reasons.

Everything a user or another tool can see by name is defined here once, so the names stay
coherent across the CRDs, the operator, the CLI and the docs.
"""

from typing import Final

GROUP: Final = "agenttoken.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

AGENTTOKEN_KIND: Final = "AgentToken"
AGENTTOKEN_PLURAL: Final = "agenttokens"
TOKENISSUER_KIND: Final = "TokenIssuer"
CLUSTERTOKENISSUER_KIND: Final = "ClusterTokenIssuer"
TOKENISSUER_PLURAL: Final = "tokenissuers"
CLUSTERTOKENISSUER_PLURAL: Final = "clustertokenissuers"
ISSUER_PLURALS: Final = {
    TOKENISSUER_KIND: TOKENISSUER_PLURAL,
    CLUSTERTOKENISSUER_KIND: CLUSTERTOKENISSUER_PLURAL,
}
BUILTIN_ISSUER_NAME: Final = "builtin"

OPERATOR_NAME: Final = "agent-token-operator"
FIELD_MANAGER: Final = "agent-token-operator"
# kopf's own finalizer name (kopf adds it only for handler kinds we do not use) and ours, which
# makes deletion revoke the current token even if the operator was down when it happened.
FINALIZER: Final = f"{GROUP}/kopf-finalizer"
REVOKE_FINALIZER: Final = f"{GROUP}/revoke-on-delete"

# Labels on objects we manage (Secrets); the operator watches Secrets by the managed-by label only.
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_AGENTTOKEN: Final = f"{GROUP}/agenttoken"

# Annotations on the managed Secret: metadata of the token in it, never the token.
ANN_TOKEN_ID: Final = f"{GROUP}/token-id"
ANN_TOKEN_HASH: Final = f"{GROUP}/token-hash"
ANN_KEY_ID: Final = f"{GROUP}/key-id"
ANN_REVISION: Final = f"{GROUP}/revision"
ANN_ISSUED_AT: Final = f"{GROUP}/issued-at"
ANN_EXPIRES_AT: Final = f"{GROUP}/expires-at"
ANN_SPEC_HASH: Final = f"{GROUP}/spec-hash"
ANN_ROTATE_REQUEST: Final = f"{GROUP}/rotate-request"
ANN_PREVIOUS_TOKEN_ID: Final = f"{GROUP}/previous-token-id"
ANN_PREVIOUS_EXPIRES_AT: Final = f"{GROUP}/previous-expires-at"
# The data keys the operator wrote, so a key dropped from the spec is removed, not left stale.
ANN_MANAGED_KEYS: Final = f"{GROUP}/managed-keys"

# Annotation a user sets on an AgentToken to ask for one new token per new value.
ANN_ROTATE: Final = f"{GROUP}/rotate"

# Status subtree where kopf keeps its own bookkeeping (never kopf.zalando.org/* on user objects).
KOPF_STATUS_FIELD: Final = "operatorState"

# Default keys written into the managed Secret.
DEFAULT_TOKEN_KEY: Final = "token"
DEFAULT_EXPIRES_AT_KEY: Final = "expires-at"
DEFAULT_BUNDLE_KEY: Final = "token.json"

# Condition types (kstatus): Ready is the summary; Reconciling and Stalled are abnormal-true.
COND_READY: Final = "Ready"
COND_RECONCILING: Final = "Reconciling"
COND_STALLED: Final = "Stalled"
# Abnormal-true too: present while no workload has consumed the Secret for spec.unused.markAfter.
COND_UNUSED: Final = "Unused"

# Reasons: CamelCase, shared by conditions and Events.
REASON_ISSUED: Final = "TokenIssued"
REASON_RENEWED: Final = "TokenRenewed"
REASON_READY: Final = "TokenReady"
REASON_RENEWAL_FAILED: Final = "RenewalFailed"
REASON_ISSUE_FAILED: Final = "IssueFailed"
REASON_SECRET_RESTORED: Final = "SecretRestored"
REASON_SECRET_REPAIRED: Final = "SecretRepaired"
REASON_EXPIRING: Final = "TokenExpiringSoon"
REASON_EXPIRED: Final = "TokenExpired"
REASON_SUSPENDED: Final = "Suspended"
REASON_ISSUER_NOT_FOUND: Final = "IssuerNotFound"
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_ROTATE_REQUESTED: Final = "RotateRequested"
REASON_PROGRESSING: Final = "Progressing"
REASON_SECRET_CONFLICT: Final = "SecretConflict"
REASON_ROLLING_OUT: Final = "RollingOut"
REASON_ROLLOUT_COMPLETE: Final = "RolloutComplete"
REASON_ROLLOUT_FAILED: Final = "RolloutFailed"
REASON_ROLLOUT_PAUSED: Final = "RolloutPaused"
REASON_ROLLOUT_TOO_SLOW: Final = "RolloutTooSlow"
REASON_CONSUMER_NEEDS_RESTART: Final = "ConsumerNeedsRestart"
REASON_TOKEN_REVOKED: Final = "TokenRevoked"
REASON_KEY_REVOKED: Final = "SigningKeyRevoked"
REASON_POLICY_VIOLATION: Final = "PolicyViolation"
REASON_VERIFICATION_FAILED: Final = "VerificationFailed"
REASON_INVALID_CONFIG_TEMPLATE: Final = "InvalidConfigTemplate"
# The unused-token policy's steps (condition Unused and Events).
REASON_UNUSED: Final = "TokenUnused"
REASON_UNUSED_SUSPENDED: Final = "UnusedSuspended"
REASON_UNUSED_REVOKED: Final = "UnusedRevoked"
REASON_IN_USE: Final = "TokenInUse"
