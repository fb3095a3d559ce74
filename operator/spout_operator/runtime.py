"""The running operator: its services built once at start-up, and what each kopf handler
asks of them. handlers.py holds only the decorators; each calls one method here.

Every blocking call (gRPC to pachd, the Kubernetes client) runs in a thread pool, never
on kopf's event loop, and every pachd call carries a deadline (see gateway.py). The
async methods await those passes, so waiting (for pachd to start pipelines, for the next
sweep or worker event) holds no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from spout_operator import dataflow, logs, memory, metrics, tracing
from spout_operator.conditions import now
from spout_operator.connection_checks import ConnectionChecks
from spout_operator.controller import Controller, PassResult
from spout_operator.events import Event
from spout_operator.flow_streams import FlowWatch
from spout_operator.gateway import Gateways
from spout_operator.kube import Kube
from spout_operator.names import GROUP, VERSION, PipelineKey, Trigger
from spout_operator.pachd_api import Endpoint, PachdError
from spout_operator.resolver import Resolver
from spout_operator.resource import Resource
from spout_operator.settings import Settings, SettingsError
from spout_operator.spec_streams import AioChannels, SpecWatch
from spout_operator.starting import Starts
from spout_operator.sweep import Sweeper, Vigil, keep_vigil
from spout_operator.threads import in_pool
from spout_operator.watches import ServiceWatch, WorkerHealthWatch, WorkerWatch
from spout_operator.workers import LISTED_WAIT_S

# Threads for blocking pachd and API calls. Each one a burst wakes keeps its stack (~150 KB), its
# malloc cache and its share of what the burst left behind: 32 cost 6-8 MB more than 16 at the
# bench's 500 resources, and 16 still keep six pachds busy (48 pairs Ready within 1.3x the floor).
WORKERS = 16
STARTING_WAIT_S = 60.0
STARTING_POLL_S = 0.5


def configure_kopf(kopf_settings: kopf.OperatorSettings) -> Settings:
    """Read our settings, pin kopf's bookkeeping to our own prefix, size its thread pool."""
    try:
        # Read when the operator starts, not when a module is imported: whatever set the
        # environment before `kopf run` (or a test, before its operator) is what counts.
        settings = Settings.from_env()
    except SettingsError as err:
        raise kopf.PermanentError(str(err)) from None
    kopf_settings.persistence.finalizer = f"{GROUP}/finalizer"
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    kopf_settings.execution.max_workers = WORKERS
    # Events are ours (pipeline created, drift repaired, warnings), not a copy of kopf's INFO
    # log ("Handler 'apply' succeeded"): that doubled the API writes of every change.
    kopf_settings.posting.level = logging.WARNING
    logs.report_as_operator(kopf_settings)
    return settings


class Operator:
    """Every service of one running operator, wired in the constructor (nothing injected
    later), started by `start` and stopped by `stop`."""

    def __init__(
        self,
        settings: Settings,
        executor: concurrent.futures.Executor,
        leading: Callable[[], bool] | None = None,
        kube: Kube | None = None,
    ) -> None:
        """Made on the event loop (kopf's startup handler): watch threads wake passes there.
        `kube`: the API session (made here unless given); nothing is called before `start`."""
        self.settings = settings
        self._leading = leading or (lambda: True)
        self.executor = executor  # kopf's own pool: the passes' blocking work
        # Polls for pipelines that are starting get a few threads of their own: while pachd is
        # slow to list, they wait there and never hold up the passes that create pipelines.
        self.poll_executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="starting-poll")
        self.kube = kube or Kube(pool_size=WORKERS)
        self._loop = asyncio.get_running_loop()
        self.gateways = Gateways(
            settings.pachd_timeout_s, settings.channel_idle_s, listing_changed=self._listed
        )
        # Worker pods: Ready needs them up (None: not judged, pachd's word stands).
        self.worker_health = WorkerHealthWatch.from_settings(settings, self.kube.core, self._changed)
        # Each pair's data flow from pachd's commit streams: read by passes from memory. The
        # commit streams (spec and flow) share one aio channel per pachd.
        self.aio_channels = AioChannels()
        self.flow_watch = FlowWatch(channels=self.aio_channels)
        self.controller = Controller(
            settings,
            self.gateways,
            self.kube,
            Resolver(self.kube.core, self.kube.custom, settings.operator_namespace),
            leading,
            None if self.worker_health is None else self.worker_health.pods,
            self.flow_watch,
            self._repaired,
        )
        # Every resource's drift passes, from one task; `index` starts and feeds it.
        self.sweeper = Sweeper(
            functools.partial(self._pass, self.executor), Controller.pipelines_of, settings.drift_interval_s
        )
        # pachd's worker RCs (drift), and its worker Services: the last event before a starting
        # pipeline turns RUNNING, which wakes the resources waiting for it to start.
        self.starts = Starts()
        self.worker_watches: list[WorkerWatch] = [
            *(WorkerWatch(self.kube.core, ns, self._changed) for ns in settings.worker_namespaces),
            *(ServiceWatch(self.kube.core, ns, self._started) for ns in settings.worker_namespaces),
        ]
        self.vigil = Vigil[Endpoint]()
        # Updates made behind the operator's back, from the pipelines' spec repos (within ~0.1 s).
        self.spec_watch = SpecWatch(self._poke_now, own=self.gateways.wrote, channels=self.aio_channels)
        self.connection_checks = ConnectionChecks(
            self.controller.resolver,
            self.gateways,
            self.kube,
            executor,
            settings.connection_check_interval_s,
            now,
        )
        self._vigil_task: asyncio.Task[None] | None = None
        self._trim_task: asyncio.Task[None] | None = None
        # uid -> (generation, when its watch event was seen) for a spec change not yet Ready:
        # where its passes' traces count from (tracing.py). Dropped at Ready or deletion.
        self._changes: dict[str, tuple[int, float]] = {}
        self._changes_lock = threading.Lock()  # the loop writes it, pool threads claim Ready

    async def start(self) -> None:
        # __main__ serves them from the process's start (a standby too); kept for operators
        # run by `kopf run` or in-process in tests.
        metrics.serve(self.settings.metrics_port)
        metrics.lead_by(self._leading)
        for watch in self.worker_watches:
            watch.start()
        self._vigil_task = self._loop.create_task(
            keep_vigil(self.vigil, functools.partial(in_pool, self.executor, self._list_pachd))
        )
        # Freed memory back to the system once per sweep interval (memory.py).
        self._trim_task = self._loop.create_task(memory.keep_trimmed(self.settings.drift_interval_s))
        self.connection_checks.start()
        if self.worker_health is not None:
            # No pass runs before start-up ends: the first ones judge by a listed index (or,
            # after LISTED_WAIT_S, say why it could not be listed).
            self.worker_health.start()
            await asyncio.to_thread(self.worker_health.pods.wait_listed, LISTED_WAIT_S)

    async def stop(self) -> None:
        """Stop what start started. Nothing here blocks (no thread needed)."""
        self.sweeper.stop()
        self.connection_checks.stop()
        for task in (self._vigil_task, self._trim_task):
            if task is not None:
                task.cancel()
        for watch in self.worker_watches:
            watch.stop()
        if self.worker_health is not None:
            self.worker_health.stop()
        await self.spec_watch.close()
        await self.flow_watch.close()
        await self.aio_channels.close()
        self.poll_executor.shutdown(wait=False, cancel_futures=True)
        # Passes still queued (their tasks cancelled) would each run before the process exits.
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.gateways.close()
        # No longer answering for any resource (a stepped-down leader): no frozen gauges.
        self.controller.readiness.clear()

    # --- SpoutPipelines -----------------------------------------------------------------

    async def apply(self, body: Mapping[str, Any]) -> None:
        """Make pachd hold both pipelines as the resource declares them. Each pass writes the
        status itself, under the resource's lock (kopf's handler patch carries none of it)."""
        resource = Resource.of(body)
        # The pass first shows a spec change under way (Ready=Unknown, Reconciling), then its result.
        result = await self._pass(self.executor, resource, "change")
        # pachd takes seconds (tens of seconds for many at once) to move new pipelines from
        # STARTING to RUNNING; keep looking, through the shared listing, so Ready follows within
        # a poll instead of at the next drift check. The waits hold no thread: many resources
        # starting at once never starve the pool that creates the next ones. pachd's worker
        # Service events cut a wait short (starting.py); the polls are the safety net.
        deadline = time.monotonic() + STARTING_WAIT_S
        with self.starts.waiting() as wait:
            while result is not None and result.starting and time.monotonic() < deadline:
                if result.pair is not None:
                    self.starts.follow(wait, result.pair)
                listed_since = await wait.next(STARTING_POLL_S)
                # Judge by the resource as its newest event shows it: the handler's body has
                # none of the status later passes wrote (an automatic restart's count).
                resource = self.sweeper.latest(resource.uid) or resource
                result = await self._pass(self.poll_executor, resource, "poll", listed_since)
        # An unreachable pachd or a rejected spec is in the status now, and the drift sweep
        # retries it (one listing per pachd per sweep, however many resources wait on it), so
        # this ends here: no per-resource retry loop, no Event at every attempt.

    def index(self, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """Feed the sweep's index a compact copy of each live resource. No daemon or timer:
        kopf would keep every resource's whole body (and a task) for it."""
        if not self.sweeper.started:
            # kopf.event posts only from an object's handling context (its event queue is in
            # there, not in the startup handler's): the sweep's passes run in a copy of this one.
            self.sweeper.start(contextvars.copy_context())
        meta = body.get("metadata", {})
        if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
            with self._changes_lock:
                self._changes.pop(str(meta.get("uid")), None)
            self.sweeper.forget(str(meta.get("uid")))  # the delete handler owns it now
            self.spec_watch.forget(str(meta.get("uid")))
            self.flow_watch.forget(str(meta.get("uid")))
        else:
            resource = Resource.of(body)
            self._seen(resource)
            self.sweeper.track(resource)

    def _seen(self, resource: Resource) -> None:
        """The first event of a spec change (a generation the status has not caught up with)
        starts its trace."""
        pending = resource.status.get("observedGeneration") != resource.generation
        with self._changes_lock:
            if pending and self._changes.get(resource.uid, (None, 0.0))[0] != resource.generation:
                self._changes[resource.uid] = (resource.generation, time.monotonic())

    async def delete(
        self, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        """Delete both pipelines (processor first) unless the policy orphans them."""
        deletion = await in_pool(self.executor, self.controller.delete, Resource.of(body))
        if not deletion.done:  # its status, saying why, is written already
            raise kopf.TemporaryError(deletion.message, delay=self.settings.retry_delay_s)
        logger.info(deletion.message)

    @property
    def api_watches(self) -> int:
        """The watch streams kopf holds open: SpoutPipelines (per namespace), CRDs, namespaces."""
        return max(1, len(self.settings.namespaces)) + 2

    def channels(self) -> int:
        """Liveness: the operator's own health only, never pachd's."""
        return len(self.gateways)

    # --- what every pass shares -----------------------------------------------------------

    async def _pass(
        self,
        executor: concurrent.futures.Executor,
        resource: Resource,
        trigger: Trigger,
        listed_since: float = 0.0,
    ) -> PassResult | None:
        change = self._changes.get(resource.uid)
        origin = change[1] if change is not None and change[0] == resource.generation else None
        result = await in_pool(
            executor, self._reconcile, resource, trigger, listed_since, time.monotonic(), origin
        )
        if result is not None:
            _post(resource, result.events)
            self.spec_watch.follow(resource.uid, result.endpoint, result.heads)
            labels = (resource.namespace, resource.name)
            expected = dataflow.expectations(resource.spec)
            self.flow_watch.follow(resource.uid, labels, result.endpoint, result.pair, expected)
            metrics.data_flowing(labels, result.status)
        return result

    def _reconcile(
        self,
        resource: Resource,
        trigger: Trigger,
        listed_since: float,
        submitted: float,
        origin: float | None,
    ) -> PassResult | None:
        """One pass in a pool thread, timed and counted (metrics.timed_pass), and traced from
        the watch event of the change under way (else from its submission to the pool)."""
        where = f"{resource.namespace}/{resource.name}"
        with tracing.traced(where, trigger, submitted if origin is None else origin) as trace:
            trace.mark("pass queued", submitted)
            started = time.monotonic()
            with metrics.timed_pass(trigger):
                result = self.controller.reconcile(resource, trigger, listed_since)
            trace.mark("pass", started)
            ready = result is not None and result.ready(resource.generation)
            if origin is not None and ready and self._ready_first(resource):
                trace.mark("Ready", origin)
        reason = metrics.pass_error(None if result is None else result.status)
        if reason is not None:
            metrics.RECONCILE_ERRORS.labels(reason).inc()
        return result

    def _ready_first(self, resource: Resource) -> bool:
        """Whether this pass is the first to find the change Ready: the handler's pass and an
        event's may overlap in the pool, and the change has one Ready."""
        with self._changes_lock:
            change = self._changes.get(resource.uid)
            if change is None or change[0] != resource.generation:
                return False
            del self._changes[resource.uid]
            return True

    def _poke_now(self, key: PipelineKey) -> None:  # on the event loop
        self.sweeper.wakeups.poke(key, time.monotonic())

    def _changed(self, key: PipelineKey) -> None:  # from a watch thread: wake its resources in the loop
        self._loop.call_soon_threadsafe(self.sweeper.wakeups.poke, key, time.monotonic())

    def _started(self, key: PipelineKey) -> None:  # from a watch thread, likewise
        self._loop.call_soon_threadsafe(self.starts.seen, key, time.monotonic())

    def _listed(self, keys: set[PipelineKey], started: float) -> None:  # from a pass's thread, likewise
        for key in keys:
            self._loop.call_soon_threadsafe(self.sweeper.wakeups.poke, key, started)

    def _repaired(self, endpoint: Endpoint) -> None:  # from a pass's thread: the vigil is the loop's
        self._loop.call_soon_threadsafe(self._drift_seen, endpoint, time.monotonic())

    def _drift_seen(self, endpoint: Endpoint, at: float) -> None:
        self.vigil.drift_seen(endpoint, at, self.gateways.answering())

    def _list_pachd(self, endpoint: Endpoint) -> None:
        """One listing of a pachd under vigil; what it shows changed wakes its resources. The
        vigil keeps no gateway open: one closed meanwhile (idle, its token replaced) is not listed."""
        gateway = self.gateways.find(endpoint)
        if gateway is not None:
            with contextlib.suppress(PachdError):  # the passes report pachd's errors
                gateway.snapshot(not_before=time.monotonic())


def _post(resource: Resource, events: list[Event]) -> None:
    obj: kopf.RawBody = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SpoutPipeline",
        "metadata": {"name": resource.name, "namespace": resource.namespace, "uid": resource.uid},
    }
    for event in events:
        kopf.event(kopf.Body(obj), type=event.type, reason=event.reason, message=event.message)
