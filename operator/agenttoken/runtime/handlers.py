"""kopf wiring: settings, startup/cleanup, and the watch events that feed the controller.

The AgentTokens and the managed Secrets, most of the events, come from our own watches
(runtime.watches, kube.informer): kopf's per-event machinery was a quarter of the operator's CPU
in a burst and its initial listing the restart's memory peak. kopf still watches the issuers,
namespaces and workloads, with only `on.event` handlers: they are not change-detecting, so kopf never writes a diff-base or
progress onto user objects and never adds a finalizer. The settings below still point kopf's
storage at our own status subtree and prefix, so a handler added later cannot bring
`kopf.zalando.org/*` annotations back onto AgentTokens (GitOps tools would show drift).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
from typing import TYPE_CHECKING, Any

import kopf
from aiohttp import web

from agenttoken import api
from agenttoken.controllers.agenttoken import Controller, ControllerOptions, utcnow
from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.leadership import Leadership
from agenttoken.controllers.leasethread import LeaseThread
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.controllers.rollout import RolloutManager, RolloutOptions
from agenttoken.core.keys import KeyPolicy, SigningKey
from agenttoken.core.lease import LeaseTimings
from agenttoken.kube.adapter import Kube
from agenttoken.kube.caches import WorkloadCache
from agenttoken.kube.events import EventRecorder
from agenttoken.kube.leases import Leases
from agenttoken.runtime import podwiring, server, watches
from agenttoken.runtime.kopfstate import NoDiffBase

if TYPE_CHECKING:
    from agenttoken.runtime.runner import RunOptions

log = logging.getLogger(__name__)


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = api.FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(
        field=f"status.{api.KOPF_STATUS_FIELD}.progress", touch_field=f"status.{api.KOPF_STATUS_FIELD}.touch"
    )
    settings.persistence.diffbase_storage = NoDiffBase()  # only on.event handlers: no diffs to keep
    # Our own Events carry reasons; kopf's per-handler log Events would only add noise.
    settings.posting.enabled = False
    settings.peering.standalone = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = (1, 2, 4, 8, 15)


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf logs in with kubernetes_asyncio, the library of our adapter, wherever it runs. Without
    this, kopf picks whichever client happens to be installed (the sync `kubernetes` or pykube in a
    dev venv, only kubernetes_asyncio in the image), so tests would not exercise the shipped path."""
    return await kopf.login_via_async_client(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    options = memo["options"]
    kube = await Kube.connect()
    events = memo["events"] = EventRecorder(kube)
    leadership = memo["leadership"] = await _elect(memo, options, events)
    keys = KeyManager(
        kube,
        namespace=options.operator_namespace,
        issuer=options.issuer_url,
        policy=KeyPolicy(algorithm=options.key_algorithm),
        clock=utcnow,
        may_write=leadership.is_primary,
    )
    await keys.load_requests()  # a revoked kid must not be published or used, even briefly
    await keys.sync()
    revocations = RevocationStore(
        kube, options.operator_namespace, utcnow, issuer=options.issuer_url, signer=keys.signing_key
    )
    await revocations.load()
    workloads = WorkloadCache()
    workloads.follow_relists(kube.get_workload, namespaced=bool(options.namespaces))
    rollouts = RolloutManager(
        kube,
        RolloutOptions(
            debounce=options.restart_debounce,
            max_inflight=options.max_rollouts,
            max_inflight_per_namespace=options.max_rollouts_per_namespace,
        ),
        workloads,
        events,
        may_restart=leadership.owns,
    )
    controller = Controller(
        kube,
        keys,
        ControllerOptions(
            issuer_url=options.issuer_url,
            usage_warmup=options.usage_warmup,
            workers=options.workers,
        ),
        rollouts=rollouts,
        revocations=revocations,
        events=events,
        leadership=leadership,
    )
    await rollouts.start()
    await controller.start()
    memo["kube"], memo["keys"], memo["controller"], memo["rollouts"] = kube, keys, controller, rollouts
    memo["events"] = events
    memo["workloads"] = workloads
    memo["sync_task"] = asyncio.create_task(
        workloads.sync(functools.partial(_list_workloads, kube, options.namespaces)), name="agenttoken-sync"
    )
    memo["warmup_task"] = asyncio.create_task(controller.usage.warm_up(), name="agenttoken-usage-warmup")
    memo["revocations"] = revocations
    memo["revocations_task"] = asyncio.create_task(revocations.follow(), name="agenttoken-revocations")
    _start_cluster_writers(memo, keys, revocations, events, leadership)
    pod_tokens = await podwiring.start(memo, kube, keys, controller, revocations, leadership)
    # Last: every consumer of the AgentToken and Secret events exists.
    memo["watches"] = await watches.start(kube, controller, pod_tokens, options)
    if options.http_port:
        app = server.build_app(keys, revocations, pod_tokens=pod_tokens)
        memo["http"] = await server.serve(app, options.http_address, options.http_port)
    log.info("operator started; signing keys in %s", options.operator_namespace)


def _start_cluster_writers(
    memo: kopf.Memo,
    keys: KeyManager,
    revocations: RevocationStore,
    events: EventRecorder,
    leadership: Leadership,
) -> None:
    """The cluster-wide writer loops: key rotation and emergency revocation, and the signed
    revocation list. They run on every replica; each checks the primary's lease before every
    write (fenced: false once a renewal is overdue), so only the holder of shard 0 writes."""
    keys.report_with(
        lambda involved, reason, message: events.post(involved, warning=True, reason=reason, message=message)
    )

    async def sign_list_with(_new_key: SigningKey) -> None:
        # A new signing key (rotation or emergency revocation) signs the revocation list at once:
        # parts still signed by a key that left the JWKS would make fresh verifiers fail closed.
        await revocations.resign()

    keys.on_signing_key_changed(sign_list_with)
    # Signs the list again before it expires, folds `agenttoken revoke`'s pending entries.
    memo["revocations_signer_task"] = asyncio.create_task(
        revocations.run(may_write=leadership.is_primary), name="agenttoken-revocations-signer"
    )
    # Key rotation is rare; checking every minute (or half the publish-ahead) is plenty. Revocation
    # requests wake the loop at once, and so does becoming the primary (a new primary looks at the
    # ring at once); a standby's same loop only reloads the ring.
    leadership.subscribe(lambda shard, held: keys.wake() if shard == 0 and held else None)
    interval = min(keys.policy.publish_ahead / 2, datetime.timedelta(minutes=1)).total_seconds()
    memo["key_task"] = asyncio.create_task(keys.run(interval), name="agenttoken-keys")


async def _elect(memo: kopf.Memo, options: RunOptions, events: EventRecorder) -> Leadership:
    """First: whether we lead decides whether startup may rotate keys. A standby's caches fill
    from the watches all the same (warm for a takeover); only its writes wait. The Lease loop
    runs on its own thread (controllers.leasethread: a busy main loop must not delay a takeover)."""

    def make(kube: Kube | None) -> Leadership:
        return Leadership(
            Leases(kube, options.operator_namespace) if kube is not None else None,
            identity=options.identity,
            shards=options.shards,
            timings=LeaseTimings(*options.lease_timings),
            events=events,
        )

    if not options.leader_elect:
        leadership = make(None)
        await leadership.start()
        return leadership
    thread = memo["lease_thread"] = LeaseThread(make)
    return await thread.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for name in ("key_task", "revocations_task", "revocations_signer_task", "sync_task", "warmup_task"):
        task: asyncio.Task[None] | None = memo.get(name)
        if task is not None:
            task.cancel()
    served: watches.Watches | None = memo.get("watches")
    if served is not None:
        await served.stop()  # no event reaches a stopped controller
    podwiring.stop(memo)
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
    rollouts: RolloutManager | None = memo.get("rollouts")
    if rollouts is not None:
        await rollouts.stop()
    workloads: WorkloadCache | None = memo.get("workloads")
    if workloads is not None and workloads.relists is not None:
        await workloads.relists.stop()
    # After the last write: the next replica takes over at once.
    thread: LeaseThread | None = memo.get("lease_thread")
    leadership: Leadership | None = memo.get("leadership")
    if thread is not None:
        await thread.stop()
    elif leadership is not None:
        await leadership.stop()
    http: web.AppRunner | None = memo.get("http")
    if http is not None:
        await http.cleanup()
    events: EventRecorder | None = memo.get("events")
    if events is not None:
        await events.close()  # the Events of the steps above (a Lease handed back), while we can
    kube: Kube | None = memo.get("kube")
    if kube is not None:
        await kube.close()


@kopf.on.event(api.GROUP, api.VERSION, api.TOKENISSUER_PLURAL)
async def tokenissuer_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    await _issuer_event(api.TOKENISSUER_KIND, event, memo)


@kopf.on.event(api.GROUP, api.VERSION, api.CLUSTERTOKENISSUER_PLURAL)
async def clustertokenissuer_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    await _issuer_event(api.CLUSTERTOKENISSUER_KIND, event, memo)


async def _issuer_event(kind: str, event: kopf.RawEvent, memo: kopf.Memo) -> None:
    controller: Controller = memo["controller"]
    body = dict(event["object"])
    controller.issuers.on_event(kind, event.get("type"), body)
    if event.get("type") != "DELETED":
        await controller.reconcile_issuer(kind, body)


async def namespace_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_namespace_event(event.get("type"), event["object"])


def watch_namespaces() -> None:
    """Feed namespace labels from a watch instead of a GET per check. Only in cluster-wide mode:
    namespaced mode has no permission to list namespaces (and a GET per check stays cheap there)."""
    kopf.on.event("v1", "namespaces")(namespace_event)


# Workloads: reduced to a small record on arrival (restarts.reduce); never change-detecting
# handlers, so kopf writes nothing onto them.
@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["workloads"].on_event("Deployment", event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "statefulsets")
async def statefulset_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["workloads"].on_event("StatefulSet", event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "daemonsets")
async def daemonset_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["workloads"].on_event("DaemonSet", event.get("type"), event["object"])


async def _list_workloads(kube: Kube, namespaces: tuple[str, ...]) -> set[tuple[str, str, str]]:
    """Every workload in the scope the watches cover (kopf's namespace patterns, globs too)."""
    if not namespaces:
        return await kube.list_workload_refs(None)
    if any(map(watches.is_pattern, namespaces)):
        names = [n for n in await kube.list_namespace_names() if watches.matches(n, namespaces)]
    else:
        names = list(namespaces)
    found: set[tuple[str, str, str]] = set()
    for name in names:
        found |= await kube.list_workload_refs(name)
    return found


@kopf.on.probe(id="keys")
def keys_probe(memo: kopf.Memo, **_: Any) -> str:
    keys: KeyManager | None = memo.get("keys")
    if keys is None:
        raise RuntimeError("not started")
    if not keys.ring.keys and not keys.may_write():
        return "standby: waiting for the primary to create the key ring"
    return keys.signing_key().kid
