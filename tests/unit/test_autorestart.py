"""When a failing pipeline is restarted automatically (autorestart.decide), on a timeline."""

from __future__ import annotations

import datetime
from typing import Any

from spout_operator.autorestart import Decision, decide
from spout_operator.spec import AutoRestart

T0 = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.UTC)
POLICY = AutoRestart(after_s=60, max_restarts=3, backoff_s=30)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(timeline: list[tuple[float, bool]]) -> list[tuple[float, Decision]]:
    """Passes at the given seconds, the spout failing or not; each sees the last record."""
    record: dict[str, Any] = {}
    seen = []
    for seconds, failing in timeline:
        decision = decide(POLICY, {"spout": failing, "processor": False}, record, at(seconds))
        record = decision.record
        seen.append((seconds, decision))
    return seen


def test_the_first_restart_waits_for_the_failure_to_last() -> None:
    (_, first), (_, early), (_, due) = run([(0, True), (59, True), (60, True)])
    assert first.restart == () and first.record["nextRestartAt"] == stamp(60)
    assert early.restart == ()
    assert due.restart == ("spout",) and due.record["restarts"] == 1
    assert due.record["nextRestartAt"] == stamp(90)  # the back-off after the first restart


def test_each_restart_doubles_the_wait_and_the_limit_stops_them() -> None:
    seen = run([(0, True), (60, True), (89, True), (90, True), (149, True), (150, True), (400, True)])
    restarted = [seconds for seconds, d in seen if d.restart]
    assert restarted == [60, 90, 150]  # waits of 30 s, then 60 s
    last = seen[-1][1]
    assert last.exhausted and last.restart == () and last.record["restarts"] == 3
    assert "nextRestartAt" not in last.record


def test_health_for_the_grace_period_starts_the_count_again() -> None:
    seen = run([(0, True), (60, True), (70, False), (129, False), (130, False), (140, True)])
    assert seen[3][1].record["restarts"] == 1  # healthy, not for long enough yet
    assert seen[4][1].record["restarts"] == 0
    assert seen[5][1].record["nextRestartAt"] == stamp(200)  # a new failure waits after_s again


def test_a_brief_recovery_does_not_reset_the_count() -> None:
    """A crash loop looks healthy between crashes: that must not make restarts endless."""
    seen = run(
        [(0, True), (60, True), (65, False), (70, True), (90, True), (150, True), (300, True), (900, True)]
    )
    # Failing again from 70: after_s again (130, first pass at 150), then the back-off (210).
    assert [s for s, d in seen if d.restart] == [60, 150, 300]
    assert seen[-1][1].exhausted


def test_nothing_failing_costs_no_status_change_from_pass_to_pass() -> None:
    (_, a), (_, b) = run([(0, False), (30, False)])
    assert a.record == b.record  # a quiet pass writes nothing


def test_between_crashes_the_status_still_says_the_earliest_next_restart() -> None:
    """A crash loop looks healthy between crashes: the back-off's end stays in the record."""
    seen = run([(0, True), (60, True), (65, False)])
    healthy = seen[2][1]
    assert healthy.restart == () and healthy.record["nextRestartAt"] == stamp(90)


def test_the_defaults_restart_five_times_within_the_first_17_minutes() -> None:
    """What docs/resource.md says of the defaults: 2 minutes, then 1 + 2 + 4 + 8 of back-off."""
    record: dict[str, Any] = {}
    restarted = []
    for seconds in range(0, 3600, 5):
        decision = decide(AutoRestart(), {"spout": True}, record, at(seconds))
        record = decision.record
        restarted += [seconds / 60] if decision.restart else []
    assert restarted == [2, 3, 5, 9, 17]


def test_a_restart_s_own_commit_does_not_start_the_count_again() -> None:
    """pachd's start of a spout makes a commit on its output branch: a quiet spout looks fine
    for commitWithinSeconds (120 here) after each restart. Only health that outlasts that
    window starts the count again, so the maximum still ends the restarts."""
    record: dict[str, Any] = {}
    restarted: list[int] = []
    for seconds in range(0, 900, 10):
        failing = not restarted or seconds - restarted[-1] > 120
        decision = decide(POLICY, {"spout": failing}, record, at(seconds), healthy_s=120)
        record = decision.record
        restarted += [seconds] if decision.restart else []
    assert restarted == [60, 250, 440]  # quiet again at 190 and 380: after_s more each time
    assert decision.exhausted
