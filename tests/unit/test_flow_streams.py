"""The data flow's commit streams (two per pair, followed from passes) and a pass that shows
the flow: live gauges per commit, status writes only at the resolution or a new verdict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from spout_operator import flow_streams
from spout_operator.controller import Controller
from spout_operator.dataflow import Expectations, Failure, FlowView
from spout_operator.flow_streams import Commit, FlowWatch
from spout_operator.names import PipelineKey
from spout_operator.pachd_api import Endpoint
from spout_operator.resource import Resource
from spout_operator.settings import Settings
from spout_operator.spec_streams import AioChannels
from test_controller import FakeResolver, OneGateway, body
from test_reconcile import FakeGateway

PACHD = Endpoint("grpc://pachd-a:30650")
SPOUT: PipelineKey = ("default", "spout")
PROCESSOR: PipelineKey = ("default", "processor")
LABELS = ("team-a", "spout101")
T0 = 1_800_000_000.0


class FakePachd:
    """Streams that yield what a test puts in their queue."""

    def __init__(self) -> None:
        self.queues: dict[PipelineKey, asyncio.Queue[Commit | None]] = {}
        self.opened: list[PipelineKey] = []

    def queue(self, key: PipelineKey) -> asyncio.Queue[Commit | None]:
        return self.queues.setdefault(key, asyncio.Queue())

    async def stream(self, endpoint: Endpoint, key: PipelineKey) -> AsyncIterator[Commit]:
        self.opened.append(key)
        while (commit := await self.queue(key).get()) is not None:
            yield commit


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"namespace": LABELS[0], "name": LABELS[1]})


async def settle(watch: FlowWatch, uid: str, lag: int) -> FlowView:
    for _ in range(200):
        await asyncio.sleep(0.01)
        view = watch.view(uid)
        if view is not None and view.caught_up and view.lag == lag:
            return view
    raise AssertionError(f"lag never {lag}: {watch.view(uid)}")


def test_a_pair_is_followed_on_two_streams_and_its_gauges_move_with_each_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flow_streams, "HISTORY_S", 0.05)

    async def scenario() -> None:
        pachd = FakePachd()
        watch = FlowWatch(pachd.stream, clock=lambda: T0)
        watch.follow("u1", LABELS, PACHD, (SPOUT, PROCESSOR), Expectations(commit_within_s=60))
        watch.follow("u1", LABELS, PACHD, (SPOUT, PROCESSOR), Expectations(commit_within_s=60))  # the same
        await asyncio.sleep(0.01)
        assert sorted(pachd.opened) == sorted([SPOUT, PROCESSOR])
        for i in range(3):
            pachd.queue(SPOUT).put_nowait(Commit(f"c{i}", T0 + i, T0 + i + 0.5))
        await settle(watch, "u1", 3)
        assert gauge("spout_operator_processor_lag_commits") == 3
        assert gauge("spout_operator_spout_last_commit_timestamp_seconds") == T0 + 2.5
        assert gauge("spout_operator_expected_commit_within_seconds") == 60
        pachd.queue(PROCESSOR).put_nowait(
            Commit("c2", T0 + 2, T0 + 9, error="job timed out\n")
        )  # a killed job
        pachd.queue(PROCESSOR).put_nowait(Commit("c1", T0 + 1, T0 + 8))
        await settle(watch, "u1", 1)
        assert gauge("spout_operator_processor_lag_commits") == 1
        assert gauge("spout_operator_processor_last_finished_timestamp_seconds") == T0 + 8
        view = watch.view("u1")
        assert view is not None and view.last_failure == Failure("c2", T0 + 9, "job timed out")
        # Another pair (the resource's spec renamed a pipeline): the old streams end.
        watch.follow("u1", LABELS, PACHD, (SPOUT, ("default", "other")), Expectations())
        await asyncio.sleep(0.01)
        assert pachd.opened[-1] == ("default", "other") or pachd.opened[-2] == ("default", "other")
        assert gauge("spout_operator_expected_commit_within_seconds") is None
        watch.forget("u1")
        assert len(watch) == 0 and watch.view("u1") is None
        assert gauge("spout_operator_processor_lag_commits") is None
        await watch.close()

    asyncio.run(scenario())


def test_a_pass_with_nothing_to_follow_forgets_the_pair() -> None:
    async def scenario() -> None:
        pachd = FakePachd()
        watch = FlowWatch(pachd.stream, clock=lambda: T0)
        watch.follow("u1", LABELS, PACHD, (SPOUT, PROCESSOR), Expectations())
        watch.follow("u1", LABELS, None, None, Expectations())  # pachd could not be asked
        assert len(watch) == 0
        await watch.close()

    asyncio.run(scenario())


class StaticFlow:
    def __init__(self, view: FlowView) -> None:
        self.current = view

    def view(self, uid: str) -> FlowView | None:
        return self.current


class CountingKube:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.writes.append(status)
        return True


def test_sweeps_write_the_flow_at_the_resolution_and_a_new_verdict_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [T0 + 100]
    monkeypatch.setattr("spout_operator.controller.time.time", lambda: now[0])
    flow = StaticFlow(FlowView(T0, True, T0 + 95, 0, T0 + 96))
    kube = CountingKube()
    ctl = Controller(
        Settings(dataflow_resolution_s=60),
        OneGateway(FakeGateway()),
        kube,  # type: ignore[arg-type]
        FakeResolver(),  # type: ignore[arg-type]
        flow=flow,
    )
    raw = body(expectations={"commitWithinSeconds": 60, "maxLag": 2})
    first = ctl.reconcile(Resource.of(raw), "change")
    assert first is not None and first.status["dataFlow"]["lag"] == 0
    flowing = {c["type"]: c["status"] for c in first.status["conditions"]}["DataFlowing"]
    assert flowing == "True"
    written = len(kube.writes)
    raw["status"] = first.status
    # Commits every 10-30 s, the lag flipping: sweeps within the resolution write nothing.
    for step, lag in ((20, 1), (40, 0), (50, 1)):
        now[0] = T0 + 100 + step
        flow.current = FlowView(T0, True, T0 + 95 + step, lag, T0 + 96 + step)
        result = ctl.reconcile(Resource.of(raw), "drift")
        assert result is not None and result.events == []
    assert len(kube.writes) == written
    # The processor stops; three commits later the lag is beyond maxLag: written at once, one Event.
    now[0] = T0 + 160
    flow.current = FlowView(T0, True, T0 + 155, 3, T0 + 146)
    behind = ctl.reconcile(Resource.of(raw), "drift")
    assert behind is not None
    assert [(e.type, e.reason) for e in behind.events] == [("Warning", "ProcessorBehind")]
    assert len(kube.writes) == written + 1
    assert kube.writes[-1]["dataFlow"]["lag"] == 3
    ready = {c["type"]: c["status"] for c in behind.status["conditions"]}
    assert ready["Ready"] == "True" and ready["DataFlowing"] == "False"


def test_the_spec_and_flow_streams_share_one_channel_per_pachd() -> None:
    async def scenario() -> None:
        channels = AioChannels()
        first = channels.get(PACHD)
        assert channels.get(PACHD) is first and len(channels) == 1
        channels.used("spec", {PACHD})
        channels.used("flow", {PACHD})
        channels.used("spec", set())  # the flow streams still use it
        assert len(channels) == 1 and channels.get(PACHD) is first
        channels.used("flow", set())  # nobody: closed
        assert len(channels) == 0
        await asyncio.sleep(0)
        await channels.close()

    asyncio.run(scenario())
