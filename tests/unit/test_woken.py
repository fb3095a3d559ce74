"""The drift daemon's wait leaves nothing behind: every wake would otherwise leak a task
(memory grows with every sweep, and kopf waits 5 s for them on shutdown)."""

from __future__ import annotations

import asyncio

import pytest
from spout_operator import handlers


class Stopped:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    def __bool__(self) -> bool:
        return self._event.is_set()


def test_waiting_for_a_sweep_or_an_event_leaks_no_task() -> None:
    async def scenario() -> set[asyncio.Task[object]]:
        before = asyncio.all_tasks()
        stopped, poked = Stopped(), asyncio.Event()
        for _ in range(5):  # sweeps
            assert not await handlers._woken(stopped, poked, 0.01)  # type: ignore[arg-type]
        poked.set()
        asyncio.get_running_loop().call_later(0.01, poked.clear)
        await handlers._woken(stopped, asyncio.Event(), 0.01)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # let cancellations land
        return asyncio.all_tasks() - before

    assert asyncio.run(scenario()) == set()


def test_a_stopped_daemon_does_not_wait_for_its_pass() -> None:
    """Shutdown (SIGTERM) stops every daemon; one whose pass waits in the pool behind a slow
    pachd (or 499 other passes) must end now, not when the pass does."""
    import concurrent.futures
    import threading
    from types import SimpleNamespace

    from spout_operator.gateway import SpecWatch
    from spout_operator.sweep import Wakeups

    entered, release = threading.Event(), threading.Event()

    class Blocking:
        def pipelines_of(self, body: object) -> set[tuple[str, str]]:
            return set()

        def reconcile(self, *args: object) -> None:
            entered.set()
            release.wait(30)

    pool = concurrent.futures.ThreadPoolExecutor(1)
    body = {"metadata": {"namespace": "ns", "name": "n", "uid": "u"}, "spec": {}}

    async def scenario() -> None:
        memo = SimpleNamespace(
            wakeups=Wakeups(),
            spec_watch=SpecWatch(lambda key: None),
            controller=Blocking(),
            settings=SimpleNamespace(drift_interval_s=0.05),
            executor=pool,
            shutdown=asyncio.Event(),
        )
        stopped = Stopped()
        daemon = asyncio.ensure_future(handlers.watch_for_drift(stopped=stopped, body=body, memo=memo))  # type: ignore[arg-type]
        while not entered.is_set():
            await asyncio.sleep(0.01)
        stopped._event.set()
        await asyncio.wait_for(daemon, 5)  # the pass still blocks for 30 s

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()


def test_a_daemon_started_during_shutdown_ends_at_cleanup() -> None:
    """kopf may still start daemons after its daemon killer stopped (resources whose handlers
    finished while SIGTERM was handled); their `stopped` is never set, and kopf then waits 5 s
    before cancelling them. The cleanup handler's shutdown event ends them."""
    from types import SimpleNamespace

    from spout_operator.gateway import SpecWatch
    from spout_operator.sweep import Wakeups

    class Idle:
        def pipelines_of(self, body: object) -> set[tuple[str, str]]:
            return set()

    async def scenario() -> None:
        memo = SimpleNamespace(
            wakeups=Wakeups(),
            spec_watch=SpecWatch(lambda key: None),
            controller=Idle(),
            settings=SimpleNamespace(drift_interval_s=60.0),
            shutdown=asyncio.Event(),
        )
        body = {"metadata": {"namespace": "ns", "name": "n", "uid": "u"}, "spec": {}}
        daemon = asyncio.ensure_future(handlers.watch_for_drift(stopped=Stopped(), body=body, memo=memo))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        await handlers.close(
            memo=SimpleNamespace(  # type: ignore[arg-type]
                worker_watches=[],
                spec_watch=memo.spec_watch,
                vigil_task=asyncio.ensure_future(asyncio.sleep(60)),
                poll_executor=_NoPool(),
                executor=_NoPool(),
                controller=SimpleNamespace(gateways=SimpleNamespace(close=lambda: None)),
                shutdown=memo.shutdown,
            )
        )
        await asyncio.wait_for(daemon, 5)

    asyncio.run(scenario())


class _NoPool:
    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def test_a_pass_that_fails_still_fails_the_daemon() -> None:
    async def failing() -> None:
        raise RuntimeError("a bug in a pass")

    async def scenario() -> None:
        await handlers._unless_stopped(Stopped(), failing())  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(scenario())
