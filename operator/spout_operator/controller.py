"""The controller: one pass over one resource returns its new status and its Events.

resource -> typed spec -> desired pipelines -> plan against pachd -> pachd calls ->
status. The pass is synchronous (it runs in a worker thread) and posts nothing itself:
the kopf handlers write what it returns, so the pass can be tested without kopf. Deletion
(deletion.py) runs under the same per-resource lock, so it never overlaps a pass.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spout_operator import dataflow, metrics, operating, ownership, policy, restarts
from spout_operator import render as rendering
from spout_operator.conditions import now
from spout_operator.connection_model import ConnectionProblem
from spout_operator.deletion import Deleter, Deletion
from spout_operator.events import Event, for_invalid_spec, for_pass, for_pause
from spout_operator.fencing import Fenced
from spout_operator.kube import Kube
from spout_operator.names import REPAIRS, PipelineKey, Trigger
from spout_operator.pachd_api import Endpoint, Pachd, PachdError, Pachds
from spout_operator.plan import Step
from spout_operator.reconcile import Outcome, ensure, unobserved
from spout_operator.resolver import Resolver
from spout_operator.resource import Resource
from spout_operator.settings import Settings
from spout_operator.spec import SpecError, SpoutPipelineSpec, parse
from spout_operator.status import applying, applying_status, status_patch
from spout_operator.workers import HealthSource, WorkerHealth


@dataclass(frozen=True)
class PassResult:
    status: dict[str, Any]
    events: list[Event]
    outcome: Outcome | None
    endpoint: Endpoint | None = None  # the pachd the pass looked at
    repairs: int = 0  # drift it undid (not a spec change)

    @property
    def heads(self) -> dict[PipelineKey, str]:
        """The spec commit of each pipeline the pass saw on pachd: where its updates follow."""
        if self.outcome is None:
            return {}
        return {
            (p.project, p.name): p.spec_commit
            for p in self.outcome.observed.values()
            if p is not None and p.spec_commit
        }

    @property
    def pair(self) -> tuple[PipelineKey, PipelineKey] | None:
        """(project, name) of the spout and the processor, where pachd showed either."""
        outcome = self.outcome
        if outcome is None:
            return None
        project = next((p.project for p in outcome.observed.values() if p is not None), None)
        if project is None:
            return None
        spout, processor = outcome.names
        return (project, spout), (project, processor)

    def ready(self, generation: int) -> bool:
        """Whether the pass left the resource Ready at `generation`."""
        return self.status.get("summary") == "Ready" and self.status.get("observedGeneration") == generation

    @property
    def starting(self) -> bool:
        """pachd is still starting a pipeline of this pass: worth polling for RUNNING."""
        outcome = self.outcome
        return (
            outcome is not None
            and outcome.error is None
            and any(p is not None and p.state == "STARTING" for p in outcome.observed.values())
        )


# How much older than the pachd change that woke it a pass's reads of its connection may be.
READ_REUSE_S = 5.0


def read_since(trigger: Trigger, woken: float) -> float:
    """How fresh a pass's connection reads must be (a time.monotonic() instant). A change
    reads the connection and its Secret afresh, a sweep's passes share the sweep's reads. A
    pass woken by pachd (an event) or polling it while the pipelines start reuses a read made
    up to READ_REUSE_S before it was woken: pachd changed, not the connection, and a burst of
    repairs on one pachd then costs the API server one read, not one per pass (a read took up
    to 0.7 s in such a burst)."""
    return woken - READ_REUSE_S if trigger in ("event", "poll") else woken


GONE_TTL_S = 600.0  # how long a deleted resource's uid is remembered: longer than any pass waits in the pool


class Controller:
    """Shared by every handler and the sweep. One lock per resource: a pass, the status write
    that ends it, and deletion never overlap, and the controller is the only writer of a
    resource's status (kopf's handler patch carries none of it)."""

    def __init__(
        self,
        settings: Settings,
        gateways: Pachds,
        kube: Kube,
        resolver: Resolver | None = None,
        leading: Callable[[], bool] | None = None,
        workers: HealthSource | None = None,
        flow: dataflow.FlowSource | None = None,
        repaired: Callable[[Endpoint], None] | None = None,
    ) -> None:
        self.settings = settings
        # Told of each pass that repaired drift there, once pachd has the repair and before
        # the status write (the close watch starts from it; called from the pass's thread).
        self.repaired = repaired or (lambda endpoint: None)
        self.flow = flow  # the pairs' data flow, live (flow_streams.py); None: not shown
        self.workers = workers  # the worker pods' index (workers.py); None: pachd's word stands
        self.gateways = gateways
        self.kube = kube
        # Reaches pachd only through admin-owned connections (resolver.py).
        self.resolver = resolver or Resolver(kube.core, kube.custom, settings.operator_namespace)
        self.leading = leading or (lambda: True)  # False: another replica may write; we must not
        self.deleter = Deleter(gateways, self.resolver, self.leading)
        self.readiness = metrics.Readiness()
        self._locks: dict[str, threading.Lock] = {}
        self._status: dict[str, _Written] = {}  # uid -> the status this process last wrote
        self._gone: dict[str, float] = {}  # uid -> when its deletion finished (monotonic)
        self._locks_lock = threading.Lock()

    def _lock(self, uid: str) -> threading.Lock | None:
        """The resource's lock; None once it was deleted (a pass queued before then does nothing)."""
        with self._locks_lock:
            if uid in self._gone:
                return None
            return self._locks.setdefault(uid, threading.Lock())

    def _previous(self, resource: Resource) -> Mapping[str, Any]:
        """The newest status: our own last write, which kopf's body may not show yet."""
        written = self._status.get(resource.uid)
        return resource.status if written is None else written.status()

    @staticmethod
    def pipelines_of(resource: Resource) -> set[PipelineKey]:
        """(project, name) of the pipelines a resource declares; empty if its spec is invalid."""
        try:
            pair = rendering.render(parse(resource.spec, resource.name), resource.owner)
        except SpecError:
            return set()
        return {(s["pipeline"]["project"]["name"], s["pipeline"]["name"]) for s in pair.in_creation_order()}

    def reconcile(self, resource: Resource, trigger: Trigger, listed_since: float = 0.0) -> PassResult | None:
        # Handlers and the drift sweep run concurrently: one pass per resource at a time, so a
        # drift pass that read the old spec can never undo the update handler's new one.
        lock = self._lock(resource.uid)
        if lock is None:
            return None
        with lock:
            if resource.uid in self._gone:
                return None  # deleted while this pass waited for the lock
            resource = dataclasses.replace(resource, status=copy.deepcopy(dict(self._previous(resource))))
            if trigger != "change" and (
                resource.deleting or resource.status.get("observedGeneration") != resource.generation
            ):
                # Being deleted, a spec change pending (the handlers own those), or a body from
                # before a change already applied: it must not undo it.
                return None
            if not self.leading():
                metrics.WRITES_REFUSED.inc()
                return None
            if trigger == "change" and applying(resource.status, resource.generation):
                # A spec change: until its pass ends, show it under way (Ready=Unknown,
                # Reconciling) rather than the previous generation's verdict.
                shown = applying_status(resource.generation, resource.status, now())
                self._write(resource, shown)
                resource = dataclasses.replace(resource, status=shown)
            result = self._pass(resource, trigger, listed_since)
            self._write(resource, result.status)
            return result

    def _write(self, resource: Resource, status: dict[str, Any]) -> None:
        """Write the whole status (called under the resource's lock), when it changed or the
        last write failed. Kept in memory first, so a failed write loses no repair count."""
        written = self._status.get(resource.uid)
        if written is not None and written.ok and written.same(status):
            return
        if written is None and resource.status == status:
            return
        if not self.leading():
            metrics.WRITES_REFUSED.inc()
            return
        ok = self.kube.write_status(resource.namespace, resource.name, status)
        self._status[resource.uid] = _Written(json.dumps(status, sort_keys=True), ok)

    def _pass(self, resource: Resource, trigger: Trigger, listed_since: float) -> PassResult:
        if trigger == "change":
            self.readiness.changed(resource.uid, resource.generation)
        try:
            spec = parse(resource.spec, resource.name)
            not_before = read_since(trigger, listed_since or time.monotonic())
            connection = self.resolver.allowed_connection(spec.connection, resource.namespace, not_before)
            # What the connection's admin allows its tenants, checked before anything reaches pachd.
            denied = policy.violations(connection.policy, spec, resource.namespace)
            if denied:
                raise ConnectionProblem(
                    "PolicyDenied", f"{spec.connection} refuses: {policy.summary(denied)}"
                )
            endpoint = self.resolver.connection_endpoint(connection, not_before)
            gateway = Fenced(self.gateways.get(endpoint), self.leading)
        except (SpecError, PachdError, ConnectionProblem) as err:
            # Nothing was sent to pachd. (A PachdError here: the address cannot be dialled.)
            reason = (
                err.condition_reason
                if isinstance(err, ConnectionProblem)
                else "ConnectionInvalid"
                if isinstance(err, PachdError)
                else "InvalidSpec"
            )
            status = status_patch(
                None,
                True,
                resource.generation,
                resource.status,
                now(),
                spec_error=str(err),
                error_reason=reason,
                managed=resource.status.get("managed"),
                handled=operating.carried(resource.status),
            )
            metrics.RECONCILES.labels(trigger, reason).inc()
            self.readiness.record(
                resource.uid, resource.generation, ready=False, stalled=metrics.stalled(status)
            )
            return PassResult(status, for_invalid_spec(trigger, resource.status, status, reason), None)
        handles = operating.read(resource.handles)
        own_project = policy.own_project(connection.policy, resource.namespace, spec.project)
        outcome = self._ensure(
            spec, resource.owner, gateway, trigger, listed_since, own_project, handles.paused
        )
        repairs = 0
        if trigger in REPAIRS:  # a pause around a spout update is no repair of its own
            paused = {(name, step) for name in outcome.paused for step in (Step.STOP, Step.START)}
            repairs = len([a for a in outcome.applied if a not in paused])
        if repairs:
            self.repaired(endpoint)
        workers = self._workers(spec.project, outcome)
        # The flow, from memory (no call): read once, for the automatic restarts and the status.
        flow = None if self.flow is None else self.flow.view(resource.uid)
        expected, flow_at = dataflow.expectations(resource.spec), time.time()
        quiet = self.flow is not None and dataflow.spout_quiet(flow, expected, resource.status, flow_at)
        window = expected.commit_within_s or 0.0
        done = restarts.carry_out(spec, handles, resource.status, outcome, workers, gateway, quiet, window)
        status = status_patch(
            outcome,
            spec.running,
            resource.generation,
            resource.status,
            now(),
            drift_repairs=repairs,
            workers=workers,
            managed=ownership.managed_after(resource.status, outcome, spec.connection, endpoint.address),
            paused=handles.paused,
            exhausted=done.exhausted,
            handled=done.handled,
            push_address=self._push_address(spec, outcome),
        )
        if self.flow is not None:
            status = dataflow.with_flow(
                status,
                resource.status,
                flow,
                expected,
                flow_at,
                self.settings.dataflow_resolution_s,
                resource.generation,
            )
        metrics.DRIFT_REPAIRS.inc(repairs)
        metrics.RECONCILES.labels(trigger, status["summary"]).inc()
        ready = status["summary"] == "Ready"
        self.readiness.record(
            resource.uid, resource.generation, ready, paused=handles.paused, stalled=metrics.stalled(status)
        )
        events = [
            *for_pause(resource.status, handles.paused),
            *for_pass(trigger, outcome, resource.status, status),
            *dataflow.events(resource.status, status),
        ]
        return PassResult(status, [*events, *done.events], outcome, endpoint, repairs)

    def _ensure(
        self,
        spec: SpoutPipelineSpec,
        owner: str,
        gateway: Pachd,
        trigger: Trigger,
        listed_since: float,
        own_project: bool,
        hold: bool,
    ) -> Outcome:
        pair = rendering.render(spec, owner)
        if trigger == "change":  # one resource's own look at pachd, now
            return ensure(pair, spec.running, owner, gateway, create_project=own_project, hold=hold)
        # Polls, sweeps and events share one listing per pachd (per poll, sweep or batch of
        # events), and a listing that shows other pipelines changed wakes their resources too.
        try:
            snapshot = gateway.snapshot(not_before=listed_since)
        except PachdError as err:  # the sweep's one failed listing answers for every resource
            return unobserved(pair, err)
        return ensure(pair, spec.running, owner, gateway, snapshot, create_project=own_project, hold=hold)

    def _workers(self, project: str, outcome: Outcome) -> dict[str, WorkerHealth] | None:
        """Each observed pipeline's workers, of the version pachd runs (from memory: no call)."""
        if self.workers is None:
            return None
        source = self.workers
        return {
            name: source.health((project, name), observed.version)
            for name, observed in outcome.observed.items()
            if observed is not None
        }

    def _push_address(self, spec: SpoutPipelineSpec, outcome: Outcome) -> str | None:
        """Where producers push into a spout with a service: its Service in pachd's namespace
        (known when the operator watches exactly one), of the version pachd runs."""
        namespaces = self.settings.worker_namespaces
        spout = outcome.observed.get(spec.spout.name)
        if len(namespaces) != 1 or spout is None:
            return None
        return rendering.push_address(spec, namespaces[0], spout.version)

    def delete(self, resource: Resource) -> Deletion:
        """Delete both pipelines (processor first) unless the policy orphans them. Holds the
        resource's lock, so no pass of it runs meanwhile, and once done no pass queued
        before can run at all (none can re-create a pipeline)."""
        lock = self._lock(resource.uid)
        if lock is None:
            return Deletion(True, "Pipelines deleted")
        with lock:
            if not self.leading():
                metrics.WRITES_REFUSED.inc()
                return Deletion(False, "not the leader: another replica deletes it")
            # Judge by the newest status (our own last write: kopf's body may lag behind it),
            # which says whether and where pipelines were created.
            resource = dataclasses.replace(resource, status=copy.deepcopy(dict(self._previous(resource))))
            deletion = self.deleter.delete(resource)
            if deletion.done:
                self.forget(resource.uid)
            elif deletion.status is not None:
                self._write(resource, deletion.status)
        return deletion

    def forget(self, uid: str) -> None:
        """Release a deleted resource's bookkeeping; only its uid is remembered, for a while."""
        with self._locks_lock:
            self._locks.pop(uid, None)
            self._status.pop(uid, None)
            cutoff = time.monotonic() - GONE_TTL_S
            self._gone = {u: t for u, t in self._gone.items() if t >= cutoff}
            self._gone[uid] = time.monotonic()
        self.readiness.forget(uid)


@dataclass(frozen=True)
class _Written:
    # As JSON: a few hundred bytes a resource rather than a few kilobytes of dicts.
    text: str
    ok: bool  # False: the write failed, the next pass writes it again

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.text)
        return found

    def same(self, status: Mapping[str, Any]) -> bool:
        return self.text == json.dumps(status, sort_keys=True)
