"""Values derived from object names that Kubernetes limits more tightly than the names.

An AgentToken's name may be 253 characters (a DNS subdomain); a label value, or the name part of
an annotation key, at most 63. A name that fits is used as is (readable, selectable); a longer
one becomes a readable prefix plus a hash of the whole name, so two long names that share a
prefix never collide. Always a valid label value: starts with the name's first (alphanumeric)
character and ends with a hex digit.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

LABEL_VALUE_MAX: Final = 63
_HASH_CHARS: Final = 12


def fit(name: str, limit: int = LABEL_VALUE_MAX) -> str:
    """`name` if it is at most `limit` characters, else `<prefix>-<12 hex of sha256(name)>`."""
    if len(name) <= limit:
        return name
    if limit < _HASH_CHARS + 2:
        raise ValueError(f"limit {limit} leaves no room for a prefix and a hash")
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    return f"{name[: min(40, limit - _HASH_CHARS - 1)]}-{digest}"


def event_name(involved_name: str) -> str:
    """`<name>.<16 hex>`, within the 253 characters of an object name even for the longest
    involved name (cut, without a trailing `-` or `.` so the result stays a DNS subdomain)."""
    suffix = "." + secrets.token_hex(8)
    return involved_name[: 253 - len(suffix)].rstrip("-.") + suffix
