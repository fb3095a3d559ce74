"""kopf handlers: thin glue between Kubernetes events and the reconcile pass.

Every blocking call (gRPC to pachd, the Kubernetes client) runs in a thread pool,
never on kopf's event loop, and every pachd call carries a deadline (see gateway.py).
The async handlers await those passes, so waiting (for pachd to start pipelines, for
the next sweep) holds no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import aiohttp
import kopf
import kubernetes

from spout_operator import connections, metrics
from spout_operator import render as rendering
from spout_operator.connections import ConnectionProblem
from spout_operator.gateway import Endpoint, PachdError, PachdRejected, PachdUnavailable
from spout_operator.reconcile import Outcome, ensure, remove, unobserved
from spout_operator.settings import Settings, SettingsError
from spout_operator.spec import ConnectionRef, DeletionPolicy, SpecError, parse
from spout_operator.status import status_patch

GROUP, VERSION, PLURAL = rendering.GROUP, "v1alpha1", "spoutpipelines"
RESOURCE = (GROUP, VERSION, PLURAL)

WORKERS = 32  # threads for blocking pachd and API calls
API_CONNECTIONS = 10  # kopf's connections for requests to the API server (its default: no limit)
STARTING_WAIT_S = 60.0
STARTING_POLL_S = 0.5
# How long a deletion in a namespace being deleted waits for a pachd that does not answer.
NAMESPACE_GONE_GRACE_S = 60.0
SWEEP_WAKE_SLACK_S = 0.05  # a daemon's timer may fire a hair early; its listing still counts
Trigger = Literal["change", "poll", "drift"]
T = TypeVar("T")


def _starting(outcome: Outcome) -> bool:
    return outcome.error is None and any(
        p is not None and p.state == "STARTING" for p in outcome.observed.values()
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
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
    memo.gateways = connections.GatewayPool(memo.settings.pachd_timeout_s, _gateway_idle_s(memo.settings))
    memo.ready = {}  # resource uid -> Ready, for the resources gauge
    memo.locks = {}  # resource uid -> the lock that keeps its passes one at a time
    memo.changed_at = {}  # (uid, generation) -> monotonic time the change was first handled
    # Connections by (plural, namespace, name), for their periodic check. Made here: each
    # object's handlers get a shallow copy of memo, so only objects created now are shared.
    memo.connections = {}
    metrics.serve(memo.settings.metrics_port)
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    # One API client for every thread (each new one builds its own TLS context and pool).
    config = kubernetes.client.Configuration.get_default_copy()
    config.connection_pool_maxsize = WORKERS
    api = kubernetes.client.ApiClient(config)
    memo.core_api = kubernetes.client.CoreV1Api(api)
    memo.custom_api = kubernetes.client.CustomObjectsApi(api)
    memo.resolver = connections.Resolver(memo.core_api, memo.custom_api, memo.settings.operator_namespace)


@kopf.on.login()
async def login(
    logger: kopf.Logger, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any
) -> kopf.AiohttpSession | None:
    """kopf's own login, on an HTTP session with a bounded number of connections.

    kopf's default session opens a TLS connection for every request in flight (about 80
    when 500 resources arrive at once), and what they allocate stays in the process:
    RSS 171 MB at 500 resources, 152 MB with 10 connections for requests. Each watch
    stream holds a connection for as long as it runs, so those come on top.
    """
    info = kopf.login_via_client(logger=logger, settings=settings)
    if info is None:
        return None
    watches = max(1, len(memo.settings.namespaces)) + 2  # SpoutPipelines (per namespace), CRDs, namespaces
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=API_CONNECTIONS + watches, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
    memo.poll_executor.shutdown(wait=False, cancel_futures=True)
    memo.gateways.close()


@kopf.on.probe(id="gateways")
def gateways_probe(memo: kopf.Memo, **_: Any) -> int:
    """Liveness reports the operator's own health only, never pachd's."""
    return len(memo.gateways) if hasattr(memo, "gateways") else 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _endpoint(
    ref: ConnectionRef, namespace: str, memo: kopf.Memo, not_before: float = float("inf")
) -> Endpoint:
    """Where the resource's pipelines live, through its admin-owned connection only."""
    resolver: connections.Resolver = memo.resolver
    return resolver.endpoint(ref, namespace, not_before)


def _reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    trigger: Trigger,
    listed_since: float = 0.0,
) -> Outcome | None:
    uid = str(meta.get("uid"))
    # Handlers and the drift daemon run concurrently: one pass per resource at a time, so a
    # drift pass that read the old spec can never undo the update handler's new one.
    with memo.locks.setdefault(uid, threading.Lock()):
        if trigger == "drift" and (
            meta.get("deletionTimestamp") or status.get("observedGeneration") != meta.get("generation")
        ):
            return None  # being deleted, or a spec change is pending: the handlers own those
        return _reconcile_locked(body, meta, status, patch, memo, trigger, listed_since)


def _reconcile_locked(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    trigger: Trigger,
    listed_since: float,
) -> Outcome | None:
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta.get("uid"))
    generation = int(meta.get("generation") or 0)
    drift_check = trigger == "drift"
    if trigger == "change":
        memo.changed_at.setdefault((uid, generation), time.monotonic())
    try:
        spec = parse(body.get("spec", {}), name)
        # A change reads the connection and its Secret afresh; a sweep's passes share reads.
        endpoint = _endpoint(
            spec.connection, namespace, memo, listed_since if listed_since else time.monotonic()
        )
        gateway = memo.gateways.get(endpoint)
    except (SpecError, PachdError, ConnectionProblem) as err:
        message = str(err)
        # (a PachdError here: the connection's address cannot be dialled, e.g. port 99999)
        reason = (
            err.condition_reason
            if isinstance(err, ConnectionProblem)
            else "ConnectionInvalid"
            if isinstance(err, PachdError)
            else "InvalidSpec"
        )
        new_status = status_patch(
            None, True, generation, status, _now(), spec_error=message, error_reason=reason
        )
        patch.status.update(new_status)
        if trigger == "change" or _news(status, new_status):
            kopf.warn(body, reason=reason, message=message)
        metrics.RECONCILES.labels(trigger, reason).inc()
        _record_ready(memo, uid, generation, ready=False)
        return None
    owner = rendering.owner_id(namespace, name)
    pair = rendering.render(spec, owner)
    if trigger == "change":
        outcome = ensure(pair, spec.running, owner, gateway)
    else:  # polls and drift checks share one listing per pachd (per poll, per sweep)
        try:
            snapshot = gateway.snapshot(not_before=listed_since)
        except PachdError as err:  # the sweep's one failed listing answers for every resource
            outcome = unobserved(pair, err)
        else:
            outcome = ensure(pair, spec.running, owner, gateway, snapshot)
    repairs = len(outcome.applied) if drift_check else 0
    new_status = status_patch(outcome, spec.running, generation, status, _now(), drift_repairs=repairs)
    if not status.get("managed") and connections.wrote_to_pachd(outcome):
        # Deletion reads this: a resource that never got this far is deleted without pachd.
        new_status["managed"] = connections.managed_entry(spec.connection, endpoint.address)
    patch.status.update(new_status)
    for pipeline, step in outcome.applied:
        reason = "DriftRepaired" if drift_check else "Pipeline" + step.value.capitalize()
        kopf.event(body, type="Normal", reason=reason, message=f"{step.value} pipeline {pipeline}")
    metrics.DRIFT_REPAIRS.inc(repairs)
    # Warnings go out when something changed, not at every sweep: 500 resources on a pachd
    # that is down would otherwise post 50 Events a second, to the API server and to memory.
    warn = trigger == "change" or _news(status, new_status)
    for plan in outcome.plans:
        if plan.foreign and warn:
            kopf.warn(
                body,
                reason="ForeignPipeline",
                message=f"pipeline {plan.name} exists and belongs to {plan.foreign_owner}; left untouched",
            )
    if outcome.error is not None and warn:
        kopf.warn(body, reason=type(outcome.error).__name__, message=str(outcome.error))
    metrics.RECONCILES.labels(trigger, new_status["summary"]).inc()
    _record_ready(memo, uid, generation, ready=new_status["summary"] == "Ready")
    return outcome


def _news(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether any condition's status, reason or message differs from the previous status."""

    def essence(status: Mapping[str, Any]) -> set[tuple[Any, ...]]:
        return {
            (c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
            for c in status.get("conditions") or []
        }

    return essence(previous) != essence(new)


def _record_ready(memo: kopf.Memo, uid: str, generation: int, ready: bool) -> None:
    memo.ready[uid] = ready
    started = memo.changed_at.get((uid, generation))
    if ready and started is not None:
        metrics.CONVERGENCE.observe(time.monotonic() - started)
        for key in [k for k in memo.changed_at if k[0] == uid]:
            del memo.changed_at[key]
    ready_count = sum(memo.ready.values())
    metrics.READY.labels("True").set(ready_count)
    metrics.READY.labels("False").set(len(memo.ready) - ready_count)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def apply(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Make pachd hold both pipelines as the resource declares them."""
    outcome = await _in_pool(memo.executor, _reconcile, body, meta, status, patch, memo, "change")
    if outcome is not None and _starting(outcome):
        # kopf writes `patch` only when the handler returns: show the change in progress now,
        # so no one reads the previous generation's Ready=True while pachd starts this one.
        await _in_pool(memo.executor, _write_status, memo, meta, dict(patch.status))
    # pachd takes seconds (tens of seconds for many at once) to move new pipelines from
    # STARTING to RUNNING; keep looking, through the shared listing, so Ready follows within
    # a poll instead of at the next drift check. The waits hold no thread: many resources
    # starting at once never starve the pool that creates the next ones.
    deadline = time.monotonic() + STARTING_WAIT_S
    while outcome is not None and _starting(outcome) and time.monotonic() < deadline:
        await asyncio.sleep(STARTING_POLL_S)
        listed_since = time.monotonic() - STARTING_POLL_S
        outcome = await _in_pool(
            memo.poll_executor, _reconcile, body, meta, status, patch, memo, "poll", listed_since
        )
    # An unreachable pachd or a rejected spec is in the status now, and the drift sweep
    # retries it (one listing per pachd per sweep, however many resources wait on it), so
    # the handler ends here: no per-resource retry loop, no Event at every attempt.


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def watch_for_drift(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Every sweep, restore pipelines changed, stopped or deleted behind the operator's back.

    All resources wake at the same instants (multiples of the interval), so each pachd is
    listed once per sweep and every resource is compared against that one listing: a
    repair follows a change within one interval, and a quiet sweep writes nothing anywhere.
    """
    while not stopped:
        now = time.monotonic()
        sweep_at = now + until_next_sweep(now, memo.settings.drift_interval_s)
        await stopped.wait(sweep_at - now)
        if stopped:
            return
        # Judge by a listing taken at this sweep, never one left over from a late pass of
        # the previous sweep (that would hide a change made in between for a whole interval).
        listed_since = sweep_at - SWEEP_WAKE_SLACK_S
        new_status = await _in_pool(memo.executor, _drift_pass, body, meta, status, memo, listed_since)
        if any(status.get(k) != v for k, v in new_status.items()):
            await _in_pool(memo.executor, _write_status, memo, meta, new_status)


def until_next_sweep(now: float, interval_s: float) -> float:
    """Seconds from `now` to the next multiple of the interval: the shared sweep grid."""
    return interval_s - now % interval_s


def _drift_pass(
    body: kopf.Body, meta: kopf.Meta, status: kopf.Status, memo: kopf.Memo, listed_since: float
) -> dict[str, Any]:
    patch = kopf.Patch()
    _reconcile(body, meta, status, patch, memo, "drift", listed_since)
    return dict(patch.status)


async def _in_pool(executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking `fn` (pachd or API calls) in a thread pool, in a copy of this context
    as kopf does for sync handlers (kopf.event() finds its settings there)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def _write_status(memo: kopf.Memo, meta: kopf.Meta, status: dict[str, Any]) -> None:
    """Merge-patch .status directly, outside kopf's once-per-handler patch."""
    try:
        memo.custom_api.patch_namespaced_custom_object_status(
            GROUP, VERSION, str(meta["namespace"]), PLURAL, str(meta["name"]), {"status": status}
        )
    except kubernetes.client.ApiException as err:  # the next pass or handler writes it again
        logging.getLogger(__name__).warning(f"status write for {meta.get('name')} failed: {err.reason}")


@kopf.on.delete(*RESOURCE)
def delete(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Delete both pipelines (processor first) unless the policy orphans them.

    Never wedges: a resource that never created anything (status.managed unset: invalid,
    not allowed, never reachable) goes at once, and one whose connection or pachd is gone
    goes within a bounded time when its namespace is being deleted (see
    connections.finish_without_pachd). Otherwise deletionPolicy: Orphan lets it go."""
    namespace, name = str(meta["namespace"]), str(meta["name"])
    memo.ready.pop(str(meta.get("uid")), None)
    memo.locks.pop(str(meta.get("uid")), None)
    try:
        spec = parse(body.get("spec", {}), name)
    except SpecError:
        logger.info("Spec is invalid, so no pipeline was ever created; nothing to delete")
        return
    if spec.deletion_policy is DeletionPolicy.ORPHAN:
        logger.info("Deletion policy is Orphan: pipelines stay in pachd")
        return
    recorded = connections.recorded_connection(status)
    ref = recorded or spec.connection  # where the pipelines were created, if anything was
    owner = rendering.owner_id(namespace, name)

    def may_finish(permanent: bool) -> bool:
        if recorded is None:
            return True  # nothing recorded: no need to ask whether the namespace is going
        deleted_at = meta.get("deletionTimestamp")
        waited_s = (
            (
                datetime.datetime.now(datetime.UTC) - datetime.datetime.fromisoformat(deleted_at)
            ).total_seconds()
            if deleted_at
            else 0.0
        )
        terminating = memo.resolver.namespace_terminating(namespace)
        return connections.finish_without_pachd(
            True, permanent, terminating, waited_s, NAMESPACE_GONE_GRACE_S
        )

    def wait(message: str) -> None:
        patch.status["summary"] = "Deleting"
        patch.status["conditions"] = [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Deleting",
                "message": message,
                "lastTransitionTime": _now(),
            }
        ]
        raise kopf.TemporaryError(message, delay=memo.settings.retry_delay_s)

    try:
        gateway = memo.gateways.get(_endpoint(ref, namespace, memo, time.monotonic()))
    except (ConnectionProblem, PachdRejected) as err:  # PachdRejected: an address no pachd can have
        permanent = not isinstance(err, ConnectionProblem) or err.permanent
        if may_finish(permanent):
            where = f"; pipelines may remain in pachd ({recorded})" if recorded else ""
            logger.warning(f"Deleted without reaching pachd: {err}{where}")
            return
        wait(
            f"cannot delete pipelines through {ref}: {err}. Restore it, or set "
            "spec.deletionPolicy: Orphan to leave the pipelines in pachd"
        )
    removal = remove(rendering.render(spec, owner), owner, gateway)
    if removal.error is not None or removal.remaining:
        unanswered = recorded is None or isinstance(removal.error, PachdUnavailable)
        if removal.error is not None and unanswered and may_finish(permanent=False):
            logger.warning(f"Deleted without reaching pachd: {removal.error}")
            return
        message = (
            f"waiting to delete pipelines {', '.join(removal.remaining)}: {removal.error or 'still present'}"
        )
        if recorded is not None:
            message += " (or set spec.deletionPolicy: Orphan to leave them)"
        wait(message)
    for foreign in removal.foreign:
        logger.warning(f"Pipeline {foreign} belongs to another owner; left in pachd")


# --- Connections (PachdConnection, ClusterPachdConnection) -----------------------------------
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
        await asyncio.sleep(memo.settings.connection_check_interval_s)
        index: dict[tuple[str, str, str], dict[str, Any]] = memo.connections
        checks = [
            _in_pool(memo.executor, _check_connection, memo, key, body) for key, body in list(index.items())
        ]
        await asyncio.gather(*checks, return_exceptions=True)


def _check_connection(memo: kopf.Memo, key: tuple[str, str, str], body: dict[str, Any]) -> None:
    """One connection's check and status write (blocking: runs in the pool). The status holds
    what pachd answered and names objects, never a token."""
    plural, namespace, name = key
    resolver: connections.Resolver = memo.resolver
    meta = body.get("metadata", {})
    try:
        spec = connections.parse_connection(CONNECTION_KINDS[plural], body, resolver.operator_namespace)
        endpoint = resolver.connection_endpoint(spec, time.monotonic())
        result = connections.check(spec, endpoint, memo.gateways.get(endpoint))
    except (ConnectionProblem, PachdError) as err:
        reason = err.condition_reason if isinstance(err, ConnectionProblem) else "ConnectionInvalid"
        result = connections.CheckResult(False, reason, str(err))
    previous = body.get("status") or {}
    new_status = connections.connection_status(result, int(meta.get("generation") or 0), previous, _now())
    if all(previous.get(k) == v for k, v in new_status.items()):
        return  # nothing new: a quiet check writes nothing
    try:
        if namespace:
            memo.custom_api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": new_status}
            )
        else:
            memo.custom_api.patch_cluster_custom_object_status(
                GROUP, VERSION, plural, name, {"status": new_status}
            )
    except kubernetes.client.ApiException as err:  # deleted meanwhile, or the API hiccuped: next check
        logging.getLogger(__name__).warning(f"status write for {plural}/{name} failed: {err.reason}")
        return
    index = memo.connections
    if key in index:  # so the next check compares against what it wrote, not the old status
        index[key] = {**index[key], "status": {**previous, **new_status}}
