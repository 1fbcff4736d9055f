"""What kopf keeps per object: nothing, since the operator uses only its watch streams.

kopf computes a "diff base" (a deep copy of the body minus its status, then a diff against the
last stored one) on every watch event, for change handlers (`on.create/update/...`) that this
operator does not have: every handler is `on.event`, and our own controllers decide from the
bodies. That copy and diff were ~6 % of the operator's CPU in a burst of new AgentTokens
(py-spy, bench/results/before/profiles/burst.top.txt: `DiffBaseStorage.build` -> `deepcopy`).
This storage builds an empty essence and never stores one. Nothing is written to the objects
either way (kopf's annotations would show as GitOps drift).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None
