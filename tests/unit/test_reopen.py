"""A commit stream kept open (reopen.keep_open): back-off grows while nothing arrives, resets
once something does, each opening is closed before the next, and cancelling ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from spout_operator.reopen import keep_open

FAILS = ConnectionError("pachd away")


class Runaway(BaseException):
    """Opened again after the cancel: keep_open catches no BaseException, so this ends it."""


def test_back_off_grows_while_nothing_arrives_resets_after_items_and_cancel_ends_it() -> None:
    # Each opening: the items it sends, then how it ends (an error, or None: pachd's deadline).
    # After the script, a stream that sends nothing and never ends.
    script: list[tuple[list[str], Exception | None]] = [
        ([], FAILS),
        ([], FAILS),
        ([], FAILS),
        ([], FAILS),  # at the ceiling
        (["c1", "c2"], FAILS),  # it delivered: opened again at once, the back-off starts over
        ([], FAILS),
        ([], None),  # ended without a word: backs off too
        (["c3", "bad"], None),  # the receiver failed on "bad": ends this opening, like an error
    ]
    log: list[str] = []
    received: list[str] = []
    blocked = asyncio.Event()

    async def opening() -> AsyncGenerator[str, None]:
        n = sum(1 for line in log if line.startswith("open"))
        log.append(f"open {n}")
        try:
            if n > len(script):
                raise Runaway
            if n == len(script):
                blocked.set()
                await asyncio.Event().wait()
            items, end = script[n]
            for item in items:
                yield item
            if end is not None:
                raise end
        finally:
            log.append(f"close {n}")

    def receive(item: str) -> None:
        if item == "bad":
            raise ValueError(item)
        received.append(item)

    async def sleep(delay: float) -> None:
        log.append(f"sleep {delay:g}")
        await asyncio.sleep(0)

    async def scenario() -> None:
        task = asyncio.create_task(keep_open(opening, receive, "test stream", (1.0, 8.0), sleep))
        await asyncio.wait_for(blocked.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert received == ["c1", "c2", "c3"]
    delays = [line for line in log if line.startswith("sleep")]
    assert delays == [f"sleep {d}" for d in (2, 4, 8, 8, 0, 2, 4, 0)]
    # Every opening is closed before the next wait, the last one by the cancel.
    assert log == [
        line
        for n, delay in enumerate([*delays, None])
        for line in (f"open {n}", f"close {n}", delay)
        if line is not None
    ]
