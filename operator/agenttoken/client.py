"""Deprecated: moved to `agenttoken_sdk.client` (`pip install agent-token-sdk`); removed in 0.2.

Kept for one release so agents and APIs written against the old path keep working.
"""

import warnings

from agenttoken_sdk.client import *  # noqa: F403  (the public names, __all__ included)
from agenttoken_sdk.client import __all__ as __all__

warnings.warn(
    "agenttoken.client is deprecated and will be removed in 0.2: import agenttoken_sdk.client instead "
    "(pip install agent-token-sdk)",
    DeprecationWarning,
    stacklevel=2,
)
