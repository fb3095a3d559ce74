"""The controller's pass, without kopf or an API server: status and Events come back as values."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from spout_operator.connection_model import ConnectionProblem, ConnectionSpec, parse_connection
from spout_operator.controller import READ_REUSE_S, Controller
from spout_operator.dataflow import FlowView
from spout_operator.pachd_api import Endpoint, Pachd, PachdUnavailable
from spout_operator.resolver import Resolver
from spout_operator.resource import Resource
from spout_operator.settings import Settings
from test_connection_model import OPERATOR_NS, FakeCore, FakeCustom, add_cluster
from test_reconcile import FakeGateway

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "spout.yaml"


class OneGateway:
    """A pool (pachd_api.Pachds) with one pachd for every endpoint."""

    def __init__(self, gateway: Pachd) -> None:
        self.gateway = gateway

    def get(self, endpoint: Endpoint) -> Pachd:
        return self.gateway


class NoKube:
    """The pass reads the API only through its resolver; status writes go nowhere."""

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        return True


class FakeResolver:
    """Every namespace may use the default connection, an address the fake gateway answers
    for; its policy is `policy` (by default: pachd's default project, nothing else)."""

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        raw = {
            "address": "pachd:30650",
            "policy": {"projects": {"allowDefault": True}} if policy is None else policy,
        }
        self.connection = parse_connection(
            "ClusterPachdConnection", {"metadata": {"name": "default"}, "spec": raw}, "ops"
        )
        self.endpoints = 0  # how often a token was read
        self.gone: ConnectionProblem | None = None  # the connection was deleted: reads fail so
        self.terminating = False  # the namespace is being deleted
        self.last: Endpoint | None = None

    def allowed_connection(self, ref: Any, namespace: str, not_before: float = 0.0) -> ConnectionSpec:
        if self.gone is not None:
            raise self.gone
        return self.connection

    def connection_endpoint(self, spec: ConnectionSpec, not_before: float = 0.0) -> Endpoint:
        self.endpoints += 1
        self.last = Endpoint(spec.address)
        return self.last

    def remembered(self, ref: Any, namespace: str) -> Endpoint | None:
        return self.last

    def endpoint(self, ref: Any, namespace: str, not_before: float = 0.0) -> Endpoint:
        return self.connection_endpoint(self.allowed_connection(ref, namespace, not_before), not_before)

    def namespace_terminating(self, namespace: str) -> bool:
        return self.terminating

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        return True


def body(generation: int = 1, observed: int | None = None, **spec_changes: Any) -> dict[str, Any]:
    spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    spec.update(spec_changes)
    status = {} if observed is None else {"observedGeneration": observed}
    return {
        "metadata": {"namespace": "team-a", "name": "spout101", "uid": "u1", "generation": generation},
        "spec": spec,
        "status": status,
    }


def controller(gateway: FakeGateway) -> Controller:
    return Controller(Settings(), OneGateway(gateway), NoKube(), FakeResolver())  # type: ignore[arg-type]


def test_a_change_pass_returns_status_and_events_and_posts_nothing() -> None:
    gateway = FakeGateway()
    result = controller(gateway).reconcile(Resource.of(body()), "change")
    assert result is not None
    assert result.status["observedGeneration"] == 1
    assert [e.reason for e in result.events] == ["PipelineCreate", "PipelineCreate"]
    assert gateway.writes() == [("create", "spout"), ("create", "processor")]


def test_a_spout_change_says_the_processor_was_paused() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    changed = body(generation=2, observed=1)
    changed["spec"]["spout"]["transform"]["image"] = "spout101:2"
    result = ctl.reconcile(Resource.of(changed), "change")
    assert result is not None
    assert [(e.reason, e.message) for e in result.events] == [
        ("ProcessorPaused", "pipeline processor paused for the spout's update"),
        ("PipelineUpdate", "update pipeline spout"),
        ("ProcessorResumed", "pipeline processor started again after the spout's update"),
    ]
    assert result.status["summary"] == "Ready"


def test_a_repair_pass_waits_while_a_spec_change_is_pending() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    assert ctl.reconcile(Resource.of(body(generation=2, observed=1)), "event") is None
    assert ctl.reconcile(Resource.of(body(generation=2, observed=1)), "drift") is None
    assert gateway.log == []


def test_a_repair_counts_what_it_restored_and_says_so() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    del gateway.pipelines["processor"]
    result = ctl.reconcile(Resource.of(body(observed=1)), "event")
    assert result is not None
    assert result.status["driftRepairs"] == 1
    assert [e.reason for e in result.events] == ["DriftRepaired"]


def test_the_resource_is_a_copy_of_the_body() -> None:
    raw = body()
    resource = Resource.of(raw)
    raw["spec"]["spout"]["transform"]["image"] = "edited/while:running"
    raw["metadata"]["generation"] = 2
    assert resource.spec["spout"]["transform"]["image"] != "edited/while:running"
    assert resource.generation == 1


def held_at(gateway: FakeGateway, method: str) -> tuple[threading.Event, threading.Event]:
    """The gateway's next calls of `method` set `inside`, then wait for `release`."""
    inside, release = threading.Event(), threading.Event()
    original = getattr(gateway, method)

    def held(*args: Any) -> Any:
        inside.set()
        release.wait(5)
        return original(*args)

    setattr(gateway, method, held)
    return inside, release


def test_deletion_waits_for_a_running_pass_and_releases_bookkeeping() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    inside, release = held_at(gateway, "inspect")
    repair = threading.Thread(target=ctl.reconcile, args=(Resource.of(body(observed=1)), "event"))
    repair.start()
    assert inside.wait(5)
    del gateway.inspect  # the deletion's own calls: not held
    deleting = copy.deepcopy(body(observed=1))
    done: list[bool] = []
    deleter = threading.Thread(target=lambda: done.append(ctl.delete(Resource.of(deleting)).done))
    deleter.start()
    deleter.join(0.2)
    assert done == []  # the pass holds the resource: deletion waits for it
    release.set()
    repair.join(5)
    deleter.join(5)
    assert done == [True]
    assert gateway.pipelines == {}
    assert "u1" not in ctl._locks


def test_the_first_pass_that_writes_records_where_and_the_next_keeps_it() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    result = ctl.reconcile(Resource.of(body()), "change")
    assert result is not None
    assert result.status["managed"] == {
        "connectionRef": {"kind": "ClusterPachdConnection", "name": "default"},
        "address": "pachd:30650",
    }
    again = body(observed=1)
    again["status"]["managed"] = result.status["managed"]
    later = ctl.reconcile(Resource.of(again), "event")
    assert later is not None and later.status["managed"] == result.status["managed"]  # status is whole


def test_deleting_what_was_never_created_asks_pachd_nothing_when_it_is_down() -> None:
    down = PachdUnavailable("pachd unreachable (unavailable)")
    gateway = FakeGateway({("inspect", "processor"): down, ("inspect", "spout"): down})
    deleting = body()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    deletion = controller(gateway).delete(Resource.of(deleting))
    assert deletion.done  # status.managed unset: nothing to wait for


def test_deleting_what_was_created_waits_for_pachd_and_names_the_way_out() -> None:
    down = PachdUnavailable("pachd unreachable (unavailable)")
    gateway = FakeGateway({("inspect", "processor"): down, ("inspect", "spout"): down})
    deleting = body()
    deleting["status"]["managed"] = {"connectionRef": {"kind": "ClusterPachdConnection", "name": "default"}}
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    deletion = controller(gateway).delete(Resource.of(deleting))
    assert not deletion.done
    assert "deletionPolicy: Orphan" in deletion.message


# --- one pass, one writer, one lock per resource (issue 13) ---------------------------


class RecordingKube(NoKube):
    """The status subresource in memory: each write replaces the whole status. A write can be
    held (`hold`) to show what else may happen while it is in flight."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []
        self.hold: threading.Event | None = None
        self.writing = threading.Event()
        self.in_flight = 0
        self.overlaps = 0

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.in_flight += 1
        self.overlaps += self.in_flight > 1
        self.writing.set()
        if self.hold is not None:
            assert self.hold.wait(5)
        self.status = copy.deepcopy(status)
        self.writes.append(copy.deepcopy(status))
        self.in_flight -= 1
        return True


def writing_controller(gateway: FakeGateway) -> tuple[Controller, RecordingKube]:
    kube = RecordingKube()
    return Controller(Settings(), OneGateway(gateway), kube, FakeResolver()), kube  # type: ignore[arg-type]


def test_the_pass_writes_the_status_itself() -> None:
    gateway = FakeGateway()
    ctl, kube = writing_controller(gateway)
    result = ctl.reconcile(Resource.of(body()), "change")
    assert result is not None
    under_way, final = kube.writes  # the change shown under way, then its result
    assert {c["type"]: c["status"] for c in under_way["conditions"]}["Reconciling"] == "True"
    assert final == result.status
    # Nothing changed: a second look writes nothing.
    ctl.reconcile(Resource.of(body(observed=1)), "event")
    assert len(kube.writes) == 2


def test_drift_repairs_counted_from_a_stale_body_are_never_lost() -> None:
    """kopf's body lags behind our own writes: two repairs seen from the same (stale) body
    must count two, not one."""
    gateway = FakeGateway()
    ctl, kube = writing_controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    stale = Resource.of(body(observed=1))  # the body as kopf had it before any repair
    del gateway.pipelines["processor"]
    ctl.reconcile(stale, "event")
    gateway.pipelines["spout"].stopped = True
    ctl.reconcile(stale, "event")
    assert kube.status["driftRepairs"] == 2


def test_a_status_write_replaces_keys_that_no_longer_hold() -> None:
    gateway = FakeGateway()
    ctl, kube = writing_controller(gateway)
    raw = body(observed=1)
    raw["status"]["spout"] = {"name": "spout", "state": "Foreign", "foreignOwner": "someone/else"}
    raw["status"]["obsolete"] = "from an older operator"
    ctl.reconcile(Resource.of(raw), "change")
    assert "foreignOwner" not in kube.status["spout"]
    assert "obsolete" not in kube.status


def test_no_pass_or_deletion_runs_while_a_status_write_is_in_flight() -> None:
    gateway = FakeGateway()
    ctl, kube = writing_controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    del gateway.pipelines["processor"]
    kube.hold, kube.writing = threading.Event(), threading.Event()
    repair = threading.Thread(target=ctl.reconcile, args=(Resource.of(body(observed=1)), "event"))
    repair.start()
    assert kube.writing.wait(5)  # the repair's status write is in flight
    log_before = list(gateway.log)
    done: list[bool] = []
    deleter = threading.Thread(target=lambda: done.append(ctl.delete(Resource.of(body(observed=1))).done))
    deleter.start()
    deleter.join(0.2)
    assert done == [] and gateway.log == log_before  # deletion waits for the write
    kube.hold.set()
    repair.join(5)
    deleter.join(5)
    assert done == [True] and kube.overlaps == 0


def test_a_pass_queued_before_deletion_never_recreates_the_pipelines() -> None:
    """kopf stops the drift daemon while deletion runs; a pass already handed to the pool
    runs after the deletion finished. It must do nothing, and leave no bookkeeping."""
    gateway = FakeGateway()
    ctl, kube = writing_controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    queued = Resource.of(body(observed=1))  # taken before the deletion
    assert ctl.delete(Resource.of(body(observed=1))).done
    writes = len(kube.writes)
    assert ctl.reconcile(queued, "drift") is None
    assert ctl.reconcile(queued, "event") is None
    assert gateway.pipelines == {}
    assert len(kube.writes) == writes
    assert "u1" not in ctl._locks and "u1" not in ctl._status


def test_a_repair_from_before_an_edit_does_not_undo_the_edit() -> None:
    """A drift pass whose body predates the user's edit waits for the lock while the update
    handler applies generation 2; it must not run with generation 1's spec afterwards."""
    gateway = FakeGateway()
    ctl, _ = writing_controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    old = Resource.of(body(observed=1))
    edited = body(generation=2, observed=1)
    edited["spec"]["processor"]["transform"]["image"] = "spout101:2"
    assert ctl.reconcile(Resource.of(edited), "change") is not None
    version = gateway.pipelines["processor"].version
    assert ctl.reconcile(old, "drift") is None
    assert gateway.pipelines["processor"].version == version
    assert gateway.pipelines["processor"].spec["transform"]["image"] == "spout101:2"


def test_deletion_shows_why_it_waits_in_a_status_it_writes_itself() -> None:
    gateway = FakeGateway()
    ctl, kube = writing_controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    gateway.ignore_deletes = True
    deletion = ctl.delete(Resource.of(body(observed=1)))
    assert not deletion.done
    assert kube.status["summary"] == "Deleting"
    assert kube.status["spout"]["name"] == "spout"  # the rest of the status stays


def test_channels_stay_open_for_at_least_three_sweeps() -> None:
    """Every resource asks for its channel at each sweep: one it uses is never closed."""
    assert Settings(drift_interval_s=0.1, gateway_idle_s=0.1).channel_idle_s == pytest.approx(0.3)
    assert Settings(drift_interval_s=30, gateway_idle_s=300).channel_idle_s == 300


# --- a replica that does not lead writes nothing -----------------------------------------


def test_a_replica_that_does_not_lead_neither_reconciles_nor_writes() -> None:
    gateway = FakeGateway()
    kube = RecordingKube()
    ctl = Controller(Settings(), OneGateway(gateway), kube, FakeResolver(), leading=lambda: False)  # type: ignore[arg-type]
    assert ctl.reconcile(Resource.of(body()), "change") is None
    assert not ctl.delete(Resource.of(body())).done
    assert gateway.log == [] and kube.writes == []


def test_a_pass_stops_writing_the_moment_the_lease_is_lost() -> None:
    """The Lease is lost between the pass's first write to pachd and its second: the second
    never happens, and neither does the status write."""
    gateway = FakeGateway()
    kube = RecordingKube()
    leading = [True]
    ctl = Controller(Settings(), OneGateway(gateway), kube, FakeResolver(), leading=lambda: leading[0])  # type: ignore[arg-type]
    original = gateway.create

    def create_then_lose(spec: Any, update: bool) -> None:
        original(spec, update)
        leading[0] = False

    gateway.create = create_then_lose  # type: ignore[method-assign]
    ctl.reconcile(Resource.of(body()), "change")
    assert gateway.writes() == [("create", "spout")]
    assert [w["summary"] for w in kube.writes] == ["Reconciling"]  # written while it still led


# --- the connection's policy ------------------------------------------------------------------


def test_a_policy_refusal_sends_nothing_and_stalls_once() -> None:
    """Refused before pachd is asked: Stalled names the rule and the field, one Warning Event
    when it starts, and a sweep after it neither writes nor posts again (no retry loop)."""
    gateway, kube = FakeGateway(), RecordingKube()
    resolver = FakeResolver(
        {"images": {"allowed": ["registry.example.com/*"]}, "projects": {"allowDefault": True}}
    )
    ctl = Controller(Settings(), OneGateway(gateway), kube, resolver)  # type: ignore[arg-type]
    first = ctl.reconcile(Resource.of(body()), "change")
    assert first is not None
    stalled = {c["type"]: c for c in first.status["conditions"]}["Stalled"]
    assert stalled["reason"] == "PolicyDenied"
    assert "policy.images" in stalled["message"] and "spout.transform.image" in stalled["message"]
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "PolicyDenied")]
    assert gateway.log == [] and resolver.endpoints == 0  # not even the token was read
    writes = len(kube.writes)
    again = ctl.reconcile(Resource.of(body(observed=1)), "drift")
    assert again is not None and again.events == [] and len(kube.writes) == writes


def test_loosening_the_policy_lets_the_refused_resource_through_at_the_next_pass() -> None:
    gateway = FakeGateway()
    resolver = FakeResolver(
        {"images": {"allowed": ["registry.example.com/*"]}, "projects": {"allowDefault": True}}
    )
    ctl = Controller(Settings(), OneGateway(gateway), RecordingKube(), resolver)  # type: ignore[arg-type]
    ctl.reconcile(Resource.of(body()), "change")
    resolver.connection = FakeResolver().connection  # the admin widened it
    result = ctl.reconcile(Resource.of(body(observed=1)), "drift")
    assert result is not None and result.status["summary"] == "Ready"
    assert gateway.writes() == [("create", "spout"), ("create", "processor")]


def test_tightening_the_policy_leaves_running_pipelines_alone_and_still_deletes() -> None:
    """Running pipelines are not stopped by a stricter policy: they are reported as refused,
    no further change (nor repair) reaches pachd, and deletion still removes them."""
    gateway, resolver = FakeGateway(), FakeResolver()
    ctl = Controller(Settings(), OneGateway(gateway), RecordingKube(), resolver)  # type: ignore[arg-type]
    ctl.reconcile(Resource.of(body()), "change")
    resolver.connection = FakeResolver({"user": {"allowRoot": False}}).connection  # default project gone
    del gateway.pipelines["processor"]  # drift: not repaired while refused
    result = ctl.reconcile(Resource.of(body(observed=1)), "drift")
    assert result is not None and result.status["summary"] == "PolicyDenied"
    assert "processor" not in gateway.pipelines and "spout" in gateway.pipelines
    assert ctl.delete(Resource.of(body(observed=1))).done
    assert gateway.pipelines == {}


def test_a_namespace_gets_its_own_project_made_with_its_first_pipeline() -> None:
    gateway = FakeGateway()
    ctl = Controller(Settings(), OneGateway(gateway), RecordingKube(), FakeResolver({}))  # type: ignore[arg-type]
    result = ctl.reconcile(Resource.of(body(project="team-a")), "change")
    assert result is not None and result.status["summary"] == "Ready", result.status
    # One CreateProject for the pass, not one per pipeline created.
    assert gateway.writes() == [("ensure_project", "team-a"), ("create", "spout"), ("create", "processor")]
    again = ctl.reconcile(Resource.of(body(observed=1, project="team-a")), "change")
    assert again is not None and gateway.writes()[3:] == []  # a re-apply writes nothing


def test_a_shared_project_is_never_created_by_the_operator() -> None:
    gateway = FakeGateway()
    resolver = FakeResolver({"projects": {"mode": "Shared", "names": ["analytics"]}})
    ctl = Controller(Settings(), OneGateway(gateway), RecordingKube(), resolver)  # type: ignore[arg-type]
    result = ctl.reconcile(Resource.of(body(project="analytics")), "change")
    assert result is not None
    assert ("ensure_project", "analytics") not in gateway.log
    assert "not found" in {c["type"]: c for c in result.status["conditions"]}["Synced"]["message"]


# --- operating handles: pause, reconcile now, restart now, automatic restarts -----------------


def annotated(annotations: dict[str, str], **kwargs: Any) -> Resource:
    raw = body(**kwargs)
    raw["metadata"]["annotations"] = annotations
    return Resource.of(raw)


PAUSED = {"spout-operator.dev/paused": "true"}


def test_a_paused_resource_writes_nothing_and_says_what_is_held() -> None:
    gateway, kube = FakeGateway(), RecordingKube()
    ctl = Controller(Settings(), OneGateway(gateway), kube, FakeResolver())  # type: ignore[arg-type]
    result = ctl.reconcile(annotated(PAUSED), "change")
    assert result is not None and gateway.writes() == []
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["Synced"]["reason"] == "ReconcilePaused"
    assert "held: create spout, create processor" in conditions["Synced"]["message"]
    assert "Reconciling" not in conditions and "Stalled" not in conditions  # kstatus: Current
    assert result.status["paused"] is True
    assert [e.reason for e in result.events] == ["ReconcilePaused"]
    again = ctl.reconcile(annotated(PAUSED, observed=1), "drift")
    assert again is not None and again.events == [] and gateway.writes() == []


def test_drift_while_paused_is_reported_not_repaired_and_unpausing_repairs_it() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    del gateway.pipelines["processor"]
    paused = ctl.reconcile(annotated(PAUSED, observed=1), "event")
    assert paused is not None and "processor" not in gateway.pipelines
    assert paused.status["processor"]["state"] == "Missing"
    resumed = ctl.reconcile(annotated({}, observed=1), "event")
    assert resumed is not None and "processor" in gateway.pipelines
    assert resumed.status["summary"] == "Ready" and "paused" not in resumed.status
    assert [e.reason for e in resumed.events] == ["ReconcileResumed", "DriftRepaired"]


def test_a_paused_resource_still_deletes() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    ctl.reconcile(annotated(PAUSED, observed=1), "drift")
    assert ctl.delete(annotated(PAUSED, observed=1)).done
    assert gateway.pipelines == {}


def spout_change(annotations: dict[str, str]) -> Resource:
    """Generation 2: a new spout image (an update pachd 2.6 makes only with the processor stopped)."""
    raw = body(generation=2, observed=1)
    raw["spec"]["spout"]["transform"]["image"] = "spout101:2"
    raw["metadata"]["annotations"] = annotations
    return Resource.of(raw)


def test_a_pending_spout_update_is_held_whole_by_a_pause_and_applied_whole_after() -> None:
    """Paused before the spout's update: neither the processor's stop nor the update is written,
    so the processor runs on; unpausing stops it, updates the spout and starts it in one pass."""
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    held = ctl.reconcile(spout_change(PAUSED), "change")
    assert held is not None and gateway.writes() == [("create", "spout"), ("create", "processor")]
    assert not gateway.pipelines["processor"].stopped
    synced = {c["type"]: c for c in held.status["conditions"]}["Synced"]
    assert synced["reason"] == "ReconcilePaused" and "held: update spout" in synced["message"]
    resumed = ctl.reconcile(spout_change({}), "event")
    assert resumed is not None
    assert gateway.writes()[2:] == [("stop", "processor"), ("update", "spout"), ("start", "processor")]
    assert not gateway.pipelines["processor"].stopped
    assert gateway.pipelines["spout"].spec["transform"]["image"] == "spout101:2"
    assert resumed.status["summary"] == "Ready"


def test_a_pause_during_a_spout_update_waits_for_the_update_to_finish() -> None:
    """The stop, update and start run in one pass under the resource's lock: a pause that
    lands meanwhile takes effect after it, never with the processor stopped half-way."""
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    inside, release = held_at(gateway, "create")  # the spout's update, after the processor's stop
    update = threading.Thread(target=ctl.reconcile, args=(spout_change({}), "change"))
    update.start()
    assert inside.wait(5) and gateway.pipelines["processor"].stopped  # half-way: processor stopped
    paused: list[Any] = []
    pausing = threading.Thread(target=lambda: paused.append(ctl.reconcile(spout_change(PAUSED), "event")))
    pausing.start()
    pausing.join(0.2)
    assert paused == []  # the pause waits for the update's pass
    release.set()
    update.join(5)
    pausing.join(5)
    assert not gateway.pipelines["processor"].stopped
    assert gateway.pipelines["spout"].spec["transform"]["image"] == "spout101:2"
    assert paused[0] is not None and paused[0].status["paused"] is True
    assert gateway.writes()[-1] == ("start", "processor")  # the paused pass wrote nothing


def test_a_processor_pachd_left_stopped_stays_stopped_while_paused_and_status_says_so() -> None:
    """pachd went away between the processor's stop and start: paused, the operator starts
    nothing, says what it holds, and starts it at once when unpaused."""
    down = PachdUnavailable("pachd unreachable (unavailable)")
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    gateway.failures[("start", "processor")] = down
    ctl.reconcile(spout_change({}), "change")
    assert gateway.pipelines["processor"].stopped
    del gateway.failures[("start", "processor")]
    held = ctl.reconcile(spout_change(PAUSED), "event")
    assert held is not None and gateway.pipelines["processor"].stopped
    assert gateway.writes()[-1] == ("start", "processor")  # the refused one: nothing since
    synced = {c["type"]: c for c in held.status["conditions"]}["Synced"]
    assert "held: start processor" in synced["message"]
    assert held.status["processor"]["state"] == "PAUSED"  # pachd's word for a stopped pipeline
    resumed = ctl.reconcile(spout_change({}), "event")
    assert resumed is not None and not gateway.pipelines["processor"].stopped


def test_a_reconcile_token_is_acknowledged_and_kept() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    token = {"spout-operator.dev/reconcile-requested-at": "2026-12-07T12:00:00Z"}
    result = ctl.reconcile(annotated(token, observed=1), "event")
    assert result is not None and result.status["lastHandledReconcileAt"] == "2026-12-07T12:00:00Z"
    later = ctl.reconcile(annotated({}, observed=1), "drift")
    assert later is not None and later.status["lastHandledReconcileAt"] == "2026-12-07T12:00:00Z"


def test_a_restart_token_restarts_once_without_a_new_version_or_a_repair() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    versions = {name: p.version for name, p in gateway.pipelines.items()}
    token = {"spout-operator.dev/restart-spout": "1"}
    result = ctl.reconcile(annotated(token, observed=1), "event")
    assert result is not None
    assert gateway.writes() == [
        ("create", "spout"),
        ("create", "processor"),
        ("stop", "spout"),
        ("start", "spout"),
    ]
    assert {name: p.version for name, p in gateway.pipelines.items()} == versions
    assert result.status["driftRepairs"] == 0 and result.repairs == 0
    assert result.status["restarts"]["spout"]["outcome"] == "Restarted"
    assert [e.reason for e in result.events] == ["Restarted"]
    again = ctl.reconcile(annotated(token, observed=1), "drift")
    assert again is not None and len(gateway.writes()) == 4  # once per token


def test_a_restart_is_refused_on_a_paused_or_stopped_resource() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    request = {"spout-operator.dev/restart-processor": "a", **PAUSED}
    result = ctl.reconcile(annotated(request, observed=1), "event")
    assert result is not None and gateway.writes() == [("create", "spout"), ("create", "processor")]
    ack = result.status["restarts"]["processor"]
    assert ack["outcome"] == "Refused" and "paused" in ack["message"]
    assert "RestartRefused" in [e.reason for e in result.events]
    stopped = ctl.reconcile(
        annotated({"spout-operator.dev/restart-processor": "b"}, observed=1, state="Stopped"), "change"
    )
    assert stopped is not None and "Stopped" in stopped.status["restarts"]["processor"]["message"]


def crashing(gateway: FakeGateway) -> None:
    """pachd says CRASHING for every pipeline from now on (stopped or not)."""
    original = gateway.inspect

    def failing(name: str, project: str) -> Any:
        found = original(name, project)
        return None if found is None else dataclasses.replace(found, state="CRASHING")

    gateway.inspect = failing  # type: ignore[method-assign]
    gateway.list_pipelines = lambda: [p for p in map(lambda n: failing(n, "default"), gateway.pipelines) if p]  # type: ignore[method-assign]


def test_a_failing_pipeline_is_restarted_automatically_up_to_the_limit() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    policy = {"enabled": True, "afterSeconds": 0, "maxRestarts": 1, "backoffSeconds": 0}
    ctl.reconcile(Resource.of(body(autoRestart=policy)), "change")
    crashing(gateway)
    first = ctl.reconcile(Resource.of(body(observed=1, autoRestart=policy)), "drift")
    assert (
        first is not None and ("stop", "spout") in gateway.writes() and ("start", "spout") in gateway.writes()
    )
    assert first.status["autoRestart"]["restarts"] == 1
    assert "AutoRestarted" in [e.reason for e in first.events]
    writes = len(gateway.writes())
    second = ctl.reconcile(Resource.of(body(observed=1, autoRestart=policy)), "drift")
    assert second is not None and len(gateway.writes()) == writes  # the limit: no more restarts
    stalled = {c["type"]: c for c in second.status["conditions"]}["Stalled"]
    assert stalled["reason"] == "AutoRestartLimit"
    assert [e.reason for e in second.events].count("AutoRestartLimit") == 1


class StillFlow:
    """A data flow source (dataflow.FlowSource) whose spout last committed `age` seconds ago."""

    def __init__(self, age: float) -> None:
        self.age = age

    def view(self, uid: str) -> FlowView:
        last = time.time() - self.age
        return FlowView(last - 1, True, last, 0, last)


QUIET_AFTER_60 = {"commitWithinSeconds": 60}


def test_a_spout_quiet_beyond_its_expectation_is_restarted_automatically() -> None:
    gateway, flow = FakeGateway(), StillFlow(age=10)
    ctl = Controller(Settings(), OneGateway(gateway), NoKube(), FakeResolver(), flow=flow)  # type: ignore[arg-type]
    policy = {"enabled": True, "afterSeconds": 0, "maxRestarts": 2, "backoffSeconds": 600}
    spec = {"autoRestart": policy, "expectations": QUIET_AFTER_60}
    ctl.reconcile(Resource.of(body(**spec)), "change")
    committing = ctl.reconcile(Resource.of(body(observed=1, **spec)), "drift")
    assert committing is not None and committing.status["autoRestart"]["restarts"] == 0
    flow.age = 120  # RUNNING, workers fine, yet no commit for two minutes
    quiet = ctl.reconcile(Resource.of(body(observed=1, **spec)), "drift")
    assert quiet is not None
    assert gateway.writes()[2:] == [("stop", "spout"), ("start", "spout")]  # the spout only
    assert quiet.status["autoRestart"]["restarts"] == 1 and "nextRestartAt" in quiet.status["autoRestart"]
    conditions = {c["type"]: c for c in quiet.status["conditions"]}
    assert conditions["DataFlowing"]["reason"] == "SpoutQuiet"
    assert conditions["Ready"]["status"] == "True"  # a warning: Ready stays what pachd says
    [restarted] = [e for e in quiet.events if e.reason == "AutoRestarted"]
    assert "spout restarted after not committing within" in restarted.message
    # Still quiet right after: the back-off holds the next restart.
    again = ctl.reconcile(Resource.of(body(observed=1, **spec)), "drift")
    assert again is not None and len(gateway.writes()) == 4
    assert again.status["autoRestart"]["restarts"] == 1
    # pachd's start makes a commit on the spout's output branch: it looks as if it committed,
    # yet that is no health that starts the count again (only commitWithinSeconds of it is).
    flow.age = 0
    looks_fine = ctl.reconcile(Resource.of(body(observed=1, **spec)), "drift")
    assert looks_fine is not None and looks_fine.status["autoRestart"]["restarts"] == 1


def test_a_quiet_spout_is_not_restarted_without_auto_restart() -> None:
    gateway = FakeGateway()
    ctl = Controller(Settings(), OneGateway(gateway), NoKube(), FakeResolver(), flow=StillFlow(age=120))  # type: ignore[arg-type]
    ctl.reconcile(Resource.of(body(expectations=QUIET_AFTER_60)), "change")
    result = ctl.reconcile(Resource.of(body(observed=1, expectations=QUIET_AFTER_60)), "drift")
    assert result is not None and gateway.writes() == [("create", "spout"), ("create", "processor")]
    assert "autoRestart" not in result.status


def test_automatic_restarts_never_fight_a_pause_or_a_declared_stop() -> None:
    """Failing (CRASHING, and a quiet spout) with autoRestart set: paused or Stopped, no
    restart is written and status.autoRestart stays as the last restart left it."""
    gateway, flow = FakeGateway(), StillFlow(age=10)
    ctl = Controller(Settings(), OneGateway(gateway), NoKube(), FakeResolver(), flow=flow)  # type: ignore[arg-type]
    policy = {"enabled": True, "afterSeconds": 0, "maxRestarts": 3, "backoffSeconds": 0}
    failing = {"autoRestart": policy, "expectations": QUIET_AFTER_60}
    ctl.reconcile(Resource.of(body(**failing)), "change")
    crashing(gateway)
    flow.age = 120
    restarted = ctl.reconcile(Resource.of(body(observed=1, **failing)), "drift")
    assert restarted is not None and restarted.status["autoRestart"]["restarts"] == 1  # it would restart
    record = copy.deepcopy(restarted.status["autoRestart"])
    writes = len(gateway.writes())
    for _ in range(2):
        paused = ctl.reconcile(annotated(PAUSED, observed=1, **failing), "drift")
        assert paused is not None and len(gateway.writes()) == writes
        assert paused.status["autoRestart"] == record
        assert "AutoRestarted" not in [e.reason for e in paused.events]
    stopped = ctl.reconcile(annotated({}, generation=2, observed=1, state="Stopped", **failing), "change")
    assert stopped is not None
    assert gateway.writes()[writes:] == [("stop", "spout"), ("stop", "processor")]  # declared, no start
    assert stopped.status["autoRestart"] == record
    later = ctl.reconcile(annotated({}, generation=2, observed=2, state="Stopped", **failing), "drift")
    assert later is not None and len(gateway.writes()) == writes + 2
    assert later.status["autoRestart"] == record


def test_a_spout_with_a_service_says_where_to_push() -> None:
    raw = yaml.safe_load((SAMPLE.parent / "push.yaml").read_text())
    raw["metadata"].update(namespace="team-a", uid="u-push", generation=1)
    raw["status"] = {}
    gateway = FakeGateway()
    settings = Settings(worker_namespaces=("pachyderm",))
    ctl = Controller(settings, OneGateway(gateway), RecordingKube(), FakeResolver())  # type: ignore[arg-type]
    result = ctl.reconcile(Resource.of(raw), "change")
    assert result is not None
    assert result.status["pushAddress"] == "default-push-v1-user.pachyderm.svc:8080"
    plain = ctl.reconcile(Resource.of(body()), "change")  # no service: no address
    assert plain is not None and "pushAddress" not in plain.status


@pytest.mark.parametrize(
    "change",
    [
        {"service": {"internalPort": 8080, "externalPort": 9090, "type": "ClusterIP"}},
        {"tolerations": [{"key": "dedicated", "operator": "EXISTS", "effect": "NO_SCHEDULE"}]},
    ],
    ids=["service", "tolerations"],
)
def test_changing_a_running_spouts_service_or_tolerations_is_a_spout_update(change: dict[str, Any]) -> None:
    """The processor is stopped around the spout's update, like any spout change, and the
    push address follows the spout to its new version (pachd names the Service after it)."""
    raw = yaml.safe_load((SAMPLE.parent / "push.yaml").read_text())
    raw["metadata"].update(namespace="team-a", uid="u-push", generation=1)
    raw["status"] = {}
    gateway = FakeGateway()
    granted = {"projects": {"allowDefault": True}, "scheduling": {"tolerationKeys": ["dedicated"]}}
    settings = Settings(worker_namespaces=("pachyderm",))
    ctl = Controller(settings, OneGateway(gateway), RecordingKube(), FakeResolver(granted))  # type: ignore[arg-type]
    first = ctl.reconcile(Resource.of(raw), "change")
    assert first is not None and first.status["pushAddress"] == "default-push-v1-user.pachyderm.svc:8080"
    before = len(gateway.writes())
    changed = copy.deepcopy(raw)
    changed["metadata"]["generation"] = 2
    changed["status"] = first.status
    changed["spec"]["spout"].update(change)
    result = ctl.reconcile(Resource.of(changed), "change")
    assert result is not None
    assert gateway.writes()[before:] == [
        ("stop", "push-processor"),
        ("update", "push"),
        ("start", "push-processor"),
    ]
    assert [e.reason for e in result.events] == ["ProcessorPaused", "PipelineUpdate", "ProcessorResumed"]
    port = change.get("service", {}).get("externalPort", 8080)
    assert result.status["spout"]["version"] == 2
    assert result.status["pushAddress"] == f"default-push-v2-user.pachyderm.svc:{port}"


@pytest.mark.parametrize("namespaces", [(), ("pachyderm", "other")])
def test_without_exactly_one_worker_namespace_no_push_address_is_guessed(namespaces: tuple[str, ...]) -> None:
    """The address names pachd's namespace: with none or several watched, which one is not known."""
    raw = yaml.safe_load((SAMPLE.parent / "push.yaml").read_text())
    raw["metadata"].update(namespace="team-a", uid="u-push", generation=1)
    raw["status"] = {}
    settings = Settings(worker_namespaces=namespaces)
    ctl = Controller(settings, OneGateway(FakeGateway()), RecordingKube(), FakeResolver())  # type: ignore[arg-type]
    result = ctl.reconcile(Resource.of(raw), "change")
    assert result is not None and result.status["spout"]["version"] == 1  # pachd has the spout
    assert "pushAddress" not in result.status


# --- a namespace deleted with its resources, connection and Secret ----------------------------


def test_a_connection_gone_with_its_namespace_still_deletes_the_pipelines_it_made() -> None:
    """kubectl delete namespace takes the PachdConnection and its token Secret at once (they
    carry no finalizer); the pipelines are deleted through the endpoint last resolved."""
    gateway, resolver = FakeGateway(), FakeResolver()
    ctl = Controller(Settings(), OneGateway(gateway), RecordingKube(), resolver)  # type: ignore[arg-type]
    ctl.reconcile(Resource.of(body()), "change")
    resolver.gone = ConnectionProblem("ConnectionNotFound", "PachdConnection team-pachd not found")
    resolver.terminating = True
    deletion = ctl.delete(Resource.of(body(observed=1)))
    assert deletion.done and gateway.pipelines == {}


def test_a_connection_deleted_outside_a_namespace_deletion_still_holds_the_deletion() -> None:
    """An admin who deleted the connection may have meant it: say so and wait (or Orphan)."""
    gateway, resolver = FakeGateway(), FakeResolver()
    ctl = Controller(Settings(), OneGateway(gateway), RecordingKube(), resolver)  # type: ignore[arg-type]
    ctl.reconcile(Resource.of(body()), "change")
    resolver.gone = ConnectionProblem("ConnectionNotFound", "PachdConnection team-pachd not found")
    deletion = ctl.delete(Resource.of(body(observed=1)))
    assert not deletion.done and "Restore it" in deletion.message
    assert set(gateway.pipelines) == {"spout", "processor"}


def test_status_managed_follows_the_pipelines_to_a_new_address() -> None:
    """An admin moved the connection to another pachd: the pipelines are made there, and
    deletion must look for them there, not at the old address."""
    gateway, resolver = FakeGateway(), FakeResolver()
    ctl = Controller(Settings(), OneGateway(gateway), RecordingKube(), resolver)  # type: ignore[arg-type]
    first = ctl.reconcile(Resource.of(body()), "change")
    assert first is not None and first.status["managed"]["address"] == "pachd:30650"
    raw = {"address": "grpc://pachd-b:30650", "policy": {"projects": {"allowDefault": True}}}
    resolver.connection = parse_connection(
        "ClusterPachdConnection", {"metadata": {"name": "default"}, "spec": raw}, "ops"
    )
    gateway.pipelines.clear()  # the new pachd holds nothing yet
    moved = ctl.reconcile(Resource.of(body(observed=1)), "drift")
    assert moved is not None and moved.status["managed"]["address"] == "grpc://pachd-b:30650"


def test_a_burst_of_repairs_on_one_connection_reads_it_once() -> None:
    """A pass woken by pachd reuses a recent read of its connection: 48 repairs in a burst
    each read the connection afresh, and a read took up to 0.7 s while the API server was busy.
    A change still reads afresh, and a read older than READ_REUSE_S is not reused."""
    core, custom = FakeCore(), FakeCustom()
    add_cluster(
        custom,
        namespaceSelector={},
        authTokenSecretRef={"name": "tok"},
        policy={"projects": {"allowDefault": True}},
    )
    core.secret(OPERATOR_NS, "tok", "token")
    gateway = FakeGateway()
    ctl = Controller(Settings(), OneGateway(gateway), NoKube(), Resolver(core, custom, OPERATOR_NS))  # type: ignore[arg-type]

    def reads() -> int:
        return len([r for r in core.reads if r[0] == "Secret"])

    resources = [
        Resource.of({**body(observed=1), "metadata": {**body()["metadata"], "uid": f"u{i}"}})
        for i in range(5)
    ]
    ctl.reconcile(resources[0], "change")
    assert reads() == 1
    for resource in resources:  # each woken by its own pachd event, just after the one before
        ctl.reconcile(resource, "event", time.monotonic())
    assert reads() == 1
    ctl.reconcile(resources[0], "change")  # the resource's own change reads afresh
    assert reads() == 2
    ctl.reconcile(resources[1], "event", time.monotonic() + READ_REUSE_S + 1)
    assert reads() == 3


def test_a_repair_is_told_before_its_status_is_written_and_nothing_else_is() -> None:
    """The close watch (the other pachds listed) starts from it: the status write after a
    repair took 0.6 s while a burst kept the API server busy."""
    gateway = FakeGateway()
    kube = RecordingKube()
    told: list[tuple[Endpoint, int]] = []
    ctl = Controller(
        Settings(),
        OneGateway(gateway),  # type: ignore[arg-type]
        kube,  # type: ignore[arg-type]
        FakeResolver(),  # type: ignore[arg-type]
        repaired=lambda endpoint: told.append((endpoint, len(kube.writes))),
    )
    ctl.reconcile(Resource.of(body()), "change")  # creates: no repair
    ctl.reconcile(Resource.of(body(observed=1)), "event")  # nothing to repair
    assert told == []
    del gateway.pipelines["processor"]
    written = len(kube.writes)
    ctl.reconcile(Resource.of(body(observed=1)), "event")
    assert told == [(Endpoint("pachd:30650"), written)]  # before this pass's status write
    assert len(kube.writes) == written + 1
