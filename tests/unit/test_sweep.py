"""The drift sweep's shared grid, and the shared listing it relies on (no pachd, no API)."""

from __future__ import annotations

import time

import pytest
from spout_operator.gateway import Endpoint, Gateway, PachdUnavailable
from spout_operator.handlers import until_next_sweep
from spout_operator.observed import ObservedPipeline


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


def test_snapshot_is_one_listing_within_its_age() -> None:
    gateway = CountingGateway([])
    try:
        for _ in range(5):
            assert gateway.snapshot(max_age_s=60) == {}
        assert gateway.calls == 1
        gateway.invalidate()
        gateway.snapshot(max_age_s=60)
        assert gateway.calls == 2
    finally:
        gateway.close()


def test_failed_listing_is_shared_too() -> None:
    """N resources on an unreachable pachd cost one failed call per sweep, not N."""
    gateway = CountingGateway(PachdUnavailable("ListPipeline: connection refused"))
    try:
        for _ in range(5):
            with pytest.raises(PachdUnavailable, match="connection refused"):
                gateway.snapshot(max_age_s=60)
        assert gateway.calls == 1
        with pytest.raises(PachdUnavailable):
            gateway.snapshot(max_age_s=0)  # aged out: asks again, and fails again
        assert gateway.calls == 2
    finally:
        gateway.close()


def test_a_write_hides_only_that_pipeline_until_the_next_listing() -> None:
    """A repair in the middle of a sweep must not cost every other resource a new listing,
    and the repaired pipeline must not be judged by a listing older than the repair."""
    a, b = _observed("a"), _observed("b")
    gateway = CountingGateway([a, b])
    try:
        assert set(gateway.snapshot(max_age_s=60)) == {("default", "a"), ("default", "b")}
        with pytest.raises(PachdUnavailable):  # nothing listens at the gateway's address
            gateway.start("a", "default")  # a write attempt all the same
        assert set(gateway.snapshot(max_age_s=60)) == {("default", "b")}
        assert gateway.calls == 1
        time.sleep(0.01)
        assert set(gateway.snapshot(max_age_s=0)) == {("default", "a"), ("default", "b")}
        assert gateway.calls == 2
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
