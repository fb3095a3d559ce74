"""Worker events wake exactly the resources that declare the changed pipeline (no API)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from types import SimpleNamespace
from typing import Any

import pytest
from spout_operator.names import PipelineKey, worker_pipeline
from spout_operator.resource import Resource
from spout_operator.runtime import Operator
from spout_operator.settings import Settings
from spout_operator.sweep import VIGIL_POLL_S, Vigil, Wakeups, keep_vigil
from spout_operator.watches import ServiceWatch, WorkerWatch, rc_fingerprint


def rc(name: str, pipeline: str, spec_commit: str = "c1", replicas: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"pipelineName": pipeline, "pipelineProject": "default"},
            "annotations": {"specCommit": spec_commit},
        },
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": 0},
    }


def test_a_poke_wakes_only_the_resources_that_declare_the_pipeline() -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        wakeups.register("a", {("default", "spout"), ("default", "proc")})
        wakeups.register("b", {("default", "other")})
        wakeups.poke(("default", "proc"), 5.0)
        wakeups.poke(("default", "spout"), 5.0)
        wakeups.poke(("elsewhere", "other"), 5.0)
        assert await wakeups.poked(1.0) == {"a"}
        assert await wakeups.poked(0.01) == set()  # taken; nothing new within the timeout

    asyncio.run(scenario())


def test_the_loop_waits_for_a_poke() -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        wakeups.register("a", {("default", "spout")})
        asyncio.get_running_loop().call_soon(wakeups.poke, ("default", "spout"), 1.0)
        assert await wakeups.poked(30.0) == {"a"}

    asyncio.run(scenario())


def test_a_pass_after_pokes_judges_by_a_listing_newer_than_the_last_change_seen() -> None:
    wakeups = Wakeups()
    wakeups.register("a", {("default", "spout"), ("default", "proc")})
    wakeups.poke(("default", "proc"), 7.0)
    wakeups.poke(("default", "spout"), 6.0)  # an older change, reported later
    assert wakeups.take_since("a") == 7.0
    assert wakeups.take_since("a") == 0.0  # taken: the next pass has no change to wait for
    wakeups.poke(("default", "proc"), 9.0)
    wakeups.unregister("a")
    assert wakeups.take_since("a") == 0.0


def test_re_registering_replaces_the_keys_and_unregister_forgets_all() -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        wakeups.register("a", {("default", "old")})
        wakeups.poke(("default", "old"), 3.0)
        wakeups.register("a", {("default", "new")})  # the spout was renamed in the spec
        assert wakeups.take_since("a") == 3.0  # a poke seen before stands
        wakeups.poke(("default", "old"), 4.0)
        assert await wakeups.poked(0.01) == {"a"}  # the one from before the rename only
        assert wakeups.take_since("a") == 0.0
        wakeups.poke(("default", "new"), 5.0)
        wakeups.unregister("a")
        assert await wakeups.poked(0.01) == set() and len(wakeups) == 0
        wakeups.poke(("default", "new"), 6.0)
        assert await wakeups.poked(0.01) == set()

    asyncio.run(scenario())


def test_fingerprint_moves_on_update_and_stop_not_on_status() -> None:
    base = rc("default-spout-v1", "spout")
    assert worker_pipeline(base) == ("default", "spout")
    assert rc_fingerprint(rc("x", "spout", spec_commit="c2")) != rc_fingerprint(base)
    assert rc_fingerprint(rc("x", "spout", replicas=0)) != rc_fingerprint(base)
    ready = rc("x", "spout")
    ready["status"] = {"readyReplicas": 1}
    assert rc_fingerprint(ready) == rc_fingerprint(base)
    assert worker_pipeline({"metadata": {"labels": {}}}) is None


class ObservingWatch(WorkerWatch):
    """The watch's bookkeeping without a thread or an API server."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        super().__init__(None, "pachyderm", self.changes.append)  # type: ignore[arg-type]


def test_the_first_listing_learns_and_later_changes_report() -> None:
    watch = ObservingWatch()
    watch._observe("default-spout-v1", rc("default-spout-v1", "spout"), first=True)
    assert watch.changes == []
    watch._observe("default-spout-v1", rc("default-spout-v1", "spout"))  # status-only resync
    assert watch.changes == []
    watch._observe("default-spout-v1", rc("default-spout-v1", "spout", replicas=0))  # stopped
    watch._observe("default-proc-v2", rc("default-proc-v2", "proc", spec_commit="c9"))  # updated
    assert watch.changes == [("default", "spout"), ("default", "proc")]


def test_a_vigil_lists_a_pachd_for_a_while_after_drift_there() -> None:
    vigil: Vigil[str] = Vigil(duration_s=10.0)
    assert vigil.due(0.0) == []  # nothing is listed between sweeps while nothing drifts
    vigil.drift_seen("pachd-a", 100.0)
    assert vigil.due(105.0) == ["pachd-a"]
    vigil.drift_seen("pachd-a", 108.0)  # more drift: the vigil lasts from the latest
    vigil.drift_seen("pachd-b", 108.0)
    assert sorted(vigil.due(115.0)) == ["pachd-a", "pachd-b"]
    assert vigil.due(118.5) == []


def test_drift_anywhere_puts_every_answering_pachd_under_vigil() -> None:
    """pachd tells of a deletion or a stop seconds late (its throttled RC changes): a burst
    that also reached pachd-b is found there by listing, not by waiting for its events."""
    vigil: Vigil[str] = Vigil(duration_s=10.0)
    vigil.drift_seen("pachd-a", 100.0, answering=["pachd-a", "pachd-b"])  # pachd-c is down
    assert sorted(vigil.due(105.0)) == ["pachd-a", "pachd-b"]
    assert vigil.due(110.5) == []


def test_a_pipeline_flapping_on_one_pachd_keeps_only_that_pachd_listed() -> None:
    vigil: Vigil[str] = Vigil(duration_s=10.0)
    answering = ["pachd-a", "pachd-b"]
    vigil.drift_seen("pachd-a", 100.0, answering)  # drift begins on pachd-a: both listed
    for now in (104.0, 108.0, 112.0, 116.0):  # repaired again and again: it flaps
        vigil.drift_seen("pachd-a", now, answering)
    assert vigil.due(117.0) == ["pachd-a"]  # pachd-b: 10 s from the start, not from each repair
    vigil.drift_seen("pachd-b", 118.0, answering)  # drift of its own on pachd-b
    assert sorted(vigil.due(119.0)) == ["pachd-a", "pachd-b"]


def test_a_slow_pachd_under_vigil_does_not_hold_up_the_listings_of_the_others() -> None:
    async def scenario() -> None:
        vigil: Vigil[str] = Vigil(duration_s=60.0)
        vigil.drift_seen("fast", time.monotonic(), answering=["slow"])
        listed = {"fast": 0, "slow": 0}
        fast_listed_thrice, never = asyncio.Event(), asyncio.Event()

        async def listing(where: str) -> None:
            listed[where] += 1
            if where == "slow":
                await never.wait()  # a pachd that does not answer within the test
            elif listed["fast"] == 3:
                fast_listed_thrice.set()

        keeping = asyncio.create_task(keep_vigil(vigil, listing))
        await asyncio.wait_for(fast_listed_thrice.wait(), 10 * VIGIL_POLL_S)
        keeping.cancel()
        assert listed["slow"] == 1  # listed again only once its listing is back

    asyncio.run(scenario())


def test_a_relisting_and_a_deletion_report_the_rcs_that_went() -> None:
    watch = ObservingWatch()
    watch.listed([rc("default-spout-v1", "spout"), rc("default-proc-v1", "proc")])  # learns only
    assert watch.changes == []
    watch.listed([rc("default-spout-v1", "spout")])  # the processor's RC went while the watch was down
    assert watch.changes == [("default", "proc")]
    watch.event("DELETED", rc("default-spout-v1", "spout"))
    watch.event("DELETED", rc("default-spout-v1", "spout"))  # already gone: nothing more
    assert watch.changes == [("default", "proc"), ("default", "spout")]


def service(pipeline: str) -> dict[str, Any]:
    return {"metadata": {"name": f"default-{pipeline}-v1", "labels": {"pipelineName": pipeline}}}


def test_a_worker_service_reports_when_it_appears_or_goes_only() -> None:
    changes: list[PipelineKey] = []
    watch = ServiceWatch(None, "pachyderm", changes.append)  # type: ignore[arg-type]
    watch.listed([service("old")])  # learns only
    watch.event("ADDED", service("spout"))
    watch.event("MODIFIED", service("spout"))  # pachd never changes it: no news
    watch.event("DELETED", service("old"))
    assert changes == [("default", "spout"), ("default", "old")]


def test_a_worker_service_wakes_the_wait_of_a_starting_pair_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """pachd writes RUNNING right after it made the worker Service: that event ends the
    handler's wait for the pair at once (its polls are the safety net: a minute here, so only
    the event can end it), the look judging by a listing started after the event."""
    monkeypatch.setattr("spout_operator.runtime.STARTING_POLL_S", 60.0)
    spout, processor = ("default", "s"), ("default", "p")
    body: dict[str, Any] = {"metadata": {"namespace": "ns", "name": "a", "uid": "a", "generation": 1}}
    looks: list[tuple[str, float]] = []

    class Result:
        """What pachd shows: the pair starting, then running."""

        def __init__(self, state: str) -> None:
            self.status = {"summary": "Ready" if state == "RUNNING" else "Progressing"}
            self.starting, self.pair, self.events, self.endpoint = (
                state == "STARTING",
                (spout, processor),
                [],
                None,
            )
            self.heads, self.repairs = {}, 0

        def ready(self, generation: int) -> bool:
            return not self.starting

    async def scenario() -> None:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        operator = Operator(Settings(), pool, kube=SimpleNamespace(core=None, custom=None))  # type: ignore[arg-type]
        states = iter(["STARTING", "RUNNING"])

        async def pass_(executor: Any, resource: Resource, trigger: str, listed_since: float = 0.0) -> Any:
            looks.append((trigger, listed_since))
            return Result(next(states))

        operator._pass = pass_  # type: ignore[method-assign]
        operator.starts.seen(spout, 1.0)  # nothing starting yet: nobody to wake
        polls = asyncio.create_task(operator.apply(body))
        while spout not in operator.starts:
            await asyncio.sleep(0.001)
        operator.starts.seen(("default", "other"), 2.0)  # another pipeline's: not this wait's
        operator.starts.seen(processor, 3.0)
        await asyncio.wait_for(polls, 5.0)
        assert spout not in operator.starts and processor not in operator.starts
        pool.shutdown()

    asyncio.run(scenario())
    assert looks == [("change", 0.0), ("poll", 3.0)]


def test_the_handler_s_polls_judge_the_resource_as_its_newest_event_shows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler's body has none of the status its own passes write later (an automatic
    restart's count): a poll judging by it would restart a pipeline again and again."""
    monkeypatch.setattr("spout_operator.runtime.STARTING_POLL_S", 0.01)
    pair = (("default", "s"), ("default", "p"))
    body: dict[str, Any] = {"metadata": {"namespace": "ns", "name": "a", "uid": "a", "generation": 1}}
    newer = {**body, "status": {"autoRestart": {"restarts": 1}}}
    seen: list[dict[str, Any]] = []

    async def scenario() -> None:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        operator = Operator(Settings(), pool, kube=SimpleNamespace(core=None, custom=None))  # type: ignore[arg-type]
        operator.sweeper.track(Resource.of(newer))  # the event of the first pass's status write
        states = iter([True, True, False])

        async def pass_(executor: Any, resource: Resource, trigger: str, listed_since: float = 0.0) -> Any:
            seen.append(dict(resource.status))
            return SimpleNamespace(starting=next(states), pair=pair)

        operator._pass = pass_  # type: ignore[method-assign]
        await asyncio.wait_for(operator.apply(body), 5.0)
        pool.shutdown()

    asyncio.run(scenario())
    assert seen == [{}, {"autoRestart": {"restarts": 1}}, {"autoRestart": {"restarts": 1}}]
