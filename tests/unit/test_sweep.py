"""The drift sweep's shared grid, and the shared listing it relies on (no pachd, no API)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import pytest
from spout_operator.gateway import WRITE_LANES, Gateway, changed_pipelines
from spout_operator.observed import ObservedPipeline
from spout_operator.pachd_api import Endpoint, PachdUnavailable
from spout_operator.sweep import until_next_sweep


@pytest.mark.parametrize("interval", [10.0, 3.0, 0.5])
def test_resources_seen_at_any_time_in_a_window_wake_at_its_end(interval: float) -> None:
    window_start = 7 * interval
    seen_at = [window_start + interval * f for f in (0.0, 0.001, 0.37, 0.999)]
    wake = [t + until_next_sweep(t, interval) for t in seen_at]
    assert wake == pytest.approx([window_start + interval] * len(seen_at))
    # and a resource seen just after that sweep waits for the next one, at most one interval
    late = window_start + interval * 1.0001
    assert late + until_next_sweep(late, interval) == pytest.approx(window_start + 2 * interval)


class CountingGateway(Gateway):
    def __init__(self, listing: list[ObservedPipeline] | Exception) -> None:
        super().__init__(Endpoint("127.0.0.1:9"), timeout_s=0.1)  # a channel that is never used
        self.listing = listing
        self.calls = 0

    def list_pipelines(self) -> list[ObservedPipeline]:
        self.calls += 1
        if isinstance(self.listing, Exception):
            raise self.listing
        return self.listing


WAIT_S = 5.0  # a deadline for conditions that hold within milliseconds


def test_a_pachd_answers_once_a_listing_succeeded_until_one_fails() -> None:
    gateway = CountingGateway([])
    try:
        assert not gateway.answering  # never listed
        gateway.snapshot(not_before=time.monotonic())
        assert gateway.answering
        gateway.listing = PachdUnavailable("pachd unreachable (unavailable): connection refused")
        with pytest.raises(PachdUnavailable):
            gateway.snapshot(not_before=time.monotonic())
        assert not gateway.answering
    finally:
        gateway.close()


def test_snapshot_is_one_listing_per_sweep() -> None:
    gateway = CountingGateway([])
    try:
        sweep = time.monotonic()
        for _ in range(5):
            assert gateway.snapshot(not_before=sweep) == {}
        assert gateway.calls == 1
        gateway.snapshot(not_before=time.monotonic())  # the next sweep
        assert gateway.calls == 2
    finally:
        gateway.close()


def test_a_late_pass_of_one_sweep_never_serves_the_next() -> None:
    """A pass that runs late in a sweep reuses that sweep's listing; the next sweep lists
    again. (Ages in seconds got this wrong: a pass past half the interval relisted, and the
    next sweep, seeing a listing younger than half the interval, judged by it, missing any
    change made in between for a whole interval.)"""
    gateway = CountingGateway([])
    try:
        first_sweep = time.monotonic()
        gateway.snapshot(not_before=first_sweep)
        time.sleep(0.02)  # a pass that runs later in the same sweep: the clock must move on
        gateway.snapshot(not_before=first_sweep)  # a late pass of the same sweep
        assert gateway.calls == 1
        next_sweep = time.monotonic()
        gateway.snapshot(not_before=next_sweep)
        gateway.snapshot(not_before=next_sweep)
        assert gateway.calls == 2
    finally:
        gateway.close()


def test_failed_listing_is_shared_too() -> None:
    """N resources on an unreachable pachd cost one failed call per sweep, not N."""
    gateway = CountingGateway(PachdUnavailable("ListPipeline: connection refused"))
    try:
        sweep = time.monotonic()
        for _ in range(5):
            with pytest.raises(PachdUnavailable, match="connection refused"):
                gateway.snapshot(not_before=sweep)
        assert gateway.calls == 1
        with pytest.raises(PachdUnavailable):
            gateway.snapshot(not_before=time.monotonic())  # the next sweep asks again, fails again
        assert gateway.calls == 2
    finally:
        gateway.close()


def test_a_write_hides_only_that_pipeline_until_the_next_listing() -> None:
    """A repair in the middle of a sweep must not cost every other resource a new listing,
    and the repaired pipeline must not be judged by a listing older than the repair."""
    a, b = _observed("a"), _observed("b")
    gateway = CountingGateway([a, b])
    try:
        sweep = time.monotonic()
        assert set(gateway.snapshot(not_before=sweep)) == {("default", "a"), ("default", "b")}
        with pytest.raises(PachdUnavailable):  # nothing listens at the gateway's address
            gateway.start("a", "default")  # a write attempt all the same
        assert set(gateway.snapshot(not_before=sweep)) == {("default", "b")}
        assert gateway.calls == 1
        time.sleep(0.01)  # the next sweep starts strictly after the write: the clock must move on
        assert set(gateway.snapshot(not_before=time.monotonic())) == {("default", "a"), ("default", "b")}
        assert gateway.calls == 2
    finally:
        gateway.close()


def test_a_write_in_flight_while_a_listing_starts_hides_its_pipeline() -> None:
    """pachd may apply a write after a listing that started later has read the pipeline: that
    listing must not be taken for the pipeline's state once the write returns (a spout judged
    by such a listing looked outdated and was updated twice)."""
    gateway = CountingGateway([_observed("a"), _observed("b")])
    sending, listed = threading.Event(), threading.Event()

    def slow_send(method: str, request: object) -> None:
        sending.set()
        assert listed.wait(5)  # pachd answers only after the listing has been taken

    gateway._send = slow_send  # type: ignore[method-assign]
    try:
        writer = threading.Thread(target=gateway.start, args=("a", "default"))
        writer.start()
        assert sending.wait(5)
        assert set(gateway.snapshot(not_before=time.monotonic())) == {("default", "b")}
        listed.set()
        writer.join(5)
        assert set(gateway.snapshot(not_before=0.0)) == {("default", "b")}  # same listing: still hidden
    finally:
        gateway.close()


def _observed(name: str) -> ObservedPipeline:
    return ObservedPipeline(
        name=name,
        project="default",
        state="RUNNING",
        stopped=False,
        version=1,
        spec={},
        recent_error="",
        reason="",
    )


class SlowWritesGateway(Gateway):
    """The real gateway's write queue over a fake wire: each write takes `write_s`, or until
    `release` is set for the pipelines in `held`, and records how many ran at once."""

    def __init__(self, write_s: float, timeout_s: float, held: frozenset[str] = frozenset()) -> None:
        super().__init__(Endpoint("127.0.0.1:9"), timeout_s=timeout_s)
        self.write_s = write_s
        self.running = 0
        self.most_at_once = 0
        self.entered = threading.Semaphore(0)  # one release per held write that began
        self.release, self._held = threading.Event(), held
        self._count_lock = threading.Lock()

    def _send(self, method: str, request: Any) -> None:
        with self._count_lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        if request.pipeline.name in self._held:
            self.entered.release()
            self.release.wait(WAIT_S)
        else:
            time.sleep(self.write_s)  # the write's own duration: the queue is what is under test
        with self._count_lock:
            self.running -= 1


def test_writes_to_one_pachd_queue_in_its_lanes() -> None:
    gateway = SlowWritesGateway(write_s=0.02, timeout_s=5.0)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: gateway.start(f"p{i}", "default"), range(8)))
        assert gateway.most_at_once == WRITE_LANES > 1
    finally:
        gateway.close()


def test_a_stuck_write_does_not_hold_up_the_writes_behind_it() -> None:
    """A StartPipeline racing pachd's own deletion of that pipeline took 4 s: with one lane,
    every repair on that pachd queued behind it."""
    gateway = SlowWritesGateway(write_s=0.0, timeout_s=5.0, held=frozenset({"stuck"}))
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            stuck = pool.submit(gateway.stop, "stuck", "default")
            assert gateway.entered.acquire(timeout=WAIT_S)
            for i in range(3):
                gateway.start(f"p{i}", "default")  # each goes through while `stuck` still runs
            assert not stuck.done()
            gateway.release.set()
            stuck.result()
    finally:
        gateway.release.set()
        gateway.close()


def test_a_write_queued_behind_stuck_ones_fails_as_unreachable() -> None:
    held = frozenset(f"stuck-{i}" for i in range(WRITE_LANES))
    gateway = SlowWritesGateway(write_s=0.0, timeout_s=0.1, held=held)
    try:
        with concurrent.futures.ThreadPoolExecutor(WRITE_LANES) as pool:
            stuck = [pool.submit(gateway.stop, name, "default") for name in sorted(held)]
            for _ in held:  # every lane is held now
                assert gateway.entered.acquire(timeout=WAIT_S)
            with pytest.raises(PachdUnavailable, match="busy"):
                gateway.stop("b", "default")
            gateway.release.set()
            for write in stuck:
                write.result()
    finally:
        gateway.release.set()
        gateway.close()


def test_a_shared_failure_does_not_keep_every_pass_alive() -> None:
    """Raising one exception object again and again chains each raise's frames onto its
    traceback: with pachd down, every pass of every sweep (and all its locals) stayed in
    memory for as long as the operator ran."""
    gateway = CountingGateway(PachdUnavailable("pachd unreachable (unavailable): connection refused"))

    def frames_kept(err: BaseException) -> int:
        count, tb = 0, err.__traceback__
        while tb is not None:
            count, tb = count + 1, tb.tb_next
        return count

    try:
        sweep = time.monotonic()
        kept = []
        for _ in range(50):
            with pytest.raises(PachdUnavailable) as raised:
                gateway.snapshot(not_before=sweep)
            kept.append(frames_kept(raised.value))
        assert gateway.calls == 1
        assert kept[-1] == kept[0]
    finally:
        gateway.close()


def pipeline(name: str, version: int = 1, state: str = "RUNNING", stopped: bool = False) -> ObservedPipeline:
    return ObservedPipeline(name=name, version=version, state=state, stopped=stopped)


def test_what_a_listing_shows_changed_since_the_previous_one() -> None:
    before = {("default", n): pipeline(n) for n in ("same", "updated", "stopped", "gone", "starting")}
    after = {
        ("default", "same"): pipeline("same"),
        ("default", "updated"): pipeline("updated", version=2),
        ("default", "stopped"): pipeline("stopped", state="PAUSED", stopped=True),
        ("default", "starting"): pipeline("starting", state="STARTING"),
        ("default", "new"): pipeline("new"),
    }
    assert changed_pipelines(before, after) == {
        ("default", n) for n in ("updated", "stopped", "gone", "starting", "new")
    }
    assert changed_pipelines(after, after) == set()


def test_a_listing_tells_which_pipelines_changed_since_the_last_one() -> None:
    """One drift seen (an event) makes a listing; whatever else it shows changed (a stop that
    no event has reported yet) is reported too, with the listing's start time."""
    told: list[tuple[set[tuple[str, str]], float]] = []
    gateway = CountingGateway([pipeline("a"), pipeline("b")])
    gateway._listing_changed = lambda keys, started: told.append((keys, started))
    try:
        gateway.snapshot(not_before=time.monotonic())
        assert told == []  # the first listing has nothing to compare with
        gateway.snapshot(not_before=time.monotonic())
        assert told == []  # nothing changed
        gateway.listing = [pipeline("a", state="PAUSED", stopped=True)]
        before = time.monotonic()
        gateway.snapshot(not_before=before)
        assert [keys for keys, _ in told] == [{("default", "a"), ("default", "b")}]
        assert told[0][1] >= before
        gateway.listing = PachdUnavailable("down")
        with pytest.raises(PachdUnavailable):
            gateway.snapshot(not_before=time.monotonic())
        gateway.listing = [pipeline("a")]
        gateway.snapshot(not_before=time.monotonic())
        assert len(told) == 1  # after an outage the listing is a new baseline, not a change
    finally:
        gateway.close()
