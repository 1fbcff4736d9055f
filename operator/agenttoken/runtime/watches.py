"""Our own watches (kube.informer) for the AgentTokens and the managed Secrets, in the scope the
operator serves: cluster-wide, or each namespace on its own in namespaced mode (RBAC grants
list/watch per namespace there), with kopf's namespace patterns (globs, negations) resolved by
kopf's own matcher against a namespace watch, so both kinds of watches cover the same namespaces.

The consumers are the controller's intake (`on_token_event`, `on_secret_event`) and, when per-pod
delivery runs, the token endpoint's index (`podtokens.on_token_event`): they get (type, body)
exactly as kopf's `on.event` gave them, with initial and relisted objects as ADDED.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from kopf._cogs.structs.references import NamespaceName, match_namespace  # kopf's own pattern rules

from agenttoken import api
from agenttoken.kube.adapter import Kube
from agenttoken.kube.informer import Deliver, Informer, LastKnown, Resource, WatchOptions
from agenttoken.kube.watchlist import supports_watch_list
from agenttoken.runtime.memory import Trimmer

if TYPE_CHECKING:
    from agenttoken.controllers.agenttoken import Controller
    from agenttoken.controllers.podtokens import PodTokenService
    from agenttoken.runtime.runner import RunOptions

log = logging.getLogger(__name__)

AGENTTOKENS = Resource(api.GROUP, api.VERSION, api.AGENTTOKEN_PLURAL)
SECRETS = Resource("", "v1", "secrets")
NAMESPACES = Resource("", "v1", "namespaces")
SECRET_SELECTOR = f"{api.LABEL_MANAGED_BY}={api.OPERATOR_NAME}"


def is_pattern(namespace: str) -> bool:
    """A kopf namespace pattern rather than a name (globs, negations, lists)."""
    return bool(set(namespace) & set("*?!,["))


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(match_namespace(NamespaceName(name), p) for p in patterns)


@dataclasses.dataclass(frozen=True)
class Kind:
    resource: Resource
    deliver: Deliver
    last_known: LastKnown
    label_selector: str | None = None


class Watches:
    def __init__(
        self, kube: Kube, kinds: list[Kind], patterns: tuple[str, ...], options: WatchOptions
    ) -> None:
        self.kube = kube
        self.kinds = kinds
        self.patterns = patterns
        self.options = options
        self.informers: dict[str | None, list[Informer]] = {}  # by namespace (None: cluster-wide)
        self._namespaces: Informer | None = None
        self.trimmer = Trimmer()
        self._trim_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Every delivered event counts as work; the freed heap goes back once they pause.
        self.kinds = [dataclasses.replace(k, deliver=self._counted(k.deliver)) for k in self.kinds]
        self._trim_task = asyncio.create_task(self.trimmer.run(), name="agenttoken-malloc-trim")
        if not self.patterns:
            self._start_in(None)
        elif not any(map(is_pattern, self.patterns)):
            for namespace in self.patterns:
                self._start_in(namespace)
        else:
            # Namespaces matching a pattern appear at any time: a watch of namespaces starts the
            # watches of each new one. One deleted keeps its (now empty) watches until a restart.
            self._namespaces = Informer(self.kube, NAMESPACES, self._on_namespace, options=self.options)
            self._namespaces.start()

    def _counted(self, deliver: Deliver) -> Deliver:
        def counted(event_type: str, body: dict[str, Any]) -> None:
            self.trimmer.busy()
            deliver(event_type, body)

        return counted

    def _on_namespace(self, event_type: str, body: dict[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name") or ""
        if event_type != "DELETED" and name not in self.informers and matches(name, self.patterns):
            log.info("namespace %s matches the operator's namespaces: watching it", name)
            self._start_in(name)

    def _start_in(self, namespace: str | None) -> None:
        started = self.informers[namespace] = [
            Informer(
                self.kube,
                kind.resource,
                kind.deliver,
                namespace=namespace,
                label_selector=kind.label_selector,
                last_known=kind.last_known,
                options=self.options,
            )
            for kind in self.kinds
        ]
        for informer in started:
            informer.start()

    async def synced(self) -> None:
        """Every watch has delivered its initial state (with patterns: of the namespaces matched
        so far, once the namespace watch has delivered its own)."""
        if self._namespaces is not None:
            await self._namespaces.synced.wait()
        await asyncio.gather(*(i.synced.wait() for group in list(self.informers.values()) for i in group))

    async def stop(self) -> None:
        if self._trim_task is not None:
            self._trim_task.cancel()
        if self._namespaces is not None:
            await self._namespaces.stop()
        for group in self.informers.values():
            for informer in group:
                await informer.stop()


async def start(
    kube: Kube, controller: Controller, pods: PodTokenService | None, options: RunOptions
) -> Watches:
    """The watches feeding the controller (and the per-pod token index, when it runs), started;
    the initial state streamed where the apiserver offers it (asked once: kube.watchlist)."""

    def on_token(event_type: str, body: dict[str, Any]) -> None:
        controller.on_token_event(event_type, body)
        if pods is not None:
            pods.on_token_event(event_type, body)

    kinds = [
        Kind(AGENTTOKENS, on_token, controller.tokens.get),
        Kind(SECRETS, controller.on_secret_event, controller.secrets.get, SECRET_SELECTOR),
    ]
    stream = await supports_watch_list(kube, options.operator_namespace)
    log.info(
        "own watches of AgentTokens and Secrets: initial state %s",
        "streamed" if stream else "listed in pages",
    )
    watches = Watches(kube, kinds, options.namespaces, WatchOptions(stream=stream))
    watches.start()
    return watches
