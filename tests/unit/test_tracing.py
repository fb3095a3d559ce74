"""The trace of a pass (tracing.py): each step on its path is observed by name and logged with
its offset since the change was seen; nothing is recorded outside a traced pass."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from spout_operator import gateway, logs, tracing
from spout_operator.controller import PassResult
from spout_operator.resource import Resource
from spout_operator.runtime import Operator
from spout_operator.settings import Settings


def count(step: str) -> float:
    return REGISTRY.get_sample_value("spout_operator_pass_step_duration_seconds_count", {"step": step}) or 0.0


def test_a_step_of_a_traced_pass_is_observed_and_logged_from_the_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = count("pachd InspectPipeline")
    caplog.set_level(logging.DEBUG, logger=tracing.__name__)
    with (
        tracing.traced("team-a/spout101", "change", origin=time.monotonic() - 2.0),
        gateway.timed("InspectPipeline"),
    ):
        pass
    assert count("pachd InspectPipeline") == before + 1
    [line] = [r.getMessage() for r in caplog.records if r.name == tracing.__name__]
    assert line.startswith("Trace team-a/spout101 change: pachd InspectPipeline +2.0")
    assert line.endswith(" ms)")


def test_a_step_that_fails_still_counts() -> None:
    before = count("pachd CreatePipeline")
    with tracing.traced("ns/a", "change"), pytest.raises(grpc.RpcError), gateway.timed("CreatePipeline"):
        raise grpc.RpcError()
    assert count("pachd CreatePipeline") == before + 1


def test_nothing_is_recorded_outside_a_traced_pass(caplog: pytest.LogCaptureFixture) -> None:
    before = count("pachd ListPipeline")
    caplog.set_level(logging.DEBUG, logger=tracing.__name__)
    with gateway.timed("ListPipeline"):
        pass
    assert count("pachd ListPipeline") == before
    assert not [r for r in caplog.records if r.name == tracing.__name__]
    assert tracing.current() is None


def test_the_trace_ends_with_its_pass() -> None:
    with tracing.traced("ns/a", "poll") as trace:
        assert tracing.current() is trace
    assert tracing.current() is None


def test_trace_lines_are_debug_and_turned_on_alone() -> None:
    """SPOUT_OPERATOR_TRACE=1: the trace's lines, not kopf's debug logs."""
    logger = logging.getLogger(tracing.__name__)
    level = logger.level
    try:
        logs.configure(trace=True)
        assert logger.isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("kopf").isEnabledFor(logging.DEBUG)
    finally:
        logger.setLevel(level)
        logs.configure()


def test_passes_count_from_the_watch_event_of_the_change_until_it_is_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handler's pass and the passes after it read as one timeline from the event that
    showed the change; `Ready` is marked once, by the pass that made it true."""
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": "a", "uid": "uid-a", "generation": 1},
        "spec": {},
    }
    summaries = iter(["Progressing", "Ready", "Ready"])

    class Controller:
        def reconcile(self, resource: Resource, trigger: str, listed_since: float) -> PassResult:
            time.sleep(0.01)
            return PassResult({"summary": next(summaries), "observedGeneration": 1}, [], None)

    caplog.set_level(logging.DEBUG, logger=tracing.__name__)
    before = count("Ready")

    async def scenario() -> list[str]:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        operator = Operator(Settings(), pool, kube=SimpleNamespace(core=None, custom=None))  # type: ignore[arg-type]
        operator.controller = Controller()  # type: ignore[assignment]
        operator.sweeper.start = lambda context=None: None  # type: ignore[method-assign]
        operator.index({"type": "ADDED"}, body)
        seen_at = time.monotonic()
        await asyncio.sleep(0.05)  # kopf's finalizer round trip, say
        for trigger in ("change", "poll", "drift"):
            await operator._pass(pool, Resource.of(body), trigger)  # type: ignore[arg-type]
        pool.shutdown()
        assert time.monotonic() - seen_at < 5
        return [r.getMessage() for r in caplog.records if r.name == tracing.__name__]

    lines = asyncio.run(scenario())
    queued = [line for line in lines if "change: pass queued" in line]
    assert queued and float(queued[0].split("+")[1].split("s")[0]) >= 0.05  # from the event, not the pass
    assert [line.split(":")[0] for line in lines if ": Ready " in line] == ["Trace ns/a poll"]
    assert count("Ready") == before + 1


def test_overlapping_passes_that_both_see_ready_mark_it_once() -> None:
    """The handler's pass and an event's pass of one resource may run at once; only the first
    to find the change Ready reports it (the bench counts one Ready per apply)."""
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": "b", "uid": "uid-b", "generation": 1},
        "spec": {},
    }
    both_in = threading.Barrier(2, timeout=5)

    class Controller:
        def reconcile(self, resource: Resource, trigger: str, listed_since: float) -> PassResult:
            both_in.wait()  # the two passes overlap
            return PassResult({"summary": "Ready", "observedGeneration": 1}, [], None)

    before = count("Ready")

    async def scenario() -> None:
        pool = concurrent.futures.ThreadPoolExecutor(2)
        operator = Operator(Settings(), pool, kube=SimpleNamespace(core=None, custom=None))  # type: ignore[arg-type]
        operator.controller = Controller()  # type: ignore[assignment]
        operator.sweeper.start = lambda context=None: None  # type: ignore[method-assign]
        operator.index({"type": "ADDED"}, body)
        await asyncio.gather(
            *(operator._pass(pool, Resource.of(body), trigger) for trigger in ("change", "event"))  # type: ignore[arg-type]
        )
        pool.shutdown()

    asyncio.run(scenario())
    assert count("Ready") == before + 1
