"""The drift daemon's wait leaves nothing behind: every wake would otherwise leak a task
(memory grows with every sweep, and kopf waits 5 s for them on shutdown)."""

from __future__ import annotations

import asyncio

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
