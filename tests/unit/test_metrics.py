"""The SRE metrics: leader gauge, pass errors, durations and in-flight, pachd call latency by
gRPC code, resources by condition; and /metrics served from the process's start."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from spout_operator import __main__ as entry
from spout_operator import gateway, metrics
from spout_operator.resource import Resource
from test_controller import PAUSED, annotated, body, controller
from test_reconcile import FakeGateway


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def status(*conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {"conditions": [{"type": t, "status": s, "reason": r} for t, s, r in conditions]}


@pytest.mark.parametrize(
    ("given", "error"),
    [
        (None, None),
        (status(("Ready", "True", "Running"), ("Synced", "True", "Synced")), None),
        (
            status(("Ready", "False", "PachdUnavailable"), ("Synced", "False", "PachdUnavailable")),
            "PachdUnavailable",
        ),
        (
            status(
                ("Ready", "False", "InvalidSpec"),
                ("Synced", "False", "InvalidSpec"),
                ("Stalled", "True", "InvalidSpec"),
            ),
            "InvalidSpec",
        ),
        (
            status(
                ("Ready", "False", "PipelineNotRunning"),
                ("Synced", "True", "Synced"),
                ("Stalled", "True", "AutoRestartLimit"),
            ),
            "AutoRestartLimit",
        ),
        # Waiting for pachd or for workers, or a pause: no error of the pass.
        (status(("Ready", "False", "WorkersStarting"), ("Synced", "True", "Synced")), None),
        (status(("Ready", "True", "Running"), ("Synced", "False", "ReconcilePaused")), None),
        (status(("Ready", "Unknown", "Progressing"), ("Synced", "Unknown", "Progressing")), None),
    ],
)
def test_a_pass_counts_as_an_error_by_its_conditions(given: dict[str, Any] | None, error: str | None) -> None:
    assert metrics.pass_error(given) == error


def test_a_pass_is_in_flight_while_it_runs_and_timed_by_trigger() -> None:
    before = sample("spout_operator_reconcile_duration_seconds_count", trigger="drift")
    inside = threading.Event()
    with metrics.timed_pass("drift"):
        assert sample("spout_operator_reconciles_in_flight") >= 1
        inside.set()
    assert sample("spout_operator_reconciles_in_flight") == 0
    assert sample("spout_operator_reconcile_duration_seconds_count", trigger="drift") == before + 1


def test_a_pass_that_raises_is_an_error_and_leaves_flight() -> None:
    before = sample("spout_operator_reconcile_errors_total", reason="Exception")
    with pytest.raises(RuntimeError), metrics.timed_pass("event"):
        raise RuntimeError("boom")
    assert sample("spout_operator_reconcile_errors_total", reason="Exception") == before + 1
    assert sample("spout_operator_reconciles_in_flight") == 0


def test_the_leader_gauge_asks_at_each_scrape() -> None:
    leading = [False]
    metrics.lead_by(lambda: leading[0])
    assert sample("spout_operator_leader") == 0
    leading[0] = True
    assert sample("spout_operator_leader") == 1
    leading[0] = False  # a lost Lease shows at the next scrape, not a frozen 1
    assert sample("spout_operator_leader") == 0


def test_resources_are_counted_by_condition_and_cleared_when_the_operator_stops() -> None:
    readiness = metrics.Readiness()
    readiness.record("a", 1, ready=True)
    readiness.record("b", 1, ready=False, stalled=True)
    readiness.record("c", 1, ready=True, paused=True)
    assert sample("spout_operator_resources_by_condition", condition="Ready", status="True") == 2
    assert sample("spout_operator_resources_by_condition", condition="Ready", status="False") == 1
    assert sample("spout_operator_resources_by_condition", condition="Stalled", status="True") == 1
    assert sample("spout_operator_resources_by_condition", condition="Paused", status="True") == 1
    readiness.record("b", 2, ready=True)  # fixed: no longer stalled
    assert sample("spout_operator_resources_by_condition", condition="Stalled", status="True") == 0
    readiness.forget("c")
    assert sample("spout_operator_resources_by_condition", condition="Paused", status="False") == 2
    readiness.clear()  # a stepped-down leader answers for no resource
    for condition in metrics.COUNTED_CONDITIONS:
        for value in ("True", "False"):
            assert sample("spout_operator_resources_by_condition", condition=condition, status=value) == 0
    assert sample("spout_operator_resources", ready="True") == 0


def test_the_paused_gauge_counts_paused_resources_until_unpaused_or_deleted() -> None:
    ctl = controller(FakeGateway())
    ctl.reconcile(Resource.of(body()), "change")
    assert sample("spout_operator_resources_paused") == 0
    ctl.reconcile(annotated(PAUSED, observed=1), "event")
    assert sample("spout_operator_resources_paused") == 1
    ctl.reconcile(annotated({}, observed=1), "event")
    assert sample("spout_operator_resources_paused") == 0
    ctl.reconcile(annotated(PAUSED, observed=1), "event")
    assert sample("spout_operator_resources_paused") == 1
    assert ctl.delete(annotated(PAUSED, observed=1)).done  # a paused resource deletes: no longer counted
    assert sample("spout_operator_resources_paused") == 0


def test_metrics_stalled_reads_the_condition() -> None:
    assert metrics.stalled(status(("Stalled", "True", "InvalidSpec")))
    assert not metrics.stalled(status(("Ready", "True", "Running")))


class _Refused(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "refused"


def test_pachd_calls_are_timed_by_method_and_grpc_code() -> None:
    def count(code: str) -> float:
        return sample("spout_operator_pachd_call_duration_seconds_count", method="TestMethod", code=code)

    ok, unavailable = count("OK"), count("UNAVAILABLE")
    calls = sample("spout_operator_pachd_calls_total", method="TestMethod")
    with gateway.timed("TestMethod"):
        pass
    with pytest.raises(grpc.RpcError), gateway.timed("TestMethod"):
        raise _Refused(grpc.StatusCode.UNAVAILABLE)
    assert count("OK") == ok + 1
    assert count("UNAVAILABLE") == unavailable + 1
    assert sample("spout_operator_pachd_calls_total", method="TestMethod") == calls + 2


@pytest.mark.parametrize("election", ["false", "true"])
def test_every_replica_serves_metrics_from_the_start_of_its_process(
    monkeypatch: pytest.MonkeyPatch, election: str
) -> None:
    """A standby serves /metrics too (before it ever leads): served before the operator or
    the campaign runs, whichever mode."""
    served: list[int] = []
    ran: list[str] = []

    def run(coroutine: Any) -> None:
        ran.append(coroutine.__qualname__)
        assert served == [9123], "metrics must be served before the operator or the campaign starts"
        coroutine.close()

    monkeypatch.setenv("SPOUT_OPERATOR_METRICS_PORT", "9123")
    monkeypatch.setenv("SPOUT_OPERATOR_LEADER_ELECTION", election)
    monkeypatch.setattr(metrics, "serve", served.append)
    monkeypatch.setattr(entry.asyncio, "run", run)
    monkeypatch.setattr(entry.kopf, "configure", lambda **_: None)
    assert entry.main() == 0
    assert ran == ["_elected" if election == "true" else "_operator"]
