"""Leader election on a Lease, with a Lease in memory and clocks the tests move."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from spout_operator.leader import Elector, Record, elect


class MemoryLease:
    def __init__(self) -> None:
        self.record: Record | None = None
        self.version = 0
        self.down = False

    def read(self) -> tuple[Record | None, str]:
        if self.down:
            raise ConnectionError("API server away")
        return self.record, str(self.version)

    def create(self, record: Record) -> bool:
        if self.record is not None:
            return False
        self.record, self.version = record, self.version + 1
        return True

    def replace(self, record: Record, version: str) -> bool:
        if self.down:
            raise ConnectionError("API server away")
        if version != str(self.version):
            return False
        self.record, self.version = record, self.version + 1
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def wall() -> datetime.datetime:
    return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def pair(store: MemoryLease, clock: Clock) -> tuple[Elector, Elector]:
    return Elector(store, "a", clock, wall), Elector(store, "b", clock, wall)


def test_one_leader_at_a_time() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = pair(store, clock)
    assert a.attempt() and a.leading()
    assert not b.attempt() and not b.leading()
    clock.t += 2
    assert a.attempt() and not b.attempt()
    assert store.record is not None and store.record.holder == "a"


def test_a_frozen_leader_stops_writing_before_the_standby_takes_over() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = pair(store, clock)
    a.attempt()
    assert not b.attempt()  # b sees a's record now
    clock.t += 9.9
    assert a.leading()
    clock.t += 0.2  # 10 s without renewal: a's writes stop here ...
    assert not a.leading()
    assert not b.attempt()  # ... and b may not take the Lease yet
    clock.t += 5  # 15 s after b saw a's last renewal
    assert b.attempt() and b.leading()
    assert not a.attempt() and not a.leading()  # a, thawed, finds b's Lease and stays out
    assert store.record is not None and store.record.transitions == 1


def test_a_released_lease_is_taken_at_the_next_try() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = pair(store, clock)
    a.attempt()
    assert not b.attempt()
    a.release()
    assert not a.leading()
    assert b.attempt()


def test_an_api_server_outage_keeps_the_lease_until_the_renew_deadline_only() -> None:
    store, clock = MemoryLease(), Clock()
    a, _ = pair(store, clock)
    a.attempt()
    store.down = True
    clock.t += 5
    assert a.attempt()  # not renewed, still within the deadline
    clock.t += 5
    assert not a.attempt() and not a.leading()
    store.down = False
    assert a.attempt()  # nobody took it: renewed


def test_a_renewal_that_lost_the_race_is_not_a_renewal() -> None:
    store, clock = MemoryLease(), Clock()
    a, _ = pair(store, clock)
    a.attempt()
    assert store.record is not None
    store.record, store.version = replace(store.record, holder="c"), store.version + 1
    assert not a.attempt() and not a.leading()


def test_lead_runs_the_operator_only_while_leading_and_releases_on_exit() -> None:
    store, clock = MemoryLease(), Clock()
    a, _ = pair(store, clock)
    runs: list[str] = []

    async def scenario() -> None:
        terminating = asyncio.Event()
        lost = asyncio.Event()

        async def run(stop: asyncio.Event) -> None:
            runs.append("start")
            if len(runs) == 1:  # the first term: the API server goes away for good
                store.down = True
                clock.t += 11
            await stop.wait()
            runs.append("stop")
            if len(runs) == 2:
                lost.set()

        standbys: list[int] = []

        @contextlib.asynccontextmanager
        async def standby() -> AsyncIterator[None]:
            standbys.append(len(runs))
            yield

        task = asyncio.create_task(elect(a, run, terminating, standby, retry_s=0.01))
        await asyncio.wait_for(lost.wait(), 5)
        assert not a.leading()
        store.down = False  # back: a campaigns and leads again
        while len(runs) < 3:
            await asyncio.sleep(0.01)
        terminating.set()
        await asyncio.wait_for(task, 5)
        assert standbys == [0, 2]  # a standby before each term

    asyncio.run(scenario())
    assert runs == ["start", "stop", "start", "stop"]
    assert store.record is not None and store.record.holder == ""  # released


def test_the_standby_takes_over_within_one_lease_of_the_leaders_death() -> None:
    """The standby looks every 2 s, so it sees a renewal up to 2 s late; counting the lease
    from its previous look (the renewal came after it) it takes over within 15 s of the
    leader's last renewal, and still after the leader stopped writing (10 s)."""
    store, clock = MemoryLease(), Clock()
    a, b = pair(store, clock)
    a.attempt()  # t=1000
    clock.t += 0.1
    assert not b.attempt()  # looks at 1000.1
    clock.t = 1001.9
    assert not b.attempt()  # looks at 1001.9: unchanged
    clock.t = 1002.0
    assert a.attempt()  # a's last renewal, at 1002.0; a dies at 1002.1
    clock.t = 1003.9
    assert not b.attempt()  # sees the renewal 1.9 s late
    assert b.until_next_try(2.0) == 2.0
    clock.t = 1012.0
    assert not a.leading()  # a stopped writing here
    assert not b.attempt()
    assert 4.8 < b.until_next_try(5.0) <= 5.0  # the Lease expires at 1016.9 (1001.9 + 15)
    clock.t = 1016.8
    assert not b.attempt()
    assert b.until_next_try(2.0) == pytest.approx(0.1)
    clock.t = 1016.95
    assert b.attempt()  # 14.85 s after a died
