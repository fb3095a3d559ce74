"""kopf handlers: thin glue between Kubernetes events and the reconcile pass.

Handlers are plain (sync) functions, so kopf runs them in its thread pool and the
blocking gRPC calls to pachd never stall the event loop; every call also carries
a deadline (see gateway.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import datetime
import functools
import logging
import threading
import time
from typing import Any, Literal

import kopf
import kubernetes

from spout_operator import metrics
from spout_operator import render as rendering
from spout_operator.gateway import Endpoint, Gateway, PachdError, PachdRejected, PachdUnavailable
from spout_operator.reconcile import Outcome, ensure, remove
from spout_operator.settings import Settings
from spout_operator.spec import DeletionPolicy, SpecError, SpoutPipelineSpec, parse
from spout_operator.status import status_patch

GROUP, VERSION, PLURAL = rendering.GROUP, "v1alpha1", "spoutpipelines"
RESOURCE = (GROUP, VERSION, PLURAL)

# Read at import so the timer interval below is the configured one; a bad value stops
# the operator at start-up with a message naming the variable.
SETTINGS = Settings.from_env()
STARTING_WAIT_S = 60.0
STARTING_POLL_S = 0.5
Trigger = Literal["change", "poll", "drift"]


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
    """Pin kopf's bookkeeping to our own prefix and share the gateways through memo."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.execution.max_workers = 32
    memo.executor = settings.execution.executor  # for the async handler's blocking passes
    memo.gateways = Gateways(SETTINGS.pachd_timeout_s)
    memo.ready = {}  # resource uid -> Ready, for the resources gauge
    memo.changed_at = {}  # (uid, generation) -> monotonic time the change was first handled
    metrics.serve(SETTINGS.metrics_port)
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
    memo.gateways.close()


@kopf.on.probe(id="gateways")
def gateways_probe(memo: kopf.Memo, **_: Any) -> int:
    """Liveness reports the operator's own health only, never pachd's."""
    return len(memo.gateways) if hasattr(memo, "gateways") else 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _endpoint(spec: SpoutPipelineSpec, namespace: str) -> Endpoint:
    token = SETTINGS.pachd_auth_token or None
    ref = spec.pachd.auth_token_secret
    if ref is not None:
        secret = kubernetes.client.CoreV1Api().read_namespaced_secret(ref.name, namespace)
        encoded = (secret.data or {}).get(ref.key)
        if encoded is None:
            raise SpecError(f"Secret {ref.name} has no key {ref.key!r} for the pachd auth token")
        token = base64.b64decode(encoded).decode().strip()
    return Endpoint(spec.pachd.address or SETTINGS.pachd_address, spec.pachd.tls, token)


def _reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    trigger: Trigger,
) -> Outcome | None:
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta.get("uid"))
    generation = int(meta.get("generation") or 0)
    drift_check = trigger == "drift"
    if trigger == "change":
        memo.changed_at.setdefault((uid, generation), time.monotonic())
    try:
        spec = parse(body.get("spec", {}), name)
        gateway = memo.gateways.get(_endpoint(spec, namespace))
    except (SpecError, PachdError, kubernetes.client.ApiException) as err:
        message = str(getattr(err, "reason", None) or err)
        patch.status.update(status_patch(None, True, generation, status, _now(), spec_error=message))
        kopf.warn(body, reason="InvalidSpec", message=message)
        metrics.RECONCILES.labels(trigger, "InvalidSpec").inc()
        _record_ready(memo, uid, generation, ready=False)
        return None
    owner = rendering.owner_id(namespace, name)
    snapshot = None
    if trigger != "change":  # polls and drift checks share one listing per pachd
        max_age_s = STARTING_POLL_S if trigger == "poll" else SETTINGS.drift_interval_s / 2
        try:
            snapshot = gateway.snapshot(max_age_s=max_age_s)
        except PachdError:
            snapshot = None  # ensure() inspects and reports the error the usual way
    outcome = ensure(rendering.render(spec, owner), spec.running, owner, gateway, snapshot)
    repairs = len(outcome.applied) if drift_check else 0
    new_status = status_patch(outcome, spec.running, generation, status, _now(), drift_repairs=repairs)
    patch.status.update(new_status)
    for pipeline, step in outcome.applied:
        reason = "DriftRepaired" if drift_check else "Pipeline" + step.value.capitalize()
        kopf.info(body, reason=reason, message=f"{step.value} pipeline {pipeline}")
    metrics.DRIFT_REPAIRS.inc(repairs)
    for plan in outcome.plans:
        if plan.foreign:
            kopf.warn(
                body,
                reason="ForeignPipeline",
                message=f"pipeline {plan.name} exists and belongs to {plan.foreign_owner}; left untouched",
            )
    if outcome.error is not None:
        kopf.warn(body, reason=type(outcome.error).__name__, message=str(outcome.error))
    metrics.RECONCILES.labels(trigger, new_status["summary"]).inc()
    _record_ready(memo, uid, generation, ready=new_status["summary"] == "Ready")
    return outcome


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
    loop = asyncio.get_running_loop()

    async def reconcile(trigger: Trigger) -> Outcome | None:
        # Each pass blocks on pachd, so it runs in kopf's thread pool, in a copy of this
        # context as sync handlers do (kopf.info() finds its settings there).
        context = contextvars.copy_context()
        call = functools.partial(context.run, _reconcile, body, meta, status, patch, memo, trigger)
        return await loop.run_in_executor(memo.executor, call)

    outcome = await reconcile("change")
    if outcome is not None and _starting(outcome):
        # kopf writes `patch` only when the handler returns: show the change in progress now,
        # so no one reads the previous generation's Ready=True while pachd starts this one.
        await loop.run_in_executor(memo.executor, _publish_status, meta, patch)
    # pachd takes seconds (tens of seconds for many at once) to move new pipelines from
    # STARTING to RUNNING; keep looking, through the shared listing, so Ready follows within
    # a poll instead of at the next drift check. The waits hold no thread: many resources
    # starting at once never starve the pool that creates the next ones.
    deadline = time.monotonic() + STARTING_WAIT_S
    while outcome is not None and _starting(outcome) and time.monotonic() < deadline:
        await asyncio.sleep(STARTING_POLL_S)
        outcome = await reconcile("poll")
    if outcome is not None and isinstance(outcome.error, PachdUnavailable):
        raise kopf.TemporaryError(str(outcome.error), delay=SETTINGS.retry_delay_s)
    # A rejected spec is reported in status and retried only by the drift check's slow
    # cadence (e.g. once another pipeline frees a community-edition slot), never hot.


def _publish_status(meta: kopf.Meta, patch: kopf.Patch) -> None:
    try:
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
            GROUP, VERSION, str(meta["namespace"]), PLURAL, str(meta["name"]), {"status": dict(patch.status)}
        )
    except kubernetes.client.ApiException as err:  # the handler's own patch follows anyway
        logging.getLogger(__name__).warning(f"early status write failed: {err.reason}")


@kopf.timer(*RESOURCE, interval=SETTINGS.drift_interval_s, initial_delay=SETTINGS.drift_interval_s)
def check_drift(
    body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Restore pipelines changed, stopped or deleted behind the operator's back."""
    if meta.get("deletionTimestamp"):
        return
    if status.get("observedGeneration") != meta.get("generation"):
        return  # a spec change is pending: the update handler owns it
    _reconcile(body, meta, status, patch, memo, "drift")


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
        gateway = memo.gateways.get(_endpoint(spec, namespace))
    except PachdRejected as err:  # an address no pachd can have: nothing was ever created there
        logger.info(f"Nothing to delete: {err}")
        return
    except (SpecError, kubernetes.client.ApiException) as err:  # e.g. the token Secret is gone
        message = str(getattr(err, "reason", None) or err)
        raise kopf.TemporaryError(
            f"cannot reach pachd to delete pipelines: {message}", delay=SETTINGS.retry_delay_s
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
        raise kopf.TemporaryError(message, delay=SETTINGS.retry_delay_s)
    for foreign in removal.foreign:
        logger.warning(f"Pipeline {foreign} belongs to another owner; left in pachd")
