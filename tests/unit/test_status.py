"""Unit tests of status: a reconcile outcome -> conditions and the `.status` patch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from spout_operator.gateway import PachdError, PachdRejected, PachdUnavailable
from spout_operator.observed import ObservedPipeline
from spout_operator.plan import PipelinePlan, Step
from spout_operator.reconcile import Outcome
from spout_operator.status import Condition, conditions_for, render_conditions, status_patch

EARLIER = "2024-05-01T10:00:00Z"
NOW = "2024-05-01T12:00:00Z"

UNREACHABLE = "pachd unreachable (unavailable): failed to connect to all addresses"
LIMIT = "pachyderm community edition supports up to 16 pipelines; an activation key is required"


def pipeline(
    name: str,
    state: str = "RUNNING",
    stopped: bool = False,
    version: int = 1,
    recent_error: str = "",
    reason: str = "",
) -> ObservedPipeline:
    return ObservedPipeline(
        name=name, version=version, state=state, stopped=stopped, recent_error=recent_error, reason=reason
    )


def outcome(
    spout: ObservedPipeline | None = None,
    processor: ObservedPipeline | None = None,
    error: PachdError | None = None,
    foreign: dict[str, str] | None = None,
    applied: tuple[tuple[str, Step], ...] = (),
) -> Outcome:
    foreign = foreign or {}
    return Outcome(
        names=("spout", "processor"),
        plans=(
            PipelinePlan("spout", foreign_owner=foreign.get("spout")),
            PipelinePlan("processor", foreign_owner=foreign.get("processor")),
        ),
        observed={"spout": spout, "processor": processor},
        applied=applied,
        errors={} if error is None else {"spout": error, "processor": error},
    )


def running_pair(**overrides: ObservedPipeline | None) -> Outcome:
    observed: dict[str, ObservedPipeline | None] = {
        "spout": pipeline("spout"),
        "processor": pipeline("processor"),
    }
    observed.update(overrides)
    return outcome(observed["spout"], observed["processor"])


def by_type(conditions: list[Condition]) -> dict[str, Condition]:
    assert [c.type for c in conditions] == ["Ready", "Synced"]
    return {c.type: c for c in conditions}


# --- conditions -------------------------------------------------------------------------------


def test_both_running_is_ready_and_synced() -> None:
    conditions = by_type(conditions_for(running_pair(), running=True))
    assert conditions["Ready"] == Condition("Ready", True, "Running", "both pipelines are running")
    assert conditions["Synced"].status is True
    assert conditions["Synced"].reason == "Synced"


@pytest.mark.parametrize("state", ["RUNNING", "STANDBY"])
def test_healthy_states_count_as_running(state: str) -> None:
    conditions = by_type(conditions_for(running_pair(processor=pipeline("processor", state)), running=True))
    assert conditions["Ready"].status is True


@pytest.mark.parametrize(
    ("error", "reason", "message"),
    [
        (PachdUnavailable(UNREACHABLE), "PachdUnavailable", UNREACHABLE),
        (PachdRejected(LIMIT), "PachdRejected", LIMIT),
        (
            PachdRejected("invalid pipeline spec: bad glob"),
            "PachdRejected",
            "invalid pipeline spec: bad glob",
        ),
    ],
)
def test_pachd_errors_make_both_conditions_false(error: PachdError, reason: str, message: str) -> None:
    found = outcome(pipeline("spout"), pipeline("processor"), error=error)
    conditions = by_type(conditions_for(found, running=True))
    assert conditions["Synced"] == Condition("Synced", False, reason, message)
    assert conditions["Ready"] == Condition("Ready", False, reason, message)


def test_pachd_unavailable_before_anything_was_observed() -> None:
    found = Outcome(
        names=("spout", "processor"),
        plans=(),
        observed={},
        errors=dict.fromkeys(("spout", "processor"), PachdUnavailable(UNREACHABLE)),
    )
    conditions = by_type(conditions_for(found, running=True))
    assert conditions["Synced"].reason == "PachdUnavailable"
    assert conditions["Ready"].status is False


def test_declared_stopped_but_running_is_not_ready() -> None:
    found = outcome(pipeline("spout", stopped=True), pipeline("processor", stopped=False))
    ready = by_type(conditions_for(found, running=False))["Ready"]
    assert (ready.status, ready.reason) == (False, "PipelineNotStopped")


def test_unobserved_pipelines_are_reported_unknown_not_left_stale() -> None:
    found = Outcome(
        names=("sp", "pr"),
        plans=(),
        observed={},
        errors=dict.fromkeys(("sp", "pr"), PachdUnavailable(UNREACHABLE)),
    )
    previous = {"spout": {"name": "sp", "state": "RUNNING", "version": 3}}
    patch = status_patch(found, True, 2, previous, "2026-01-01T00:00:00Z")
    assert patch["spout"] == {
        "name": "sp",
        "state": "Unknown",
        "lastError": str(PachdUnavailable(UNREACHABLE)),
    }
    assert patch["processor"]["state"] == "Unknown"


@pytest.mark.parametrize("role", ["spout", "processor"])
def test_foreign_pipeline_is_reported(role: str) -> None:
    found = outcome(pipeline("spout"), pipeline("processor"), foreign={role: "team-b/other"})
    conditions = by_type(conditions_for(found, running=True))
    assert conditions["Synced"].status is False
    assert conditions["Synced"].reason == "ForeignPipeline"
    assert f"{role} (owned by team-b/other)" in conditions["Synced"].message
    assert conditions["Ready"].status is False
    assert conditions["Ready"].reason == "ForeignPipeline"


def test_pachd_error_takes_precedence_over_foreign() -> None:
    found = outcome(
        pipeline("spout"), None, error=PachdUnavailable("down"), foreign={"spout": "(no owner mark)"}
    )
    assert by_type(conditions_for(found, running=True))["Synced"].reason == "PachdUnavailable"


@pytest.mark.parametrize("missing", ["spout", "processor"])
def test_missing_pipeline_is_not_ready(missing: str) -> None:
    conditions = by_type(conditions_for(running_pair(**{missing: None}), running=True))
    assert conditions["Synced"].status is True
    assert conditions["Ready"] == Condition(
        "Ready", False, "PipelineMissing", f"pipeline {missing} does not exist in pachd"
    )


@pytest.mark.parametrize(
    ("observed", "message"),
    [
        (
            pipeline("processor", "CRASHING", recent_error="ImagePullBackOff: image not found"),
            "pipeline processor is CRASHING: ImagePullBackOff: image not found",
        ),
        (
            pipeline("processor", "FAILURE", reason="could not generate RC options"),
            "pipeline processor is FAILURE: could not generate RC options",
        ),
        (
            pipeline("processor", "FAILURE", recent_error="recent", reason="reason"),
            "pipeline processor is FAILURE: recent",
        ),
        (pipeline("processor", "RESTARTING"), "pipeline processor is RESTARTING"),
        (pipeline("processor", "STARTING"), "pipeline processor is STARTING"),
        (pipeline("processor", "PAUSED", stopped=True), "pipeline processor is PAUSED"),
        (pipeline("processor", "RUNNING", stopped=True), "pipeline processor is RUNNING"),
    ],
)
def test_pipeline_not_running_reports_its_error(observed: ObservedPipeline, message: str) -> None:
    conditions = by_type(conditions_for(running_pair(processor=observed), running=True))
    assert conditions["Synced"].status is True
    assert conditions["Ready"] == Condition("Ready", False, "PipelineNotRunning", message)


def test_stopped_as_declared_is_ready() -> None:
    found = outcome(pipeline("spout", "PAUSED", stopped=True), pipeline("processor", "PAUSED", stopped=True))
    conditions = by_type(conditions_for(found, running=False))
    assert conditions["Ready"] == Condition(
        "Ready", True, "Stopped", "both pipelines are stopped, as declared"
    )
    assert conditions["Synced"].status is True


def test_stopped_but_missing_is_not_ready() -> None:
    found = outcome(pipeline("spout", "PAUSED", stopped=True), None)
    assert by_type(conditions_for(found, running=False))["Ready"].reason == "PipelineMissing"


def test_invalid_spec() -> None:
    conditions = by_type(conditions_for(None, running=True, spec_error="processor.glob must start with '/'"))
    expected = ("InvalidSpec", "processor.glob must start with '/'")
    assert (conditions["Ready"].status, conditions["Ready"].reason, conditions["Ready"].message) == (
        False,
        *expected,
    )
    assert (conditions["Synced"].status, conditions["Synced"].reason, conditions["Synced"].message) == (
        False,
        *expected,
    )


# --- lastTransitionTime ------------------------------------------------------------------------


def previous_conditions(ready: str, synced: str) -> list[Mapping[str, Any]]:
    return [
        {"type": "Ready", "status": ready, "reason": "Old", "message": "old", "lastTransitionTime": EARLIER},
        {
            "type": "Synced",
            "status": synced,
            "reason": "Old",
            "message": "old",
            "lastTransitionTime": EARLIER,
        },
    ]


def test_conditions_render_in_kubernetes_form() -> None:
    rendered = render_conditions([Condition("Ready", True, "Running", "ok")], None, NOW)
    assert rendered == [
        {"type": "Ready", "status": "True", "reason": "Running", "message": "ok", "lastTransitionTime": NOW}
    ]


def test_transition_time_is_kept_while_status_is_unchanged() -> None:
    conditions = conditions_for(running_pair(), running=True)
    rendered = render_conditions(conditions, previous_conditions("True", "True"), NOW)
    assert [c["lastTransitionTime"] for c in rendered] == [EARLIER, EARLIER]
    assert [c["reason"] for c in rendered] == ["Running", "Synced"]  # reason and message still refresh


def test_transition_time_moves_when_status_flips() -> None:
    conditions = conditions_for(running_pair(processor=None), running=True)  # Ready False, Synced True
    rendered = render_conditions(conditions, previous_conditions("True", "True"), NOW)
    by_name = {c["type"]: c for c in rendered}
    assert by_name["Ready"]["status"] == "False"
    assert by_name["Ready"]["lastTransitionTime"] == NOW
    assert by_name["Synced"]["lastTransitionTime"] == EARLIER


def test_transition_time_moves_back_on_recovery() -> None:
    conditions = conditions_for(running_pair(), running=True)
    rendered = render_conditions(conditions, previous_conditions("False", "False"), NOW)
    assert [c["lastTransitionTime"] for c in rendered] == [NOW, NOW]


def test_transition_time_is_set_for_a_condition_seen_first() -> None:
    previous = previous_conditions("True", "True")[:1]  # only Ready was there
    rendered = render_conditions(conditions_for(running_pair(), running=True), previous, NOW)
    assert [c["lastTransitionTime"] for c in rendered] == [EARLIER, NOW]


# --- the status patch --------------------------------------------------------------------------


def test_status_patch_for_a_healthy_pair() -> None:
    found = outcome(pipeline("spout", version=2), pipeline("processor", version=5))
    patch = status_patch(found, running=True, generation=7, previous={}, now=NOW)

    assert patch["observedGeneration"] == 7
    assert patch["summary"] == "Ready"
    assert patch["driftRepairs"] == 0
    assert patch["spout"] == {
        "name": "spout",
        "state": "RUNNING",
        "version": 2,
        "stopped": False,
        "lastError": "",
    }
    assert patch["processor"] == {
        "name": "processor",
        "state": "RUNNING",
        "version": 5,
        "stopped": False,
        "lastError": "",
    }
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {"Ready": "True", "Synced": "True"}


@pytest.mark.parametrize(("before", "repairs", "after"), [(None, 0, 0), (None, 1, 1), (2, 0, 2), (2, 1, 3)])
def test_drift_repairs_accumulate(before: int | None, repairs: int, after: int) -> None:
    previous: dict[str, Any] = {} if before is None else {"driftRepairs": before}
    patch = status_patch(running_pair(), True, 1, previous, NOW, drift_repairs=repairs)
    assert patch["driftRepairs"] == after


def test_status_patch_keeps_transition_times_from_the_previous_status() -> None:
    previous = {"conditions": previous_conditions("True", "True"), "driftRepairs": 4}
    patch = status_patch(running_pair(), True, 3, previous, NOW)
    assert [c["lastTransitionTime"] for c in patch["conditions"]] == [EARLIER, EARLIER]
    assert patch["driftRepairs"] == 4


def test_status_patch_for_missing_and_foreign_pipelines() -> None:
    found = outcome(pipeline("spout", version=3), None, foreign={"spout": "team-b/other"})
    patch = status_patch(found, True, 1, {}, NOW)

    assert patch["spout"]["state"] == "Foreign"
    assert patch["spout"]["foreignOwner"] == "team-b/other"
    assert patch["spout"]["version"] == 3
    assert patch["processor"] == {"name": "processor", "state": "Missing", "version": 0, "lastError": ""}
    assert patch["summary"] == "ForeignPipeline"


def test_status_patch_puts_the_pachd_error_on_each_pipeline() -> None:
    found = outcome(pipeline("spout", recent_error="old error"), None, error=PachdRejected(LIMIT))
    patch = status_patch(found, True, 1, {}, NOW)
    assert patch["spout"]["lastError"] == LIMIT
    assert patch["processor"]["lastError"] == LIMIT
    assert patch["summary"] == "PachdRejected"


def test_status_patch_shows_the_pipeline_recent_error() -> None:
    found = running_pair(processor=pipeline("processor", "CRASHING", recent_error="exit code 1"))
    patch = status_patch(found, True, 1, {}, NOW)
    assert patch["processor"]["lastError"] == "exit code 1"
    assert patch["spout"]["lastError"] == ""
    assert patch["summary"] == "PipelineNotRunning"


def test_status_patch_for_an_invalid_spec() -> None:
    previous = {"driftRepairs": 2, "conditions": previous_conditions("True", "True")}
    patch = status_patch(None, True, 9, previous, NOW, spec_error="spout is required")

    assert patch["observedGeneration"] == 9
    assert patch["summary"] == "InvalidSpec"
    assert patch["driftRepairs"] == 2
    assert "spout" not in patch
    assert "processor" not in patch
    assert [
        (c["status"], c["reason"], c["message"], c["lastTransitionTime"]) for c in patch["conditions"]
    ] == [
        ("False", "InvalidSpec", "spout is required", NOW),
        ("False", "InvalidSpec", "spout is required", NOW),
    ]
