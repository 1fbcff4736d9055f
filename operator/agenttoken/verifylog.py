"""Deprecated: moved to `agenttoken_sdk.verifylog` (`pip install agent-token-sdk`); removed in 0.2.

Kept for one release so agents and APIs written against the old path keep working.
"""

import warnings

from agenttoken_sdk.verifylog import *  # noqa: F403  (the public names, __all__ included)
from agenttoken_sdk.verifylog import __all__ as __all__

warnings.warn(
    "agenttoken.verifylog is deprecated and will be removed in 0.2: import agenttoken_sdk.verifylog instead "
    "(pip install agent-token-sdk)",
    DeprecationWarning,
    stacklevel=2,
)
