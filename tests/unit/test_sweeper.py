"""The one drift loop for every resource (sweep.Sweeper), with a fake pass: no pachd, no API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from spout_operator import handlers
from spout_operator.names import PipelineKey, Trigger
from spout_operator.resource import Resource
from spout_operator.runtime import Operator
from spout_operator.settings import Settings
from spout_operator.sweep import SWEEP_WAKE_SLACK_S, PassFn, Sweeper

WAIT_S = 5.0  # a deadline for conditions that hold within milliseconds
# An operator whose API session is never called: no watch namespaces, nothing started.
NO_API = SimpleNamespace(core=None, custom=None)


def resource(name: str) -> Resource:
    return Resource(namespace="ns", name=name, uid=f"uid-{name}", generation=1, spec={}, status={})


def pipelines_of(r: Resource) -> set[PipelineKey]:
    return {("default", r.name), ("default", f"{r.name}-processor")}


class Passes:
    """A fake pass: records each one; a resource's passes may be held until released."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, Trigger, float]] = []
        self.held: dict[str, asyncio.Event] = {}  # name -> released
        self.entered: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()

    def hold(self, name: str) -> asyncio.Event:
        self.held[name], self.entered[name] = asyncio.Event(), asyncio.Event()
        return self.held[name]

    async def __call__(self, r: Resource, trigger: Trigger, listed_since: float) -> None:
        if r.name in self.held:
            self.entered[r.name].set()
            await self.held[r.name].wait()
        self.ran.append((r.name, trigger, listed_since))
        self._changed.set()

    def names(self) -> list[str]:
        return [name for name, _, _ in self.ran]

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not check():
                self._changed.clear()
                await self._changed.wait()


def tracking(
    pass_: PassFn,
    *names: str,
    interval_s: float = 3600.0,
    settle_s: float = 0.0,
) -> Sweeper:
    """A sweeper of `pass_` that has seen the resources `names` (not started)."""
    sweeper = Sweeper(pass_, pipelines_of, interval_s=interval_s, settle_s=settle_s)
    for name in names:
        sweeper.track(resource(name))
    return sweeper


@contextlib.contextmanager
def started(sweeper: Sweeper) -> Iterator[None]:
    """The sweeper's loop running, stopped on the way out."""
    sweeper.start()
    try:
        yield
    finally:
        sweeper.stop()


async def settled(sweeper: Sweeper) -> None:
    """Until no pass of any resource is due or running."""
    async with asyncio.timeout(WAIT_S):
        while sweeper._passes:
            await asyncio.gather(*sweeper._passes.values(), return_exceptions=True)


def test_a_sweep_runs_every_indexed_resource_once() -> None:
    async def scenario() -> None:
        passes = Passes()
        sweeper = tracking(passes, "a", "b", "c")
        sweeper.track(resource("a"))  # a later event of the same resource
        sweeper.sweep(listed_since=42.0)
        await settled(sweeper)
        assert sorted(passes.ran) == [("a", "drift", 42.0), ("b", "drift", 42.0), ("c", "drift", 42.0)]

    asyncio.run(scenario())


def test_a_poke_runs_only_that_resource_after_the_change_was_seen() -> None:
    async def scenario() -> None:
        passes = Passes()
        sweeper = tracking(passes, "a", "b")
        with started(sweeper):
            sweeper.wakeups.poke(("default", "b-processor"), 17.0)
            sweeper.wakeups.poke(("default", "unknown"), 18.0)  # declared by no resource
            await passes.until(lambda: len(passes.ran) == 1)
            await settled(sweeper)
            assert passes.ran == [("b", "event", 17.0)]

    asyncio.run(scenario())


def test_a_new_operating_handle_runs_a_pass_at_once_and_other_events_do_not() -> None:
    """Pause, resume, reconcile-now and restart tokens change no generation: the index sees
    them, and wakes that resource alone, judged by a listing taken after it was seen."""

    async def scenario() -> None:
        passes = Passes()
        sweeper = tracking(passes, "a", "b")
        with started(sweeper):
            sweeper.track(resource("b"))  # an event with nothing new (kopf's own annotations)
            requested = dataclasses.replace(resource("a"), handles={"spout-operator.dev/paused": "true"})
            seen_before = time.monotonic()
            sweeper.track(requested)
            await passes.until(lambda: len(passes.ran) == 1)
            await settled(sweeper)
            assert [(name, trigger) for name, trigger, _ in passes.ran] == [("a", "event")]
            assert passes.ran[0][2] >= seen_before

    asyncio.run(scenario())


def test_pokes_during_a_pass_run_one_more_pass_after_it() -> None:
    async def scenario() -> None:
        passes = Passes()
        sweeper = tracking(passes, "a")
        released = passes.hold("a")
        sweeper.sweep(listed_since=1.0)
        await passes.entered["a"].wait()
        sweeper.wakeups.poke(("default", "a"), 5.0)
        sweeper.wakeups.poke(("default", "a-processor"), 6.0)
        sweeper.run_poked(await sweeper.wakeups.poked(0.0))
        sweeper.sweep(listed_since=2.0)  # a sweep while it is in a pass: skipped, as before
        released.set()
        await settled(sweeper)
        assert passes.ran == [("a", "drift", 1.0), ("a", "event", 6.0)]

    asyncio.run(scenario())


def test_a_forgotten_resource_is_not_run() -> None:
    async def scenario() -> None:
        passes = Passes()
        sweeper = tracking(passes, "a", "b", settle_s=0.05)
        sweeper.wakeups.poke(("default", "a"), 1.0)
        sweeper.run_poked(await sweeper.wakeups.poked(0.0))  # a's pass waits to settle
        sweeper.forget("uid-a")  # being deleted meanwhile
        sweeper.wakeups.poke(("default", "a"), 2.0)
        sweeper.run_poked(await sweeper.wakeups.poked(0.0))
        sweeper.sweep(listed_since=3.0)
        await settled(sweeper)
        assert passes.names() == ["b"] and len(sweeper) == 1 and len(sweeper.wakeups) == 1

    asyncio.run(scenario())


def test_one_slow_pass_does_not_delay_another_resources_pass() -> None:
    async def scenario() -> None:
        passes = Passes()
        sweeper = tracking(passes, "slow", "fast")
        released = passes.hold("slow")
        sweeper.sweep(listed_since=1.0)
        await passes.until(lambda: passes.names() == ["fast"])
        sweeper.wakeups.poke(("default", "fast"), 2.0)
        sweeper.run_poked(await sweeper.wakeups.poked(0.0))
        await passes.until(lambda: passes.names() == ["fast", "fast"])
        released.set()
        await settled(sweeper)
        assert passes.names() == ["fast", "fast", "slow"]

    asyncio.run(scenario())


def test_the_loop_sweeps_everything_on_the_shared_grid() -> None:
    interval = 0.05

    async def scenario() -> None:
        passes = Passes()
        sweeper = tracking(passes, "a", "b", interval_s=interval)
        with started(sweeper):
            await passes.until(lambda: len(passes.ran) >= 4)
        for _, trigger, listed_since in passes.ran:
            sweep_at = listed_since + SWEEP_WAKE_SLACK_S
            assert trigger == "drift"
            assert sweep_at / interval == pytest.approx(round(sweep_at / interval))
        sweeps = sorted({listed_since for _, _, listed_since in passes.ran})
        assert sorted(passes.names()[:2]) == ["a", "b"] and len(sweeps) >= 2

    asyncio.run(scenario())


def test_a_pass_that_fails_does_not_end_the_loop() -> None:
    async def scenario() -> None:
        ran: list[str] = []

        async def failing(r: Resource, trigger: Trigger, listed_since: float) -> None:
            ran.append(r.name)
            raise RuntimeError("a bug in a pass")

        sweeper = tracking(failing, "a")
        for listed_since in (1.0, 2.0):
            sweeper.sweep(listed_since)
            await settled(sweeper)
        assert ran == ["a", "a"]

    asyncio.run(scenario())


def test_shutdown_waits_for_no_pass() -> None:
    """Shutdown (SIGTERM, or the Lease lost) runs the cleanup handler; a pass queued in the pool
    behind a slow pachd (or 499 other passes) must not hold it up, nor run afterwards."""
    entered, release = threading.Event(), threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    ran: list[str] = []

    def blocking(name: str) -> None:
        ran.append(name)
        entered.set()
        release.wait(30)

    async def in_pool(r: Resource, trigger: Trigger, listed_since: float) -> None:
        await asyncio.get_running_loop().run_in_executor(pool, blocking, r.name)

    async def scenario() -> None:
        sweeper = tracking(in_pool, "a")
        sweeper.track(resource("b"))  # queued behind a's pass in the one thread
        sweeper.start()
        sweeper.sweep(listed_since=1.0)
        await asyncio.to_thread(entered.wait, WAIT_S)
        assert sweeper._task is not None
        tasks = [sweeper._task, *sweeper._passes.values()]
        operator = Operator(Settings(), pool, kube=NO_API)  # type: ignore[arg-type]
        operator.sweeper = sweeper  # the one whose passes are queued above
        close: Any = handlers.close  # kopf types the decorated handler by its own signature
        await close(memo=kopf.Memo(operator=operator))
        async with asyncio.timeout(WAIT_S):  # a's pass still blocks for 30 s
            await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.cancelled() for task in tasks)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()
    assert ran == ["a"]  # b's pass, still queued, never ran


def test_passes_run_in_the_context_of_the_handler_that_started_the_sweep() -> None:
    """kopf.event needs the object-handling context kopf gives handlers (its event queue lives
    there); the startup handler's context has none, so the first `index` call starts the sweep."""
    queue: contextvars.ContextVar[str] = contextvars.ContextVar("queue")
    seen: list[str] = []
    ran = asyncio.Event()

    async def pass_(r: Resource, trigger: Trigger, listed_since: float) -> None:
        seen.append(queue.get("none"))
        ran.set()

    async def scenario() -> None:
        sweeper = tracking(pass_, interval_s=0.02)
        operator = Operator(Settings(), concurrent.futures.ThreadPoolExecutor(1), kube=NO_API)  # type: ignore[arg-type]
        operator.sweeper = sweeper  # the one whose passes record their context
        body = {"metadata": {"namespace": "ns", "name": "a", "uid": "uid-a"}, "spec": {}}

        async def as_kopf_would() -> None:
            queue.set("kopf's event queue")
            index: Any = handlers.index  # kopf types the decorated handler by its own signature
            await index(event={"type": None}, body=body, memo=kopf.Memo(operator=operator))

        await asyncio.create_task(as_kopf_would())
        try:
            async with asyncio.timeout(WAIT_S):  # the next sweep, within 0.02 s
                await ran.wait()
        finally:
            sweeper.stop()
        assert seen[0] == "kopf's event queue"

    asyncio.run(scenario())
