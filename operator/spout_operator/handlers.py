"""kopf handlers: thin glue between Kubernetes events and the controller.

Every blocking call (gRPC to pachd, the Kubernetes client) runs in a thread pool,
never on kopf's event loop, and every pachd call carries a deadline (see gateway.py).
The async handlers await those passes, so waiting (for pachd to start pipelines, for
the next sweep or worker event) holds no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kopf

from spout_operator import connections, metrics
from spout_operator.controller import Controller, PassResult, Resource, now
from spout_operator.events import Event, Trigger
from spout_operator.gateway import Endpoint, Gateways, PachdError, SpecWatch
from spout_operator.kube import GROUP, PLURAL, VERSION, Kube, login_session
from spout_operator.settings import Settings, SettingsError
from spout_operator.sweep import PipelineKey, Sweeper, Vigil, WorkerWatch, keep_vigil, until_next_sweep
from spout_operator.workers import LISTED_WAIT_S, WorkerHealthWatch

RESOURCE = (GROUP, VERSION, PLURAL)
WORKERS = 32  # threads for blocking pachd and API calls
STARTING_WAIT_S = 60.0
STARTING_POLL_S = 0.5
T = TypeVar("T")

__all__ = ["until_next_sweep"]  # re-exported for tests that import it from here


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Read our settings, pin kopf's bookkeeping to our own prefix, share state through memo."""
    try:
        # Read when the operator starts, not when this module is imported: whatever set the
        # environment before `kopf run` (or a test, before its operator) is what counts.
        memo.settings = Settings.from_env()
    except SettingsError as err:
        raise kopf.PermanentError(str(err)) from None
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.execution.max_workers = WORKERS
    # Events are ours (pipeline created, drift repaired, warnings), not a copy of kopf's INFO
    # log ("Handler 'apply' succeeded"): that doubled the API writes of every change.
    settings.posting.level = logging.WARNING
    memo.executor = settings.execution.executor  # for the async handlers' blocking passes
    # Polls for pipelines that are starting get a few threads of their own: while pachd is
    # slow to list, they wait there and never hold up the passes that create pipelines.
    memo.poll_executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="starting-poll")
    memo.kube = Kube(pool_size=WORKERS)
    loop = asyncio.get_running_loop()

    def changed(key: PipelineKey) -> None:  # from a watch thread: wake its resources in the loop
        loop.call_soon_threadsafe(memo.sweeper.wakeups.poke, key, time.monotonic())

    def listed(keys: set[PipelineKey], started: float) -> None:  # from a pass's thread, likewise
        for key in keys:
            loop.call_soon_threadsafe(memo.sweeper.wakeups.poke, key, started)

    gateways = Gateways(memo.settings.pachd_timeout_s, _gateway_idle_s(memo.settings), listing_changed=listed)
    # With leader election, whether this replica holds the Lease (checked before every write).
    leading = getattr(memo, "leading", None)
    memo.controller = Controller(memo.settings, gateways, memo.kube, leading=leading)
    # Every resource's drift passes, from one task; the `index` handler starts and feeds it.
    memo.sweeper = Sweeper(
        functools.partial(_pass, memo, memo.executor),
        memo.controller.pipelines_of,
        memo.settings.drift_interval_s,
    )
    # Connections by (plural, namespace, name), for their periodic check. Made here: each
    # object's handlers get a shallow copy of memo, so only objects made now are shared.
    memo.connections = {}
    metrics.serve(memo.settings.metrics_port)
    memo.worker_watches = [
        WorkerWatch(memo.kube.core, namespace, changed) for namespace in memo.settings.worker_namespaces
    ]
    for watch in memo.worker_watches:
        watch.start()
    memo.vigil = Vigil[Endpoint]()
    memo.vigil_task = loop.create_task(
        keep_vigil(memo.vigil, functools.partial(_in_pool, memo.executor, _list_pachd, memo))
    )
    # Updates made behind the operator's back, from the pipelines' spec repos (within ~0.1 s).
    memo.spec_watch = SpecWatch(
        lambda key: memo.sweeper.wakeups.poke(key, time.monotonic()), own=gateways.wrote
    )
    # Worker pods: Ready needs them up. No pass runs before startup ends: the first ones
    # judge by a listed index (or, after LISTED_WAIT_S, say why it could not be listed).
    memo.worker_health = WorkerHealthWatch.from_settings(memo.settings, memo.kube.core, changed)
    if memo.worker_health is not None:
        memo.worker_health.start()
        memo.controller.workers = memo.worker_health.pods
        await asyncio.to_thread(memo.worker_health.pods.wait_listed, LISTED_WAIT_S)


@kopf.on.login()
async def login(
    logger: kopf.Logger, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any
) -> kopf.AiohttpSession | None:
    """kopf's own login, on a bounded connection pool (see kube.login_session)."""
    watches = max(1, len(memo.settings.namespaces)) + 2  # SpoutPipelines (per namespace), CRDs, namespaces
    return login_session(logger, settings, watches)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Stop what startup started. Nothing here blocks (no thread needed)."""
    memo.sweeper.stop()
    memo.vigil_task.cancel()
    for watch in memo.worker_watches:
        watch.stop()
    if getattr(memo, "worker_health", None) is not None:
        memo.worker_health.stop()
    await memo.spec_watch.close()
    memo.poll_executor.shutdown(wait=False, cancel_futures=True)
    # Passes still queued (their tasks cancelled) would each run before the process exits.
    memo.executor.shutdown(wait=False, cancel_futures=True)
    memo.controller.gateways.close()


@kopf.on.probe(id="gateways")
async def gateways_probe(memo: kopf.Memo, **_: Any) -> int:
    """Liveness reports the operator's own health only, never pachd's. Async, so it runs on
    the event loop and never queues behind passes that wait on a slow pachd in the pool."""
    return len(memo.controller.gateways) if hasattr(memo, "controller") else 0


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def apply(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Make pachd hold both pipelines as the resource declares them. Each pass writes the
    status itself, under the resource's lock (kopf's handler patch carries none of it)."""
    resource = Resource.of(body)
    # The pass first shows a spec change under way (Ready=Unknown, Reconciling), then its result.
    result = await _pass(memo, memo.executor, resource, "change")
    # pachd takes seconds (tens of seconds for many at once) to move new pipelines from
    # STARTING to RUNNING; keep looking, through the shared listing, so Ready follows within
    # a poll instead of at the next drift check. The waits hold no thread: many resources
    # starting at once never starve the pool that creates the next ones.
    deadline = time.monotonic() + STARTING_WAIT_S
    while result is not None and result.starting and time.monotonic() < deadline:
        await asyncio.sleep(STARTING_POLL_S)
        listed_since = time.monotonic() - STARTING_POLL_S
        result = await _pass(memo, memo.poll_executor, resource, "poll", listed_since)
    # An unreachable pachd or a rejected spec is in the status now, and the drift sweep
    # retries it (one listing per pachd per sweep, however many resources wait on it), so
    # the handler ends here: no per-resource retry loop, no Event at every attempt.


@kopf.on.event(*RESOURCE)
async def index(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Feed the sweep's index a compact copy of each live resource. No daemon or timer here:
    kopf would keep every resource's whole body (and a task) for it."""
    sweeper: Sweeper = memo.sweeper
    if not sweeper.started:
        # kopf.event posts only from an object's handling context (its event queue is in
        # there, not in the startup handler's): the sweep's passes run in a copy of this one.
        sweeper.start(contextvars.copy_context())
    meta = body.get("metadata", {})
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        sweeper.forget(str(meta.get("uid")))  # the delete handler owns it now
        memo.spec_watch.forget(str(meta.get("uid")))
    else:
        sweeper.track(Resource.of(body))


async def _pass(
    memo: kopf.Memo,
    executor: concurrent.futures.Executor,
    resource: Resource,
    trigger: Trigger,
    listed_since: float = 0.0,
) -> PassResult | None:
    controller: Controller = memo.controller
    result = await _in_pool(executor, controller.reconcile, resource, trigger, listed_since)
    if result is not None:
        _post(resource, result.events)
        memo.spec_watch.follow(resource.uid, result.endpoint, result.heads)
        if result.repairs and result.endpoint is not None:
            memo.vigil.drift_seen(result.endpoint, time.monotonic())
    return result


def _list_pachd(memo: kopf.Memo, endpoint: Endpoint) -> None:
    """One listing of a pachd under vigil; what it shows changed wakes its resources."""
    with contextlib.suppress(PachdError):  # the passes report pachd's errors
        memo.controller.gateways.get(endpoint).snapshot(not_before=time.monotonic())


def _post(resource: Resource, events: list[Event]) -> None:
    obj: kopf.RawBody = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SpoutPipeline",
        "metadata": {"name": resource.name, "namespace": resource.namespace, "uid": resource.uid},
    }
    for event in events:
        kopf.event(kopf.Body(obj), type=event.type, reason=event.reason, message=event.message)


async def _in_pool(executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking `fn` (pachd or API calls) in a thread pool, in a copy of this context
    as kopf does for sync handlers."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


@kopf.on.delete(*RESOURCE)
async def delete(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Delete both pipelines (processor first) unless the policy orphans them."""
    deletion = await _in_pool(memo.executor, memo.controller.delete, Resource.of(body))
    if not deletion.done:  # its status, saying why, is written already
        raise kopf.TemporaryError(deletion.message, delay=memo.settings.retry_delay_s)
    logger.info(deletion.message)


# --- Connections (PachdConnection, ClusterPachdConnection; issue 12) -------------------------
# No kopf daemon or timer per connection: kopf puts a finalizer on objects that have one, and
# a connection must never hold up its namespace's deletion (nor outlive an uninstalled
# operator). An event handler keeps an index without a finalizer; one loop checks them all.

CONNECTION_KINDS = {
    connections.NAMESPACED_PLURAL: "PachdConnection",
    connections.CLUSTER_PLURAL: "ClusterPachdConnection",
}


def _gateway_idle_s(settings: Settings) -> float:
    """A gateway unused for this long is closed: longer than any regular user's interval."""
    return 3 * max(settings.drift_interval_s, settings.connection_check_interval_s) + settings.pachd_timeout_s


@kopf.on.event(GROUP, VERSION, connections.NAMESPACED_PLURAL)
@kopf.on.event(GROUP, VERSION, connections.CLUSTER_PLURAL)
async def connection_changed(
    event: kopf.RawEvent, body: kopf.Body, resource: kopf.Resource, memo: kopf.Memo, **_: Any
) -> None:
    """Index connections for the periodic check; check a new or changed one at once."""
    index: dict[tuple[str, str, str], dict[str, Any]] = memo.connections
    meta = body.get("metadata", {})
    key = (resource.plural, str(meta.get("namespace") or ""), str(meta.get("name")))
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        index.pop(key, None)
        return
    index[key] = dict(body)
    if (body.get("status") or {}).get("observedGeneration") != meta.get("generation"):
        await _in_pool(memo.executor, _check_connection, memo, key, dict(body))


@kopf.on.startup()
async def start_connection_checks(memo: kopf.Memo, **_: Any) -> None:
    memo.connection_checks = asyncio.get_running_loop().create_task(_check_connections_forever(memo))


@kopf.on.cleanup()
async def stop_connection_checks(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("connection_checks")
    if task is not None:
        task.cancel()


async def _check_connections_forever(memo: kopf.Memo) -> None:
    """Every interval, each known connection's Ready: reachable, version, token accepted."""
    while True:
        # `configure` may still be retrying (e.g. its metrics port is taken): wait for it.
        settings = memo.get("settings")
        await asyncio.sleep(settings.connection_check_interval_s if settings else 1.0)
        if "controller" not in memo:
            continue
        index: dict[tuple[str, str, str], dict[str, Any]] = memo.connections
        checks = [
            _in_pool(memo.executor, _check_connection, memo, key, body) for key, body in list(index.items())
        ]
        await asyncio.gather(*checks, return_exceptions=True)


def _check_connection(memo: kopf.Memo, key: tuple[str, str, str], body: dict[str, Any]) -> None:
    """One connection's check and status write (blocking: runs in the pool)."""
    plural, namespace, name = key
    controller: Controller = memo.controller
    status = connections.checked_status(
        CONNECTION_KINDS[plural], body, controller.resolver, controller.gateways, now()
    )
    if status is None or not memo.kube.merge_status(plural, namespace, name, status):
        return
    index = memo.connections
    if key in index:  # so the next check compares against what it wrote, not the old status
        index[key] = {**index[key], "status": {**(body.get("status") or {}), **status}}
