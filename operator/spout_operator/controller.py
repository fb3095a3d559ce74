"""The controller: one pass over one resource returns its new status and its Events.

resource -> typed spec -> desired pipelines -> plan against pachd -> pachd calls ->
status. The pass is synchronous (it runs in a worker thread) and posts nothing itself:
the kopf handlers write what it returns, so the pass can be tested without kopf.
"""

from __future__ import annotations

import copy
import datetime
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes

from spout_operator import metrics
from spout_operator import render as rendering
from spout_operator.events import REPAIRS, Event, Trigger, for_invalid_spec, for_pass
from spout_operator.gateway import Endpoint, Gateway, Gateways, PachdError, PachdRejected
from spout_operator.kube import Kube
from spout_operator.plan import Step
from spout_operator.reconcile import Outcome, Removal, ensure, remove, unobserved
from spout_operator.settings import Settings
from spout_operator.spec import DeletionPolicy, SpecError, SpoutPipelineSpec, parse
from spout_operator.status import deleting_status, status_patch


@dataclass(frozen=True)
class Resource:
    """A SpoutPipeline as one pass sees it. A copy: kopf updates the body it hands to
    handlers and daemons while a pass may still run, and one pass must judge by one spec."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    deleting: bool = False

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Resource:
        meta = body.get("metadata", {})
        return cls(
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            uid=str(meta.get("uid")),
            generation=int(meta.get("generation") or 0),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=copy.deepcopy(dict(body.get("status") or {})),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def owner(self) -> str:
        return rendering.owner_id(self.namespace, self.name)


@dataclass(frozen=True)
class PassResult:
    status: dict[str, Any]
    events: list[Event]
    outcome: Outcome | None

    @property
    def starting(self) -> bool:
        """pachd is still starting a pipeline of this pass: worth polling for RUNNING."""
        outcome = self.outcome
        return (
            outcome is not None
            and outcome.error is None
            and any(p is not None and p.state == "STARTING" for p in outcome.observed.values())
        )


@dataclass(frozen=True)
class Deletion:
    done: bool
    message: str
    status: dict[str, Any] | None = None  # what to show while deletion waits


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    """Shared by every handler and daemon; one pass per resource at a time."""

    def __init__(self, settings: Settings, gateways: Gateways, kube: Kube) -> None:
        self.settings = settings
        self.gateways = gateways
        self.kube = kube
        self.readiness = metrics.Readiness()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(uid, threading.Lock())

    def pipelines_of(self, body: Mapping[str, Any]) -> set[tuple[str, str]]:
        """(project, name) of the pipelines a resource declares; empty if its spec is invalid."""
        resource = Resource.of(body)
        try:
            pair = rendering.render(parse(resource.spec, resource.name), resource.owner)
        except SpecError:
            return set()
        return {(s["pipeline"]["project"]["name"], s["pipeline"]["name"]) for s in pair.in_creation_order()}

    def reconcile(self, resource: Resource, trigger: Trigger, listed_since: float = 0.0) -> PassResult | None:
        # Handlers and the drift daemon run concurrently: one pass per resource at a time, so a
        # drift pass that read the old spec can never undo the update handler's new one.
        with self._lock(resource.uid):
            if trigger in REPAIRS and (
                resource.deleting or resource.status.get("observedGeneration") != resource.generation
            ):
                return None  # being deleted, or a spec change is pending: the handlers own those
            return self._pass(resource, trigger, listed_since)

    def _pass(self, resource: Resource, trigger: Trigger, listed_since: float) -> PassResult:
        if trigger == "change":
            self.readiness.changed(resource.uid, resource.generation)
        try:
            spec = parse(resource.spec, resource.name)
            gateway = self.gateways.get(self.endpoint(spec, resource.namespace))
        except (SpecError, PachdError, kubernetes.client.ApiException) as err:
            message = str(getattr(err, "reason", None) or err)
            status = status_patch(None, True, resource.generation, resource.status, now(), spec_error=message)
            metrics.RECONCILES.labels(trigger, "InvalidSpec").inc()
            self.readiness.record(resource.uid, resource.generation, ready=False)
            return PassResult(status, for_invalid_spec(trigger, resource.status, status), None)
        outcome = self._ensure(spec, resource.owner, gateway, trigger, listed_since)
        repairs = 0
        if trigger in REPAIRS:  # a pause around a spout update is no repair of its own
            paused = {(name, step) for name in outcome.paused for step in (Step.STOP, Step.START)}
            repairs = len([a for a in outcome.applied if a not in paused])
        status = status_patch(
            outcome, spec.running, resource.generation, resource.status, now(), drift_repairs=repairs
        )
        metrics.DRIFT_REPAIRS.inc(repairs)
        metrics.RECONCILES.labels(trigger, status["summary"]).inc()
        self.readiness.record(resource.uid, resource.generation, ready=status["summary"] == "Ready")
        return PassResult(status, for_pass(trigger, outcome, resource.status, status), outcome)

    def _ensure(
        self, spec: SpoutPipelineSpec, owner: str, gateway: Gateway, trigger: Trigger, listed_since: float
    ) -> Outcome:
        pair = rendering.render(spec, owner)
        if trigger in ("change", "event"):  # one resource's own look at pachd, now
            return ensure(pair, spec.running, owner, gateway)
        try:  # polls and sweeps share one listing per pachd (per poll, per sweep)
            snapshot = gateway.snapshot(not_before=listed_since)
        except PachdError as err:  # the sweep's one failed listing answers for every resource
            return unobserved(pair, err)
        return ensure(pair, spec.running, owner, gateway, snapshot)

    def endpoint(self, spec: SpoutPipelineSpec, namespace: str) -> Endpoint:
        token = self.settings.pachd_auth_token or None
        ref = spec.pachd.auth_token_secret
        if ref is not None:
            token = self.kube.secret_value(namespace, ref.name, ref.key)
            if token is None:
                raise SpecError(f"Secret {ref.name} has no key {ref.key!r} for the pachd auth token")
        return Endpoint(spec.pachd.address or self.settings.pachd_address, spec.pachd.tls, token)

    def delete(self, resource: Resource) -> Deletion:
        """Delete both pipelines (processor first) unless the policy orphans them. Holds the
        resource's lock, so no pass of it runs meanwhile and none can re-create a pipeline."""
        with self._lock(resource.uid):
            deletion = self._delete(resource)
        if deletion.done:
            self.forget(resource.uid)
        return deletion

    def _delete(self, resource: Resource) -> Deletion:
        try:
            spec = parse(resource.spec, resource.name)
        except SpecError:
            return Deletion(True, "Spec is invalid, so no pipeline was ever created; nothing to delete")
        if spec.deletion_policy is DeletionPolicy.ORPHAN:
            return Deletion(True, "Deletion policy is Orphan: pipelines stay in pachd")
        try:
            gateway = self.gateways.get(self.endpoint(spec, resource.namespace))
        except PachdRejected as err:  # an address no pachd can have: nothing was ever created there
            return Deletion(True, f"Nothing to delete: {err}")
        except (SpecError, kubernetes.client.ApiException) as err:  # e.g. the token Secret is gone
            message = f"cannot reach pachd to delete pipelines: {getattr(err, 'reason', None) or err}"
            return Deletion(False, message)
        removal = remove(rendering.render(spec, resource.owner), resource.owner, gateway)
        if removal.error is None and not removal.remaining:
            return Deletion(True, _foreign_note(removal))
        message = (
            f"waiting to delete pipelines {', '.join(removal.remaining)}: {removal.error or 'still present'}"
        )
        return Deletion(False, message, deleting_status(message, resource.generation, resource.status, now()))

    def forget(self, uid: str) -> None:
        """Release a deleted resource's bookkeeping."""
        with self._locks_lock:
            self._locks.pop(uid, None)
        self.readiness.forget(uid)


def _foreign_note(removal: Removal) -> str:
    if removal.foreign:
        return f"Pipelines {', '.join(removal.foreign)} belong to another owner; left in pachd"
    return "Pipelines deleted"
