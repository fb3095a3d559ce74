"""The watches of pachd's workers: their RCs (a pipeline updated, stopped or deleted) and
their pods (the workers' health), one list+watch thread each per namespace of pachd's.

pachd runs every pipeline as a ReplicationController in its own Kubernetes namespace and
replaces, scales to zero or deletes it within a second or two of an update, stop or
deletion: the RC watch tells within about a second which pipeline changed. The pod watch
keeps the index of workers.py current. Both report a changed pipeline through `changed`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kubernetes

from spout_operator.kube import ListWatch
from spout_operator.names import WORKER_POD_SELECTOR, WORKER_RC_SELECTOR, PipelineKey, worker_pipeline
from spout_operator.settings import Settings
from spout_operator.workers import WorkerPods

log = logging.getLogger(__name__)


def rc_fingerprint(rc: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an RC says the pipeline changed: its spec commit (an update) and replicas (a
    stop scales to zero). Status changes (pods coming and going) are not worth a pass."""
    meta = rc.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (annotations.get("specCommit"), (rc.get("spec") or {}).get("replicas"))


class WorkerWatch(ListWatch):
    """Watches pachd's worker RCs in one namespace, and reports each pipeline whose RC
    appeared, changed what matters, or went."""

    LIST_METHOD = "list_namespaced_replication_controller"
    THREAD = "workers"

    def __init__(
        self, core: kubernetes.client.CoreV1Api, namespace: str, changed: Callable[[PipelineKey], None]
    ) -> None:
        super().__init__(core, self.LIST_METHOD, namespace, WORKER_RC_SELECTOR, f"{self.THREAD}-{namespace}")
        self._changed = changed
        self._seen: dict[str, tuple[PipelineKey, tuple[Any, ...]]] = {}  # RC name -> pipeline, fingerprint
        self._listed = False  # the first listing only learns what exists: nothing changed yet

    def listed(self, items: list[dict[str, Any]]) -> None:
        current = {rc["metadata"]["name"]: rc for rc in items}
        for name in set(self._seen) - set(current):  # went while the watch was down
            self._changed(self._seen.pop(name)[0])
        for name, rc in current.items():
            self._observe(name, rc, first=not self._listed)
        self._listed = True

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            gone = self._seen.pop(name, None)
            if gone is not None:
                self._changed(gone[0])
        else:
            self._observe(name, obj)

    @staticmethod
    def fingerprint(obj: Mapping[str, Any]) -> tuple[Any, ...]:
        return rc_fingerprint(obj)

    def _observe(self, name: str, rc: Mapping[str, Any], first: bool = False) -> None:
        key = worker_pipeline(rc)
        if key is None:
            return
        fingerprint = self.fingerprint(rc)
        before = self._seen.get(name)
        self._seen[name] = (key, fingerprint)
        if not first and (before is None or before[1] != fingerprint):
            self._changed(key)


class ServiceWatch(WorkerWatch):
    """Watches the Services pachd makes for its workers, and reports each pipeline whose
    Service appeared or went. pachd 2.6 starts a pipeline by creating its worker RC, then its
    Service, then writing RUNNING (pipeline_controller.go, kube_driver.go): the Service's
    event is the last one before RUNNING (the RC's comes a throttled API call earlier), so a
    pass it wakes sees RUNNING without waiting for a poll."""

    LIST_METHOD = "list_namespaced_service"
    THREAD = "worker-services"

    @staticmethod
    def fingerprint(obj: Mapping[str, Any]) -> tuple[Any, ...]:
        return ()  # there or not: pachd never changes a worker Service it made


class PodWatch(ListWatch):
    """Lists, then watches, pachd's worker pods in one namespace, and reports each pipeline
    whose workers' health changed."""

    def __init__(
        self,
        core: kubernetes.client.CoreV1Api,
        namespace: str,
        index: WorkerPods,
        changed: Callable[[PipelineKey], None],
    ) -> None:
        super().__init__(
            core, "list_namespaced_pod", namespace, WORKER_POD_SELECTOR, f"worker-pods-{namespace}"
        )
        self._index, self._changed = index, changed

    def listed(self, items: list[dict[str, Any]]) -> None:
        for key in self._index.replace(self.namespace, items):
            self._changed(key)

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        for key in self._index.update(self.namespace, kind, obj):
            self._changed(key)

    def failed(self, err: Exception) -> None:
        super().failed(err)
        self._index.failed(self.namespace, _short(err))


def _short(err: Exception) -> str:
    if isinstance(err, kubernetes.client.ApiException):
        return f"({err.status}) {err.reason}"
    return str(err)[:200]


class WorkerHealthWatch:
    """The index and its watches, as the operator starts and stops them."""

    def __init__(
        self,
        core: kubernetes.client.CoreV1Api,
        namespaces: Iterable[str],
        changed: Callable[[PipelineKey], None],
    ) -> None:
        namespaces = tuple(namespaces)
        self.pods = WorkerPods(namespaces)
        self._watches = [PodWatch(core, ns, self.pods, changed) for ns in namespaces]

    @classmethod
    def from_settings(
        cls, settings: Settings, core: kubernetes.client.CoreV1Api, changed: Callable[[PipelineKey], None]
    ) -> WorkerHealthWatch | None:
        """None when workers are not judged: no namespace to look in (pachd's word, as
        before), or SPOUT_OPERATOR_WORKER_HEALTH=false (a stack without nodes: no pod ever runs)."""
        if not (settings.worker_health and settings.worker_namespaces):
            return None
        return cls(core, settings.worker_namespaces, changed)

    def start(self) -> None:
        for watch in self._watches:
            watch.start()

    def stop(self) -> None:
        for watch in self._watches:
            watch.stop()
