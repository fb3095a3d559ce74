"""The controller's pass, without kopf or an API server: status and Events come back as values."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import yaml
from spout_operator.controller import Controller, Resource
from spout_operator.gateway import Endpoint, Gateway, Gateways, PachdUnavailable
from spout_operator.settings import Settings
from test_reconcile import FakeGateway

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "spout.yaml"


class OneGateway(Gateways):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__(timeout_s=1)
        self.gateway = gateway

    def get(self, endpoint: Endpoint) -> Gateway:
        return self.gateway


class NoKube:
    """The pass reads the API only through its resolver."""


class FakeResolver:
    """Every namespace may use the default connection, an address the fake gateway answers for."""

    def endpoint(self, ref: Any, namespace: str, not_before: float = 0.0) -> Endpoint:
        return Endpoint("pachd:30650")

    def namespace_terminating(self, namespace: str) -> bool:
        return False


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


def test_deletion_waits_for_a_running_pass_and_releases_bookkeeping() -> None:
    gateway = FakeGateway()
    ctl = controller(gateway)
    ctl.reconcile(Resource.of(body()), "change")
    inside, release = threading.Event(), threading.Event()
    original = gateway.inspect

    def slow_inspect(name: str, project: str) -> Any:
        inside.set()
        release.wait(5)
        return original(name, project)

    gateway.inspect = slow_inspect  # type: ignore[method-assign]
    repair = threading.Thread(target=ctl.reconcile, args=(Resource.of(body(observed=1)), "event"))
    repair.start()
    assert inside.wait(5)
    gateway.inspect = original  # type: ignore[method-assign]
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
    assert later is not None and "managed" not in later.status  # written once, not every pass


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
