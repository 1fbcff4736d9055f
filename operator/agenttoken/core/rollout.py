"""Which workloads consume a token, which to restart, and how their rollouts are going. Pure.

A restart is content-addressed: one pod-template annotation per AgentToken
(`agenttoken.dev/revision.<name>`) whose value is the token id in the Secret. Writing the value a
workload already has is a no-op, so a crash between the Secret write and the patch, an operator
restart, or two rotations in one second can never restart a workload twice or for nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agenttoken import api
from agenttoken.core import names
from agenttoken.core.times import format_time

KINDS: tuple[str, ...] = ("Deployment", "StatefulSet", "DaemonSet")
PLURALS: dict[str, str] = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
}
ANNOTATION_PREFIX = f"{api.GROUP}/revision."

State = Literal["Pending", "RollingOut", "Complete", "Failed", "Paused"]


def annotation_key(agenttoken_name: str) -> str:
    """`agenttoken.dev/revision.<name>`; the name part of an annotation key is limited to 63 chars."""
    return ANNOTATION_PREFIX + names.fit(agenttoken_name, names.LABEL_VALUE_MAX - len("revision."))


@dataclass(frozen=True)
class WorkloadRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Consumption:
    secret: str
    via: str  # volume, projected, env, envFrom
    sub_path: bool = False

    @property
    def needs_restart(self) -> bool:
        """Env vars and subPath mounts never see a refreshed Secret without a restart."""
        return self.via in ("env", "envFrom") or self.sub_path


@dataclass(frozen=True)
class Workload:
    """A workload reduced to what rollouts need (the full object is never kept in memory)."""

    ref: WorkloadRef
    labels: Mapping[str, str] = field(default_factory=dict)
    generation: int = 0
    observed_generation: int = 0
    paused: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)  # pod-template annotations of ours
    consumes: tuple[Consumption, ...] = ()
    desired: int = 0
    updated: int = 0
    available: int = 0
    current: int = 0  # pods of any revision still counted by the controller
    revisions_match: bool = True  # StatefulSet: currentRevision == updateRevision
    failure: str | None = None

    def consumes_secret(self, secret: str) -> tuple[Consumption, ...]:
        return tuple(c for c in self.consumes if c.secret == secret)

    @property
    def runs_pods(self) -> bool:
        """A workload scaled to zero references the Secret but no pod reads it."""
        return self.desired > 0 or self.current > 0


def pod_spec_consumes(pod_spec: Mapping[str, Any], secret: str) -> bool:
    """Whether a pod spec (of a Pod, a CronJob's job template, ...) reads `secret`."""
    return any(c.secret == secret for c in _consumption(pod_spec))


def consumed_in(listing: Mapping[str, Sequence[Mapping[str, Any]]], secret: str) -> bool:
    """Whether anything in a namespace listing (kind -> bodies, see Kube.list_consumers) reads
    `secret`: a workload that runs pods, a Pod that has not finished, a CronJob not suspended."""
    workloads = [reduce(kind, body) for kind in KINDS for body in listing.get(kind, ())]
    if any(w.runs_pods and w.consumes_secret(secret) for w in workloads):
        return True
    for pod in listing.get("Pod", ()):
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and pod_spec_consumes(
            pod.get("spec") or {}, secret
        ):
            return True
    for cronjob in listing.get("CronJob", ()):
        spec = cronjob.get("spec") or {}
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        if not spec.get("suspend") and pod_spec_consumes(template.get("spec") or {}, secret):
            return True
    return False


def _consumption(pod_spec: Mapping[str, Any]) -> tuple[Consumption, ...]:
    found: list[Consumption] = []
    volumes: dict[str, list[str]] = {}
    for vol in pod_spec.get("volumes") or []:
        names: list[str] = []
        if vol.get("secret", {}).get("secretName"):
            names.append(vol["secret"]["secretName"])
        for source in (vol.get("projected") or {}).get("sources") or []:
            if (source.get("secret") or {}).get("name"):
                names.append(source["secret"]["name"])
        volumes[vol.get("name", "")] = names
        via = "projected" if vol.get("projected") else "volume"
        found += [Consumption(n, via) for n in names]
    for container in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        for mount in container.get("volumeMounts") or []:
            if mount.get("subPath") or mount.get("subPathExpr"):
                found += [
                    Consumption(n, "volume", sub_path=True) for n in volumes.get(mount.get("name", ""), [])
                ]
        for env in container.get("env") or []:
            ref = ((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            if ref:
                found.append(Consumption(ref, "env"))
        for env_from in container.get("envFrom") or []:
            ref = (env_from.get("secretRef") or {}).get("name")
            if ref:
                found.append(Consumption(ref, "envFrom"))
    return tuple(dict.fromkeys(found))


def reduce(kind: str, body: Mapping[str, Any]) -> Workload:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    template = spec.get("template") or {}
    annotations = {
        k: v
        for k, v in ((template.get("metadata") or {}).get("annotations") or {}).items()
        if k.startswith(ANNOTATION_PREFIX)
    }
    failure = None
    if kind == "DaemonSet":
        desired = int(status.get("desiredNumberScheduled") or 0)
        updated = int(status.get("updatedNumberScheduled") or 0)
        available = int(status.get("numberAvailable") or 0)
        current = int(status.get("currentNumberScheduled") or 0)
    else:
        desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        updated = int(status.get("updatedReplicas") or 0)
        available = int(
            status.get("availableReplicas")
            or (status.get("readyReplicas") if kind == "StatefulSet" else 0)
            or 0
        )
        current = int(status.get("replicas") or 0)
    if kind == "Deployment":
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                failure = cond.get("message") or "progress deadline exceeded"
    revisions_match = True
    if kind == "StatefulSet" and status.get("updateRevision"):
        revisions_match = status.get("currentRevision") == status.get("updateRevision")
    return Workload(
        ref=WorkloadRef(kind, meta.get("namespace", ""), meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        paused=bool(spec.get("paused")),
        annotations=annotations,
        consumes=_consumption(template.get("spec") or {}),
        desired=desired,
        updated=updated,
        available=available,
        current=current,
        revisions_match=revisions_match,
        failure=failure,
    )


def progress(w: Workload) -> tuple[State, str]:
    """Rollout state the way `kubectl rollout status` judges it."""
    if w.failure:
        return "Failed", w.failure
    if w.paused:
        return "Paused", f"{w.ref} is paused; its rollout waits until it is resumed"
    if w.observed_generation < w.generation:
        return "RollingOut", "waiting for the controller to observe the new template"
    if w.updated < w.desired:
        return "RollingOut", f"{w.updated} of {w.desired} updated"
    if w.current > w.updated:
        return "RollingOut", f"{w.current - w.updated} old pod(s) still terminating"
    if w.available < w.desired:
        return "RollingOut", f"{w.available} of {w.desired} available"
    if not w.revisions_match:
        return "RollingOut", "waiting for the StatefulSet's current revision"
    return "Complete", f"{w.desired} of {w.desired} updated and available"


def rollout_done(w: Workload, patched_generation: int) -> State | None:
    """Final state of the rollout our patch started, or None while it runs.

    Judged only on events at or after our patch's generation (an older event says nothing about
    it), and regardless of newer restart requests for the same workload: those wait for this
    rollout's slot, so waiting for them here would hold the slot forever.
    """
    if w.generation < patched_generation:
        return None
    state, _ = progress(w)
    return None if state == "RollingOut" else state


# -- selecting targets ----------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    kind: str | None = None
    name: str | None = None
    match_labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, w: Workload) -> bool:
        if self.kind and w.ref.kind != self.kind:
            return False
        if self.name is not None:
            return w.ref.name == self.name
        return bool(self.match_labels) and all(w.labels.get(k) == v for k, v in self.match_labels.items())


# How long the previous token stays valid after every target rolled (or after issuance without
# targets). Pods that read the token from a Secret volume and are not restarted see the new file
# only at their next periodic kubelet sync: up to 1.5 x syncFrequency (default 1m) after the write
# (68-84 s measured on a real node with the defaults). The former default of 30 s revoked the token
# such pods were still presenting for up to a minute per renewal; this one covers the delay.
DEFAULT_REVOKE_GRACE = datetime.timedelta(minutes=2)


@dataclass(frozen=True)
class RolloutSpec:
    strategy: Literal["Restart", "None"] = "None"
    targets: tuple[TargetSpec, ...] = ()
    auto_discover: bool = False
    grace: datetime.timedelta = DEFAULT_REVOKE_GRACE


def parse_rollout(raw: Mapping[str, Any] | None, parse_duration: Any) -> RolloutSpec:
    raw = raw or {}
    targets = tuple(
        TargetSpec(
            kind=t.get("kind"),
            name=t.get("name"),
            match_labels=dict((t.get("selector") or {}).get("matchLabels") or {}),
        )
        for t in raw.get("targets") or []
    )
    auto = bool(raw.get("autoDiscover", False))
    default = "Restart" if (targets or auto) else "None"
    grace = parse_duration(raw["revokeAfter"]) if raw.get("revokeAfter") else DEFAULT_REVOKE_GRACE
    return RolloutSpec(
        strategy=raw.get("strategy", default), targets=targets, auto_discover=auto, grace=grace
    )


def select(rollout: RolloutSpec, secret: str, workloads: Iterable[Workload]) -> list[Workload]:
    """Targets (by name or label) plus, with autoDiscover, every consumer of the Secret.
    Callers pass only workloads of the AgentToken's own namespace."""
    chosen: dict[WorkloadRef, Workload] = {}
    for w in workloads:
        if any(t.matches(w) for t in rollout.targets) or (
            rollout.auto_discover and w.consumes_secret(secret)
        ):
            chosen[w.ref] = w
    return sorted(chosen.values(), key=lambda w: (w.ref.kind, w.ref.name))


def needs_restart(w: Workload, key: str, value: str) -> bool:
    return w.annotations.get(key) != value


# -- status ---------------------------------------------------------------------------------


def target_status(
    w: Workload, value: str, key: str, previous: Mapping[str, Any] | None, now: datetime.datetime
) -> dict[str, Any]:
    """One entry of status.rollout.targets for workload `w` and token id `value`."""
    prev = previous if previous and previous.get("tokenId") == value else {}
    if needs_restart(w, key, value):
        state: State = "Pending"
        message = "waiting for its restart slot"
    else:
        state, message = progress(w)
    entry = {
        "kind": w.ref.kind,
        "name": w.ref.name,
        "tokenId": value,
        "state": state,
        "message": message,
        "startedAt": prev.get("startedAt") or (format_time(now) if state != "Pending" else None),
        "completedAt": prev.get("completedAt") if prev.get("state") == "Complete" else None,
    }
    if state == "Complete" and not entry["completedAt"]:
        entry["completedAt"] = format_time(now)
    return entry


def summarize(targets: Sequence[Mapping[str, Any]]) -> tuple[State, str]:
    """The AgentToken's view: Failed > Paused > RollingOut/Pending > Complete."""
    states = [t["state"] for t in targets]
    for state in ("Failed", "Paused"):
        bad = [f"{t['kind']}/{t['name']}: {t['message']}" for t in targets if t["state"] == state]
        if bad:
            return state, "; ".join(bad)
    busy = [t for t in targets if t["state"] in ("Pending", "RollingOut")]
    if busy:
        return "RollingOut", f"{len(targets) - len(busy)} of {len(targets)} target(s) rolled out"
    return "Complete", f"{len(targets)} target(s) rolled out" if states else "no targets"


class InterestIndex:
    """Which AgentTokens of a namespace a workload change concerns: those whose Secret it reads,
    whose revision annotation it carries, or whose rollout targets match it. Indexed by Secret
    name and annotation key, so one workload event costs what the workload references (plus the
    few AgentTokens with explicit targets), not a walk over every AgentToken of its namespace."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[str, RolloutSpec]] = {}
        self._by_secret: dict[tuple[str, str], set[str]] = {}
        self._by_annotation: dict[tuple[str, str], str] = {}
        self._with_targets: dict[str, set[str]] = {}
        self._names: dict[str, set[str]] = {}

    def put(self, namespace: str, name: str, secret: str, rollout: RolloutSpec) -> None:
        if self._entries.get((namespace, name)) == (secret, rollout):
            return
        self.drop(namespace, name)
        self._entries[namespace, name] = (secret, rollout)
        self._by_secret.setdefault((namespace, secret), set()).add(name)
        self._by_annotation[namespace, annotation_key(name)] = name
        if rollout.targets:
            self._with_targets.setdefault(namespace, set()).add(name)
        self._names.setdefault(namespace, set()).add(name)

    def drop(self, namespace: str, name: str) -> None:
        entry = self._entries.pop((namespace, name), None)
        if entry is None:
            return
        secret, _ = entry
        names = self._by_secret.get((namespace, secret), set())
        names.discard(name)
        if not names:
            self._by_secret.pop((namespace, secret), None)
        self._by_annotation.pop((namespace, annotation_key(name)), None)
        for group in (self._with_targets, self._names):
            group.get(namespace, set()).discard(name)
            if not group.get(namespace, True):
                group.pop(namespace, None)

    def in_namespace(self, namespace: str) -> set[str]:
        """Every indexed AgentToken name of a namespace (a copy)."""
        return set(self._names.get(namespace, set()))

    def concerned(self, ref: WorkloadRef, workload: Workload | None) -> set[str]:
        """AgentToken names in `ref`'s namespace to look at again; all of them when the workload
        is gone (what it referenced is no longer known)."""
        ns = ref.namespace
        if workload is None:
            return self.in_namespace(ns)
        names: set[str] = set()
        for c in workload.consumes:
            names |= self._by_secret.get((ns, c.secret), set())
        for key in workload.annotations:
            if (found := self._by_annotation.get((ns, key))) is not None:
                names.add(found)
        for name in self._with_targets.get(ns, set()):
            if any(t.matches(workload) for t in self._entries[ns, name][1].targets):
                names.add(name)
        return names
