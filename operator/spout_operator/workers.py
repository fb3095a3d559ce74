"""The health of each pipeline's workers: verdicts on pachd's worker pods, and their index.

pachd says RUNNING while its workers cannot pull their image, crash or cannot be scheduled
(pachyderm#3059), so `Ready` also needs the pods. The pod watches (watches.py) keep an
in-memory index of them by pipeline (WorkerPods): a pass reads it, never the API server,
and a change of a pipeline's health that matters (ready count, reason) wakes its resource.

`pod_problem` and `health` are pure: a pod (or a pipeline's pods) in, a verdict out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from spout_operator.names import PipelineKey, worker_pipeline

# The kubelet's waiting reasons on the way up; every other waiting reason is an error
# (ErrImagePull, ImagePullBackOff, ErrImageNeverPull, CrashLoopBackOff, CreateContainerConfigError, ...).
STARTING = frozenset({"ContainerCreating", "PodInitializing"})
LISTED_WAIT_S = 10.0  # how long start-up waits for the first listing of pods
MESSAGE_MAX = 600  # kubelet's pull errors run to hundreds of characters; status stays readable


@dataclass(frozen=True)
class WorkerHealth:
    """A pipeline's workers: how many are ready, and why not (the first pod that is not)."""

    ready: int
    total: int
    reason: str = ""  # empty when every worker is ready
    message: str = ""
    failing: bool = False  # pull error, crash, unschedulable: waiting will not bring it up

    @property
    def up(self) -> bool:
        return self.total > 0 and self.ready == self.total

    @property
    def fingerprint(self) -> tuple[int, int, str]:
        """What a pass should follow; messages (back-off counters) change too often for that."""
        return (self.ready, self.total, self.reason)

    def as_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"ready": self.ready, "total": self.total}
        if self.reason:
            entry.update(reason=self.reason, message=self.message)
        return entry


class HealthSource(Protocol):
    def health(self, key: PipelineKey, version: int) -> WorkerHealth: ...


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    failing: bool


def pod_problem(pod: Mapping[str, Any]) -> Problem | None:
    """Why a worker pod is not ready; None when it is."""
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if (conditions.get("Ready") or {}).get("status") == "True":
        return None
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        reason = str(scheduled.get("reason") or "Pending")
        # Unschedulable: the scheduler looked and no node fits (a quota, node or request must change).
        return Problem(reason, _clip(str(scheduled.get("message") or "")), reason == "Unschedulable")
    if status.get("phase") in ("Failed", "Succeeded"):  # evicted, or ended: the RC replaces it
        reason = str(status.get("reason") or status.get("phase"))
        return Problem(reason, _clip(str(status.get("message") or "")), True)
    starting: Problem | None = None
    init = [(c, True) for c in status.get("initContainerStatuses") or []]
    for container, is_init in [*init, *[(c, False) for c in status.get("containerStatuses") or []]]:
        problem = _container_problem(container, is_init)
        if problem is not None and problem.failing:
            return problem
        starting = starting or problem
    return starting or Problem(str(status.get("phase") or "Pending"), "", False)


def _container_problem(container: Mapping[str, Any], is_init: bool) -> Problem | None:
    name = container.get("name", "?")
    state = container.get("state") or {}
    if "waiting" in state:
        reason = str(state["waiting"].get("reason") or "Waiting")
        if reason in STARTING:
            return Problem(reason, f"container {name}: {reason}", False)
        message = str(state["waiting"].get("message") or "")
        if reason == "CrashLoopBackOff":  # its own message is a back-off counter: say why it crashed
            message = _termination(container.get("lastState", {}).get("terminated")) or message
        return Problem(
            reason, _clip(f"container {name}: {message}" if message else f"container {name}"), True
        )
    if "terminated" in state:
        ended = state["terminated"]
        if is_init and ended.get("exitCode") == 0:
            return None  # an init container that did its job
        reason = str(ended.get("reason") or "Error")
        return Problem(reason, _clip(f"container {name}: {_termination(ended)}"), True)
    if not container.get("ready") and not is_init:  # running, not ready yet (a probe)
        return Problem("ContainersNotReady", f"container {name} is not ready", False)
    return None


def _termination(ended: Mapping[str, Any] | None) -> str:
    """What a container said when it ended (/dev/termination-log), else how it ended."""
    if not ended:
        return ""
    said = str(ended.get("message") or "").strip()
    return said or f"{ended.get('reason') or 'terminated'}, exit code {ended.get('exitCode')}"


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."


def pod_version(pod: Mapping[str, Any]) -> int | None:
    raw = ((pod.get("metadata") or {}).get("labels") or {}).get("pipelineVersion", "")
    return int(raw) if str(raw).isdigit() else None


def health(pods: Iterable[Mapping[str, Any]], version: int) -> WorkerHealth:
    """The workers of one pipeline version. Pods being deleted do not count: the RC is
    replacing them (or the pipeline is stopping)."""
    current = sorted(
        (
            p
            for p in pods
            if pod_version(p) == version and not (p.get("metadata") or {}).get("deletionTimestamp")
        ),
        key=lambda p: str((p.get("metadata") or {}).get("name")),
    )
    if not current:
        return WorkerHealth(0, 0, "NoWorkers", f"no worker pod of version {version} yet")
    problems = [(p["metadata"].get("name"), pod_problem(p)) for p in current]
    ready = sum(1 for _, problem in problems if problem is None)
    failing = [(name, pr) for name, pr in problems if pr is not None and pr.failing]
    waiting = [(name, pr) for name, pr in problems if pr is not None]
    if not (failing or waiting):
        return WorkerHealth(ready, len(current))
    name, problem = (failing or waiting)[0]
    assert problem is not None
    message = f"pod {name}: {problem.message}" if problem.message else f"pod {name}"
    return WorkerHealth(ready, len(current), problem.reason, message, problem.failing)


def slim(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the index keeps of a pod: what `health` reads (not its spec: memory at scale)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "labels", "deletionTimestamp") if meta.get(k)},
        "status": {
            k: status[k]
            for k in (
                "phase",
                "reason",
                "message",
                "conditions",
                "containerStatuses",
                "initContainerStatuses",
            )
            if status.get(k)
        },
    }


class WorkerPods:
    """The index: worker pods by pipeline, over the watched namespaces. Thread-safe: the
    watch threads write it, passes read it.

    (project, pipeline) is the key, as for the RC watch: two pachds watched by one operator
    that both run a pipeline of the same project and name would share one entry."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._namespaces = tuple(namespaces)
        self._by_key: dict[PipelineKey, dict[tuple[str, str], dict[str, Any]]] = {}  # -> (ns, name) -> pod
        self._keys: dict[str, dict[str, PipelineKey]] = {
            ns: {} for ns in self._namespaces
        }  # ns -> name -> key
        self._listed: dict[str, threading.Event] = {ns: threading.Event() for ns in self._namespaces}
        self._errors: dict[str, str] = {}  # namespace -> why it was never listed
        self._judged_unlisted = False  # a pass saw WorkersUnknown: the first listing must wake it

    def health(self, key: PipelineKey, version: int) -> WorkerHealth:
        with self._lock:
            unseen = [ns for ns in self._namespaces if not self._listed[ns].is_set()]
            errors = "; ".join(f"{ns}: {self._errors[ns]}" for ns in unseen if ns in self._errors)
            pods = list(self._by_key.get(key, {}).values())
            self._judged_unlisted = self._judged_unlisted or bool(unseen)
        if errors:  # e.g. no RBAC for pods there: nothing about the workers can be known
            return WorkerHealth(0, 0, "WorkersUnknown", _clip(f"cannot list worker pods ({errors})"), True)
        if unseen:
            return WorkerHealth(0, 0, "WorkersUnknown", "worker pods not listed yet")
        result = health(pods, version)
        if result.reason == "NoWorkers":  # a wrong namespace setting looks like this: say where we look
            where = ", ".join(self._namespaces)
            return WorkerHealth(0, 0, result.reason, f"{result.message} (watching namespaces {where})")
        return result

    def wait_listed(self, timeout_s: float) -> bool:
        """Until every namespace has been listed once (or the time is up)."""
        return all(event.wait(timeout_s) for event in self._listed.values())

    def _fingerprint(self, key: PipelineKey) -> tuple[Any, ...] | None:
        """The health of the pipeline's newest version that has pods (the one coming up)."""
        pods = list(self._by_key.get(key, {}).values())
        versions = [v for v in map(pod_version, pods) if v is not None]
        if not versions:
            return None
        return (max(versions), *health(pods, max(versions)).fingerprint)

    def _put(self, namespace: str, pod: Mapping[str, Any]) -> PipelineKey | None:
        key = worker_pipeline(pod)
        if key is not None:
            name = str(pod["metadata"]["name"])
            self._keys[namespace][name] = key
            self._by_key.setdefault(key, {})[(namespace, name)] = slim(pod)
        return key

    def _drop(self, namespace: str, name: str) -> PipelineKey | None:
        key = self._keys[namespace].pop(name, None)
        if key is not None:
            pods = self._by_key.get(key, {})
            pods.pop((namespace, name), None)
            if not pods:
                self._by_key.pop(key, None)
        return key

    def replace(self, namespace: str, pods: Iterable[Mapping[str, Any]]) -> set[PipelineKey]:
        """A (re)listing: the pipelines whose health changed. The first listing changes
        nothing (start-up waits for it), unless a pass judged before it (health unknown)."""
        pods = list(pods)
        with self._lock:
            keys = set(self._keys[namespace].values()) | {k for k in map(worker_pipeline, pods) if k}
            before = {key: self._fingerprint(key) for key in keys}
            for name in list(self._keys[namespace]):
                self._drop(namespace, name)
            for pod in pods:
                self._put(namespace, pod)
            first = not self._listed[namespace].is_set()
            self._listed[namespace].set()
            self._errors.pop(namespace, None)
            if first:
                return keys if self._judged_unlisted else set()
            return {key for key in keys if before[key] != self._fingerprint(key)}

    def update(self, namespace: str, kind: str, pod: Mapping[str, Any]) -> set[PipelineKey]:
        """A watch event (ADDED, MODIFIED, DELETED): the pipeline, if its health changed."""
        key = worker_pipeline(pod)
        if key is None:
            return set()
        with self._lock:
            before = self._fingerprint(key)
            self._drop(namespace, str(pod["metadata"]["name"]))
            if kind != "DELETED":
                self._put(namespace, pod)
            return {key} if before != self._fingerprint(key) else set()

    def failed(self, namespace: str, error: str) -> None:
        with self._lock:
            if not self._listed[namespace].is_set():
                self._errors[namespace] = error
