"""Status conditions with kstatus semantics, derived in one place so they never contradict.

`Ready` is always present and summarizes. `Reconciling` (work in progress, including retries)
and `Stalled` (no progress possible without a change from the user) are "abnormal-true": present
with status True while they apply, removed otherwise. Every condition carries observedGeneration.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agenttoken import api
from agenttoken.core.times import format_time


@dataclass(frozen=True)
class Reason:
    reason: str
    message: str


def _condition(
    type_: str,
    status: bool,
    why: Reason,
    generation: int | None,
    now: datetime.datetime,
    previous: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    value = "True" if status else "False"
    before = previous.get(type_)
    # lastTransitionTime moves only when the status flips, as Kubernetes conventions require.
    if before and before.get("status") == value and before.get("lastTransitionTime"):
        transition = before["lastTransitionTime"]
    else:
        transition = format_time(now)
    cond: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": why.reason,
        "message": why.message[:1024],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def summarize(
    *,
    previous: Sequence[Mapping[str, Any]],
    generation: int | None,
    now: datetime.datetime,
    ready: Reason | None,
    not_ready: Reason | None = None,
    reconciling: Reason | None = None,
    stalled: Reason | None = None,
    unused: Reason | None = None,
) -> list[dict[str, Any]]:
    """`ready` set means a valid token is in place; otherwise `not_ready` says why not."""
    prev = {c.get("type", ""): c for c in previous}
    is_ready = ready is not None and stalled is None
    why = (ready if is_ready else (stalled or not_ready or reconciling)) or Reason(
        api.REASON_PROGRESSING, "reconciling"
    )
    out = [_condition(api.COND_READY, is_ready, why, generation, now, prev)]
    if reconciling is not None and stalled is None:
        out.append(_condition(api.COND_RECONCILING, True, reconciling, generation, now, prev))
    if stalled is not None:
        out.append(_condition(api.COND_STALLED, True, stalled, generation, now, prev))
    if unused is not None:
        out.append(_condition(api.COND_UNUSED, True, unused, generation, now, prev))
    return out


def is_true(conditions: Sequence[Mapping[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)
