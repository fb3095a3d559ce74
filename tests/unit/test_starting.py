"""Waiting for pipelines to start: pachd's worker Service events cut the poll short."""

from __future__ import annotations

import asyncio
import time

import pytest
from spout_operator import starting
from spout_operator.starting import Starts

SPOUT, PROCESSOR = ("default", "s"), ("default", "p")


def test_an_event_for_a_followed_pipeline_ends_the_wait_with_its_time() -> None:
    async def scenario() -> None:
        starts = Starts()
        with starts.waiting() as wait:
            starts.follow(wait, {SPOUT, PROCESSOR})
            asyncio.get_running_loop().call_later(0.01, starts.seen, PROCESSOR, 7.0)
            began = time.monotonic()
            assert await wait.next(60.0) == 7.0  # judged by a listing started after the event
            assert time.monotonic() - began < 5.0
        assert SPOUT not in starts and PROCESSOR not in starts  # forgotten with the block

    asyncio.run(scenario())


def test_an_event_during_a_look_is_not_lost() -> None:
    async def scenario() -> None:
        starts = Starts()
        with starts.waiting() as wait:
            starts.follow(wait, {SPOUT})
            starts.seen(SPOUT, 3.0)  # came while the previous look ran
            assert await asyncio.wait_for(wait.next(60.0), 5.0) == 3.0

    asyncio.run(scenario())


def test_other_pipelines_events_and_unfollowed_waits_wake_nobody() -> None:
    async def scenario() -> None:
        starts = Starts()
        with starts.waiting() as first, starts.waiting() as second:
            starts.follow(first, {SPOUT})
            starts.follow(second, {PROCESSOR})
            starts.follow(first, {("default", "renamed")})  # follows its new pair only
            starts.seen(SPOUT, 1.0)
            starts.seen(("elsewhere", "p"), 1.0)
            before = time.monotonic()
            # Neither woken: each waits out its poll and judges by a listing of that interval.
            assert before - 0.05 <= await first.next(0.05) <= time.monotonic()
            assert before - 0.05 <= await second.next(0.05) <= time.monotonic()

    asyncio.run(scenario())


def test_after_an_event_it_looks_again_quickly_with_fresh_listings_then_polls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pachd may write RUNNING a moment after the Service event: a few quick looks, each
    needing a listing newer than the last, then back to the poll."""
    monkeypatch.setattr(starting, "RETRY_S", 0.01)
    monkeypatch.setattr(starting, "RETRIES", 2)

    async def scenario() -> None:
        starts = Starts()
        with starts.waiting() as wait:
            starts.follow(wait, {SPOUT})
            starts.seen(SPOUT, 1.0)
            assert await wait.next(60.0) == 1.0
            for _ in range(2):
                before = time.monotonic()
                assert before <= await asyncio.wait_for(wait.next(60.0), 5.0)
            with_poll = asyncio.create_task(wait.next(60.0))  # retries spent: the poll
            await asyncio.sleep(0.1)
            assert not with_poll.done()
            starts.seen(SPOUT, 2.0)  # a later event starts the quick looks again
            assert await asyncio.wait_for(with_poll, 5.0) == 2.0

    asyncio.run(scenario())
