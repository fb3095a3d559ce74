"""The data flow of a pair (pure): lag from two commit streams in any interleaving, the
verdict against expectations, the status at a resolution, its Events."""

from __future__ import annotations

from typing import Any

import pytest
from spout_operator import dataflow
from spout_operator.dataflow import Expectations, Failure, Flow, FlowView
from spout_operator.status import applying_status

T0 = 1_800_000_000.0  # epoch seconds
NOTHING = Expectations()
QUIET_30 = Expectations(commit_within_s=30)
LAG_2 = Expectations(max_lag=2)


def caught_up(flow: Flow) -> Flow:
    flow.heard("spout")
    flow.heard("processor")
    return flow


def test_lag_counts_spout_commits_the_processor_has_not_finished() -> None:
    flow = caught_up(Flow(T0))
    for i in range(5):
        flow.spout_commit(f"c{i}", T0 + 10 * i, T0 + 10 * i + 1)
    assert flow.view().lag == 5
    flow.processor_commit("c1", T0 + 10, T0 + 12)  # the commit set of c1: c0 and c1 are done
    assert flow.view().lag == 3
    flow.processor_commit("c4", T0 + 40, T0 + 45)
    view = flow.view()
    assert (view.lag, view.last_commit, view.last_processed) == (0, T0 + 41, T0 + 45)


def test_the_processor_told_first_covers_what_the_spout_tells_later() -> None:
    """The two streams replay their histories in any order."""
    flow = caught_up(Flow(T0))
    flow.processor_commit("c2", T0 + 20, T0 + 22)
    for i in range(4):
        flow.spout_commit(f"c{i}", T0 + 10 * i, T0 + 10 * i + 1)
    assert flow.view().lag == 1  # c3 only


def test_a_processor_created_later_covers_older_spout_commits_by_time() -> None:
    """A new processor starts from an alias of the spout's head, in a commit set of its own."""
    flow = caught_up(Flow(T0))
    for i in range(3):
        flow.spout_commit(f"old{i}", T0 + i, T0 + i + 0.5)
    flow.processor_commit("alias", T0 + 5, T0 + 6)
    flow.spout_commit("new", T0 + 7, T0 + 8)
    assert flow.view().lag == 1


def test_a_commit_told_twice_counts_once() -> None:
    flow = caught_up(Flow(T0))
    flow.spout_commit("c", T0, T0 + 1)
    flow.spout_commit("c", T0, T0 + 1)  # a reopened stream replays its history
    assert flow.view().lag == 1


def test_lag_stays_counted_beyond_what_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataflow, "PENDING_MAX", 3)
    flow = caught_up(Flow(T0))
    for i in range(5):
        flow.spout_commit(f"c{i}", T0 + i, T0 + i)
    assert flow.view().lag == 5
    flow.processor_commit("c4", T0 + 4, T0 + 5)
    assert flow.view().lag == 0


def test_the_figures_are_real_only_once_both_streams_answered() -> None:
    flow = Flow(T0)
    flow.heard("spout")
    assert not flow.view().caught_up
    flow.heard("processor")
    assert flow.view().caught_up


@pytest.mark.parametrize(
    ("view", "expected", "now", "verdict"),
    [
        (FlowView(T0, True, T0 + 100, 0, T0 + 101), NOTHING, T0 + 1000, None),  # nothing expected
        (FlowView(T0, False), QUIET_30, T0 + 1000, None),  # streams not heard yet
        (FlowView(T0, True, T0 + 100, 0, T0 + 101), QUIET_30, T0 + 120, (True, "DataFlowing")),
        (FlowView(T0, True, T0 + 100, 0, T0 + 101), QUIET_30, T0 + 131, (False, "SpoutQuiet")),
        (FlowView(T0, True, None, 0, None), QUIET_30, T0 + 20, (True, "DataFlowing")),  # just followed
        (FlowView(T0, True, None, 0, None), QUIET_30, T0 + 31, (False, "SpoutQuiet")),
        (FlowView(T0, True, T0 + 100, 2, T0 + 90), LAG_2, T0 + 500, (True, "DataFlowing")),
        (FlowView(T0, True, T0 + 100, 3, T0 + 90), LAG_2, T0 + 101, (False, "ProcessorBehind")),
    ],
)
def test_the_verdict(
    view: FlowView, expected: Expectations, now: float, verdict: tuple[bool, str] | None
) -> None:
    condition = dataflow.judge(view, expected, now)
    assert (None if condition is None else (condition.status, condition.reason)) == verdict


def test_expectations_are_read_from_the_spec() -> None:
    assert dataflow.expectations({}) == NOTHING
    assert not dataflow.expectations({}).set
    got = dataflow.expectations({"expectations": {"commitWithinSeconds": 120, "maxLag": 0}})
    assert got == Expectations(120.0, 0) and got.set


def base_status() -> dict[str, Any]:
    return {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "m"}],
    }


def flowing(last_commit: float, lag: int = 0, processed: float | None = None) -> FlowView:
    return FlowView(T0, True, last_commit, lag, processed if processed is not None else last_commit + 1)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_moving_timestamp_is_rewritten_only_at_the_resolution() -> None:
    first = dataflow.with_flow(base_status(), {}, flowing(T0 + 10), QUIET_30, T0 + 12, 60, 1)
    assert first["dataFlow"] == {
        "lag": 0,
        "lastCommitTime": dataflow.stamp(T0 + 10),
        "lastProcessedTime": dataflow.stamp(T0 + 11),
    }
    # The spout commits every 10-30 s and the lag flips between 0 and 1: the status stays put.
    for moment, lag in ((T0 + 25, 1), (T0 + 40, 0), (T0 + 65, 1)):
        later = dataflow.with_flow(base_status(), first, flowing(moment, lag), QUIET_30, moment + 1, 60, 1)
        assert later == first
    # A minute on, it moves (with the lag of that moment).
    moved = dataflow.with_flow(base_status(), first, flowing(T0 + 75, 1), QUIET_30, T0 + 76, 60, 1)
    assert moved["dataFlow"]["lastCommitTime"] == dataflow.stamp(T0 + 75)
    assert moved["dataFlow"]["lag"] == 1
    assert moved["conditions"] == first["conditions"]  # the same verdict: not rewritten


def test_a_verdict_that_changes_is_written_at_once_with_its_figures() -> None:
    first = dataflow.with_flow(base_status(), {}, flowing(T0 + 10), LAG_2, T0 + 12, 60, 1)
    behind = dataflow.with_flow(base_status(), first, flowing(T0 + 20, 3), LAG_2, T0 + 21, 60, 1)
    assert conditions(behind)["DataFlowing"] == ("False", "ProcessorBehind")
    assert behind["dataFlow"]["lag"] == 3
    assert conditions(behind)["Ready"] == ("True", "Running")  # a warning: Ready stands
    [event] = dataflow.events(first, behind)
    assert (event.type, event.reason) == ("Warning", "ProcessorBehind")
    # Still behind, further: no new Event, no rewrite inside the resolution.
    further = dataflow.with_flow(base_status(), behind, flowing(T0 + 40, 4), LAG_2, T0 + 41, 60, 1)
    assert further == behind and dataflow.events(behind, further) == []
    caught = dataflow.with_flow(base_status(), further, flowing(T0 + 50, 0), LAG_2, T0 + 51, 60, 1)
    assert conditions(caught)["DataFlowing"] == ("True", "DataFlowing")
    [event] = dataflow.events(further, caught)
    assert (event.type, event.reason) == ("Normal", "DataFlowing")


def test_a_failed_processor_commit_is_the_last_failure_and_processes_nothing() -> None:
    """pachd finishes a failed or killed job's output commit with the job's reason as error."""
    flow = caught_up(Flow(T0))
    flow.spout_commit("c1", T0, T0 + 1)
    flow.processor_failure("c1", T0 + 20, "job timed out\n")
    flow.processor_failure("c0", T0 + 5, "an older one, told later by a replayed history")
    view = flow.view()
    assert view.last_failure == Failure("c1", T0 + 20, "job timed out")
    assert (view.lag, view.last_processed) == (1, None)  # its spout commit is still to do
    flow.processor_failure("c2", T0 + 30, "x" * 5000)
    failure = flow.view().last_failure
    assert failure is not None and len(failure.reason) == dataflow.REASON_MAX


def failing(last_commit: float, failed_at: float, commit: str = "j1") -> FlowView:
    return FlowView(T0, True, last_commit, 1, T0 + 1, Failure(commit, failed_at, "job timed out"))


def test_a_first_failure_is_written_at_the_next_pass_later_ones_at_the_resolution() -> None:
    first = dataflow.with_flow(base_status(), {}, flowing(T0 + 10), NOTHING, T0 + 12, 60, 1)
    assert "lastFailure" not in first["dataFlow"]
    # A job is killed 5 s later: shown at once though no other time moved by the resolution.
    killed = dataflow.with_flow(base_status(), first, failing(T0 + 15, T0 + 16), NOTHING, T0 + 17, 60, 1)
    assert killed["dataFlow"]["lastFailure"] == {
        "time": dataflow.stamp(T0 + 16),
        "commit": "j1",
        "reason": "job timed out",
    }
    # Every job killed: one write per resolution, not one per job.
    again = dataflow.with_flow(
        base_status(), killed, failing(T0 + 40, T0 + 41, "j2"), NOTHING, T0 + 42, 60, 1
    )
    assert again == killed
    later = dataflow.with_flow(base_status(), again, failing(T0 + 70, T0 + 80, "j4"), NOTHING, T0 + 81, 60, 1)
    assert later["dataFlow"]["lastFailure"]["commit"] == "j4"
    # A later success leaves the last failure shown (it is history, not a state).
    ok = FlowView(T0, True, T0 + 200, 0, T0 + 201, Failure("j4", T0 + 80, "job timed out"))
    healed = dataflow.with_flow(base_status(), later, ok, NOTHING, T0 + 202, 60, 1)
    assert healed["dataFlow"]["lastFailure"] == later["dataFlow"]["lastFailure"]
    assert healed["dataFlow"]["lastProcessedTime"] == dataflow.stamp(T0 + 201)


def test_nothing_expected_shows_the_flow_and_judges_nothing() -> None:
    shown = dataflow.with_flow(base_status(), {}, flowing(T0 + 10), NOTHING, T0 + 500, 60, 1)
    assert "DataFlowing" not in conditions(shown)
    assert shown["dataFlow"]["lag"] == 0
    assert dataflow.events({}, shown) == []


def test_until_the_streams_answer_the_previous_flow_and_verdict_stand() -> None:
    """An operator restarted (or a new leader) writes nothing new until its streams answered."""
    before = dataflow.with_flow(base_status(), {}, flowing(T0 + 10, 3), LAG_2, T0 + 12, 60, 1)
    after_restart = dataflow.with_flow(
        base_status(), before, FlowView(T0 + 100, False), LAG_2, T0 + 101, 60, 1
    )
    assert after_restart == before
    assert dataflow.with_flow(base_status(), before, None, LAG_2, T0 + 101, 60, 1) == before


def test_a_change_under_way_keeps_the_data_flow_verdict() -> None:
    """applying_status rewrites Ready/Synced/Reconciling only: DataFlowing is not the spec's."""
    behind = dataflow.with_flow(base_status(), {}, flowing(T0 + 10, 3), LAG_2, T0 + 12, 60, 1)
    shown = applying_status(2, behind, "2027-01-15T08:00:00Z")
    assert conditions(shown)["DataFlowing"] == ("False", "ProcessorBehind")
    again = dataflow.with_flow(base_status(), shown, flowing(T0 + 20, 3), LAG_2, T0 + 21, 60, 2)
    assert dataflow.events(shown, again) == []  # no second Warning for the same verdict


def quiet_status(reason: str) -> dict[str, Any]:
    return {"conditions": [{"type": "DataFlowing", "status": "False", "reason": reason, "message": "m"}]}


@pytest.mark.parametrize(
    ("view", "expected", "previous", "quiet"),
    [
        (flowing(T0 + 100), QUIET_30, {}, False),
        (flowing(T0 + 50), QUIET_30, {}, True),  # 50 s ago, 30 expected
        (flowing(T0 + 50), Expectations(30, 2), {}, True),  # quiet wins over the lag
        (flowing(T0 + 99, lag=5), Expectations(30, 2), {}, False),  # behind is the processor's
        (flowing(T0 + 50), LAG_2, {}, False),  # no commit expectation: never quiet
        # Until the streams answer (an operator restarted), the previous verdict stands.
        (FlowView(T0 + 90, False), QUIET_30, quiet_status("SpoutQuiet"), True),
        (None, QUIET_30, quiet_status("SpoutQuiet"), True),
        (None, QUIET_30, quiet_status("ProcessorBehind"), False),
        (None, QUIET_30, {}, False),
    ],
)
def test_a_spout_is_quiet_when_it_has_not_committed_within_its_expectation(
    view: FlowView | None, expected: Expectations, previous: dict[str, Any], quiet: bool
) -> None:
    """What the automatic restarts read (restarts.py): the verdict now, or the one in status."""
    assert dataflow.spout_quiet(view, expected, previous, T0 + 101) is quiet
