"""Whether the apiserver streams a watch's initial state (WatchList, `sendInitialEvents`).

kopf's initial listing fetched every AgentToken and every managed Secret in one response each
and queued all of them before the first was handled: at 10,000 AgentTokens the operator's RSS
peaked at 446-478 MB after a restart and stayed above 400 MB (pymalloc arenas pinned by the
few objects kept from them). Streamed, the objects arrive one event at a time from the
apiserver's watch cache (kube.informer, our own watches for those two kinds). Paging the list (`limit`/`continue`) would bound the peak as well but
is served from etcd page by page: 13-32 s for 10,000 AgentTokens here against 2-4 s unpaged, so
"all scheduled" after a restart would suffer.

WatchList is on by default only in recent Kubernetes (the chart supports >= 1.30); where it is
off the apiserver refuses `sendInitialEvents` (and one before 1.27 would ignore it and watch
from now, never sending the initial state). So it is asked once at startup, on something every
replica may watch (one ConfigMap name in the operator's namespace), and the informers stream
only when the answer ends in the initial-events-end bookmark.
"""

from __future__ import annotations

import asyncio
import json
import logging

from agenttoken.core.watchstate import ends_initial_events
from agenttoken.kube.adapter import Kube

log = logging.getLogger(__name__)


async def supports_watch_list(kube: Kube, namespace: str, within: float = 10.0) -> bool:
    try:
        async with asyncio.timeout(within):
            return await _probe(kube, namespace)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # refused (feature off), RBAC, timeout: list as before
        log.info(
            "the apiserver does not stream initial watch events (%s); listing instead", type(exc).__name__
        )
        return False


async def _probe(kube: Kube, namespace: str) -> bool:
    response = await kube.core.list_namespaced_config_map(
        namespace,
        field_selector="metadata.name=agenttoken-watch-list-probe",
        watch=True,
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        _preload_content=False,
    )
    try:
        if response.status != 200:
            return False
        async for line in response.content:
            event = json.loads(line)
            if event.get("type") == "ERROR":
                return False
            if event.get("type") == "BOOKMARK" and ends_initial_events(event.get("object") or {}):
                return True
        return False
    finally:
        response.release()
