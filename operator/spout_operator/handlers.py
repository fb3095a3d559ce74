"""kopf handlers: thin glue between Kubernetes events and the reconcile pass.

Every blocking call (gRPC to pachd, the Kubernetes client) runs in a thread pool,
never on kopf's event loop, and every pachd call carries a deadline (see gateway.py).
The async handlers await those passes, so waiting (for pachd to start pipelines, for
the next sweep) holds no thread.
"""

from __future__ import annotations

import asyncio
import base64
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

from spout_operator import metrics
from spout_operator import render as rendering
from spout_operator.gateway import Endpoint, Gateway, PachdError, PachdRejected
from spout_operator.reconcile import Outcome, ensure, remove, unobserved
from spout_operator.settings import Settings, SettingsError
from spout_operator.spec import DeletionPolicy, SpecError, SpoutPipelineSpec, parse
from spout_operator.status import status_patch

GROUP, VERSION, PLURAL = rendering.GROUP, "v1alpha1", "spoutpipelines"
RESOURCE = (GROUP, VERSION, PLURAL)

WORKERS = 32  # threads for blocking pachd and API calls
API_CONNECTIONS = 10  # kopf's connections for requests to the API server (its default: no limit)
STARTING_WAIT_S = 60.0
STARTING_POLL_S = 0.5
SWEEP_WAKE_SLACK_S = 0.05  # a daemon's timer may fire a hair early; its listing still counts
Trigger = Literal["change", "poll", "drift"]
T = TypeVar("T")


def _starting(outcome: Outcome) -> bool:
    return outcome.error is None and any(
        p is not None and p.state == "STARTING" for p in outcome.observed.values()
    )


class Gateways:
    """One gateway (gRPC channel) per distinct pachd endpoint, shared by all resources."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._by_endpoint: dict[Endpoint, Gateway] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: Endpoint) -> Gateway:
        with self._lock:
            if endpoint not in self._by_endpoint:
                self._by_endpoint[endpoint] = Gateway(endpoint, self._timeout_s)
            return self._by_endpoint[endpoint]

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def close(self) -> None:
        with self._lock:
            for gateway in self._by_endpoint.values():
                gateway.close()
            self._by_endpoint.clear()


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
    memo.gateways = Gateways(memo.settings.pachd_timeout_s)
    memo.ready = {}  # resource uid -> Ready, for the resources gauge
    memo.locks = {}  # resource uid -> the lock that keeps its passes one at a time
    memo.changed_at = {}  # (uid, generation) -> monotonic time the change was first handled
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


def _endpoint(spec: SpoutPipelineSpec, namespace: str, memo: kopf.Memo) -> Endpoint:
    settings: Settings = memo.settings
    token = settings.pachd_auth_token or None
    ref = spec.pachd.auth_token_secret
    if ref is not None:
        secret = memo.core_api.read_namespaced_secret(ref.name, namespace)
        encoded = (secret.data or {}).get(ref.key)
        if encoded is None:
            raise SpecError(f"Secret {ref.name} has no key {ref.key!r} for the pachd auth token")
        token = base64.b64decode(encoded).decode().strip()
    return Endpoint(spec.pachd.address or settings.pachd_address, spec.pachd.tls, token)


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
        gateway = memo.gateways.get(_endpoint(spec, namespace, memo))
    except (SpecError, PachdError, kubernetes.client.ApiException) as err:
        message = str(getattr(err, "reason", None) or err)
        new_status = status_patch(None, True, generation, status, _now(), spec_error=message)
        patch.status.update(new_status)
        if trigger == "change" or _news(status, new_status):
            kopf.warn(body, reason="InvalidSpec", message=message)
        metrics.RECONCILES.labels(trigger, "InvalidSpec").inc()
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
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Delete both pipelines (processor first) unless the policy orphans them."""
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
    owner = rendering.owner_id(namespace, name)
    try:
        gateway = memo.gateways.get(_endpoint(spec, namespace, memo))
    except PachdRejected as err:  # an address no pachd can have: nothing was ever created there
        logger.info(f"Nothing to delete: {err}")
        return
    except (SpecError, kubernetes.client.ApiException) as err:  # e.g. the token Secret is gone
        message = str(getattr(err, "reason", None) or err)
        raise kopf.TemporaryError(
            f"cannot reach pachd to delete pipelines: {message}", delay=memo.settings.retry_delay_s
        ) from None
    removal = remove(rendering.render(spec, owner), owner, gateway)
    if removal.error is not None or removal.remaining:
        message = (
            f"waiting to delete pipelines {', '.join(removal.remaining)}: {removal.error or 'still present'}"
        )
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
    for foreign in removal.foreign:
        logger.warning(f"Pipeline {foreign} belongs to another owner; left in pachd")
