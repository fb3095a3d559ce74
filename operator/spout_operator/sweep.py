"""When each resource is compared with pachd: at once when pachd's workers change, and at
the periodic sweep as the safety net.

pachd runs every pipeline as a ReplicationController in its own Kubernetes namespace and
replaces, scales to zero or deletes it within a second or two of an update, stop or
deletion. A watch on those RCs therefore tells within about a second which pipeline
changed; the resource that declares it is woken for a pass of its own. The sweep (all
resources on one grid, one listing per pachd) still catches what no event shows: a
pachd outside the cluster, a watch that was down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import kubernetes

PipelineKey = tuple[str, str]  # (project, pipeline name)
T = TypeVar("T")

# The labels pachd 2.6 puts on every pipeline's worker RC (and its pods and Service).
WORKER_SELECTOR = "app=pipeline,suite=pachyderm"
WATCH_TIMEOUT_S = 60  # the server ends each watch after this; it is opened again at once
RETRY_S = 1.0

log = logging.getLogger(__name__)


# After drift on a pachd, list it this often for this long: more may be on its way (a script,
# someone at pachctl) and its own events lag behind while pachd's Kubernetes client is busy.
VIGIL_POLL_S = 0.25
VIGIL_S = 10.0


def until_next_sweep(now: float, interval_s: float) -> float:
    """Seconds from `now` to the next multiple of the interval: the shared sweep grid."""
    return interval_s - now % interval_s


class Wakeups:
    """Which resource declares which pipelines, the event that wakes its daemon, and how
    fresh a listing of pachd its pass must judge by (one started after the change was seen).

    Used from the event loop only (the watch threads call `poke` through it)."""

    def __init__(self) -> None:
        self._by_key: dict[PipelineKey, set[str]] = {}
        self._keys: dict[str, set[PipelineKey]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._since: dict[str, float] = {}  # uid -> newest change seen (monotonic)

    def register(self, uid: str, keys: set[PipelineKey], event: asyncio.Event) -> None:
        self.unregister(uid)
        self._keys[uid], self._events[uid] = set(keys), event
        for key in keys:
            self._by_key.setdefault(key, set()).add(uid)

    def unregister(self, uid: str) -> None:
        for key in self._keys.pop(uid, set()):
            owners = self._by_key.get(key, set())
            owners.discard(uid)
            if not owners:
                self._by_key.pop(key, None)
        self._events.pop(uid, None)
        self._since.pop(uid, None)

    def poke(self, key: PipelineKey, seen_at: float) -> None:
        """Wake the resources declaring `key`: a change seen at `seen_at` (time.monotonic())."""
        for uid in self._by_key.get(key, ()):
            self._since[uid] = max(seen_at, self._since.get(uid, seen_at))
            self._events[uid].set()

    def take_since(self, uid: str) -> float:
        """The newest change seen for the resource since the last call (0.0: none)."""
        return self._since.pop(uid, 0.0)

    def __len__(self) -> int:
        return len(self._events)


class Vigil(Generic[T]):
    """The pachds where drift was just repaired, and until when to keep listing them. A
    listing that shows a pipeline changed wakes its resource (Gateway.snapshot), so a burst
    of changes is repaired at the pace of these listings, not of pachd's worker events. A
    quiet pachd is never listed between sweeps."""

    def __init__(self, duration_s: float = VIGIL_S) -> None:
        self._duration_s = duration_s
        self._until: dict[T, float] = {}

    def drift_seen(self, where: T, now: float) -> None:
        self._until[where] = now + self._duration_s

    def due(self, now: float) -> list[T]:
        """Where to list now; forgets the pachds whose vigil has ended."""
        self._until = {where: until for where, until in self._until.items() if until > now}
        return list(self._until)


def rc_fingerprint(rc: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an RC says the pipeline changed: its spec commit (an update) and replicas (a
    stop scales to zero). Status changes (pods coming and going) are not worth a pass."""
    meta = rc.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (annotations.get("specCommit"), (rc.get("spec") or {}).get("replicas"))


def rc_pipeline(rc: Mapping[str, Any]) -> PipelineKey | None:
    labels = (rc.get("metadata") or {}).get("labels") or {}
    name = labels.get("pipelineName")
    return None if not name else (labels.get("pipelineProject") or "default", name)


class WorkerWatch:
    """Watches pachd's worker RCs in one namespace from a thread of its own, and reports each
    pipeline whose RC appeared, changed what matters, or went."""

    def __init__(
        self, core: kubernetes.client.CoreV1Api, namespace: str, changed: Callable[[PipelineKey], None]
    ) -> None:
        self._core, self.namespace, self._changed = core, namespace, changed
        self._seen: dict[str, tuple[PipelineKey, tuple[Any, ...]]] = {}  # RC name -> pipeline, fingerprint
        self._listed = False  # the first listing only learns what exists: nothing changed yet
        self._stop = threading.Event()
        self._watch: kubernetes.watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"workers-{namespace}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._relist()
                while not self._stop.is_set():
                    version = self._follow(version)
            except Exception as err:  # API server away, 410 Gone, ...: list again shortly
                if not self._stop.is_set():
                    log.warning(f"Worker watch in {self.namespace} restarts: {err}")
                self._stop.wait(RETRY_S)

    def _relist(self) -> str:
        listing = self._core.list_namespaced_replication_controller(
            self.namespace, label_selector=WORKER_SELECTOR, _request_timeout=30
        )
        raw: dict[str, Any] = self._core.api_client.sanitize_for_serialization(listing)
        current = {rc["metadata"]["name"]: rc for rc in raw.get("items") or []}
        for name in set(self._seen) - set(current):  # went while the watch was down
            self._changed(self._seen.pop(name)[0])
        for name, rc in current.items():
            self._observe(name, rc, first=not self._listed)
        self._listed = True
        return str(raw["metadata"]["resourceVersion"])

    def _follow(self, version: str) -> str:
        self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        for event in self._watch.stream(  # type: ignore[no-untyped-call]
            self._core.list_namespaced_replication_controller,
            self.namespace,
            label_selector=WORKER_SELECTOR,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_S,
            _request_timeout=WATCH_TIMEOUT_S + 10,
        ):
            if event["type"] == "ERROR":
                raise RuntimeError(f"watch error: {event['raw_object'].get('message')}")
            rc = event["raw_object"]
            name = rc["metadata"]["name"]
            version = str(rc["metadata"]["resourceVersion"])
            if event["type"] == "DELETED":
                gone = self._seen.pop(name, None)
                if gone is not None:
                    self._changed(gone[0])
            else:
                self._observe(name, rc)
        return version

    def _observe(self, name: str, rc: Mapping[str, Any], first: bool = False) -> None:
        key = rc_pipeline(rc)
        if key is None:
            return
        fingerprint = rc_fingerprint(rc)
        before = self._seen.get(name)
        self._seen[name] = (key, fingerprint)
        if not first and (before is None or before[1] != fingerprint):
            self._changed(key)
