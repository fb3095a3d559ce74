"""Unit tests of status: a reconcile outcome -> conditions and the `.status` patch."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from spout_operator.conditions import Condition, render_conditions
from spout_operator.observed import ObservedPipeline
from spout_operator.pachd_api import PachdError, PachdRejected, PachdUnavailable
from spout_operator.plan import PipelinePlan, Step
from spout_operator.reconcile import Outcome, SpoutUpdateBlocked
from spout_operator.status import applying, applying_status, conditions_for, deleting_status, status_patch
from spout_operator.workers import WorkerHealth, health

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


def unreachable(spout: str, processor: str) -> Outcome:
    """A pass that observed nothing: pachd answered no call about either pipeline."""
    names = (spout, processor)
    return Outcome(
        names=names, plans=(), observed={}, errors=dict.fromkeys(names, PachdUnavailable(UNREACHABLE))
    )


def running_pair(**overrides: ObservedPipeline | None) -> Outcome:
    observed: dict[str, ObservedPipeline | None] = {
        "spout": pipeline("spout"),
        "processor": pipeline("processor"),
    }
    observed.update(overrides)
    return outcome(observed["spout"], observed["processor"])


def by_type(conditions: list[Condition]) -> dict[str, Condition]:
    types = [c.type for c in conditions]
    assert types[:2] == ["Ready", "Synced"]
    assert types[2:] in ([], ["Reconciling"], ["Stalled"])  # present only while True, never both
    assert all(c.status is True for c in conditions[2:])
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
    found = unreachable("spout", "processor")
    conditions = by_type(conditions_for(found, running=True))
    assert conditions["Synced"].reason == "PachdUnavailable"
    assert conditions["Ready"].status is False


def test_declared_stopped_but_running_is_not_ready() -> None:
    found = outcome(pipeline("spout", stopped=True), pipeline("processor", stopped=False))
    ready = by_type(conditions_for(found, running=False))["Ready"]
    assert (ready.status, ready.reason) == (False, "PipelineNotStopped")


def test_unobserved_pipelines_are_reported_unknown_not_left_stale() -> None:
    found = unreachable("sp", "pr")
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
    rendered = render_conditions(
        [Condition("Ready", True, "Running", "ok"), Condition("Synced", None, "Progressing", "applying")],
        None,
        NOW,
        4,
    )
    assert rendered == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Running",
            "message": "ok",
            "lastTransitionTime": NOW,
            "observedGeneration": 4,
        },
        {
            "type": "Synced",
            "status": "Unknown",
            "reason": "Progressing",
            "message": "applying",
            "lastTransitionTime": NOW,
            "observedGeneration": 4,
        },
    ]


def test_transition_time_is_kept_while_status_is_unchanged() -> None:
    conditions = conditions_for(running_pair(), running=True)
    rendered = render_conditions(conditions, previous_conditions("True", "True"), NOW, 1)
    assert [c["lastTransitionTime"] for c in rendered] == [EARLIER, EARLIER]
    assert [c["reason"] for c in rendered] == ["Running", "Synced"]  # reason and message still refresh


def test_transition_time_moves_when_status_flips() -> None:
    conditions = conditions_for(running_pair(processor=None), running=True)  # Ready False, Synced True
    rendered = render_conditions(conditions, previous_conditions("True", "True"), NOW, 1)
    by_name = {c["type"]: c for c in rendered}
    assert by_name["Ready"]["status"] == "False"
    assert by_name["Ready"]["lastTransitionTime"] == NOW
    assert by_name["Synced"]["lastTransitionTime"] == EARLIER


def test_transition_time_moves_back_on_recovery() -> None:
    conditions = conditions_for(running_pair(), running=True)
    rendered = render_conditions(conditions, previous_conditions("False", "False"), NOW, 1)
    assert [c["lastTransitionTime"] for c in rendered] == [NOW, NOW]


def test_transition_time_is_set_for_a_condition_seen_first() -> None:
    previous = previous_conditions("True", "True")[:1]  # only Ready was there
    rendered = render_conditions(conditions_for(running_pair(), running=True), previous, NOW, 1)
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
        (c["type"], c["status"], c["reason"], c["message"], c["lastTransitionTime"], c["observedGeneration"])
        for c in patch["conditions"]
    ] == [
        ("Ready", "False", "InvalidSpec", "spout is required", NOW, 9),
        ("Synced", "False", "InvalidSpec", "spout is required", NOW, 9),
        ("Stalled", "True", "InvalidSpec", "spout is required", NOW, 9),
    ]


# --- kstatus: Reconciling and Stalled ----------------------------------------------------------


def extra(conditions: list[Condition]) -> list[tuple[str, str]]:
    """The kstatus conditions present besides Ready and Synced: (type, reason)."""
    return [(c.type, c.reason) for c in by_type(conditions).values() if c.type not in ("Ready", "Synced")]


def test_healthy_has_neither_reconciling_nor_stalled() -> None:
    assert extra(conditions_for(running_pair(), running=True)) == []
    stopped = outcome(
        pipeline("spout", "PAUSED", stopped=True), pipeline("processor", "PAUSED", stopped=True)
    )
    assert extra(conditions_for(stopped, running=False)) == []


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (outcome(pipeline("spout"), pipeline("processor"), error=PachdRejected(LIMIT)), "PachdRejected"),
        (
            outcome(pipeline("spout"), pipeline("processor"), error=SpoutUpdateBlocked("readers")),
            "SpoutUpdateBlocked",
        ),
        (outcome(pipeline("spout"), pipeline("processor"), foreign={"spout": "team-b/x"}), "ForeignPipeline"),
    ],
)
def test_refusals_only_a_spec_change_can_cure_are_stalled(found: Outcome, reason: str) -> None:
    conditions = conditions_for(found, running=True)
    assert extra(conditions) == [("Stalled", reason)]
    stalled = by_type(conditions)["Stalled"]
    assert stalled.message == by_type(conditions)["Synced"].message


def test_invalid_spec_is_stalled() -> None:
    assert extra(conditions_for(None, running=True, spec_error="bad")) == [("Stalled", "InvalidSpec")]


def test_unreachable_pachd_is_neither_stalled_nor_reconciling() -> None:
    # Retrying can cure it (the sweep retries): kstatus reads Ready=False as InProgress.
    found = outcome(pipeline("spout"), pipeline("processor"), error=PachdUnavailable(UNREACHABLE))
    assert extra(conditions_for(found, running=True)) == []


@pytest.mark.parametrize("state", ["STARTING", "RESTARTING"])
def test_starting_pipelines_are_reconciling(state: str) -> None:
    conditions = conditions_for(running_pair(processor=pipeline("processor", state)), running=True)
    assert extra(conditions) == [("Reconciling", "PipelinesStarting")]
    assert by_type(conditions)["Reconciling"].message == "waiting for pachd to start pipeline processor"
    assert by_type(conditions)["Ready"].status is False


@pytest.mark.parametrize("state", ["CRASHING", "FAILURE"])
def test_failing_pipelines_are_not_reconciling(state: str) -> None:
    found = running_pair(processor=pipeline("processor", state))
    assert extra(conditions_for(found, running=True)) == []
    applied = outcome(pipeline("spout"), pipeline("processor", state), applied=(("processor", Step.START),))
    assert extra(conditions_for(applied, running=True)) == []


def test_a_pipeline_just_started_is_reconciling_until_pachd_shows_it() -> None:
    found = outcome(
        pipeline("spout", "PAUSED", stopped=True), pipeline("processor"), applied=(("spout", Step.START),)
    )
    assert extra(conditions_for(found, running=True)) == [("Reconciling", "PipelinesStarting")]


def test_declared_stopped_and_still_stopping_is_reconciling() -> None:
    found = outcome(pipeline("spout", "PAUSED", stopped=True), pipeline("processor", "RUNNING"))
    conditions = conditions_for(found, running=False)
    assert extra(conditions) == [("Reconciling", "PipelinesStopping")]
    assert by_type(conditions)["Reconciling"].message == "waiting for pachd to stop pipeline processor"


def test_conditions_that_stop_holding_leave_the_status() -> None:
    # Merge patches replace the list whole: what is not in it is gone.
    starting = status_patch(running_pair(processor=pipeline("processor", "STARTING")), True, 2, {}, EARLIER)
    assert [c["type"] for c in starting["conditions"]] == ["Ready", "Synced", "Reconciling"]
    ready = status_patch(running_pair(), True, 2, starting, NOW)
    assert [c["type"] for c in ready["conditions"]] == ["Ready", "Synced"]
    assert all(c["observedGeneration"] == 2 for c in ready["conditions"])


# --- a change under way, deletion ---------------------------------------------------------------


READY = [{"type": "Ready", "status": "True", "observedGeneration": 1}]


@pytest.mark.parametrize(
    ("previous", "generation", "expected"),
    [
        ({}, 1, True),  # no status at all (a CRD without the default): kstatus would say Current
        ({"conditions": [{"type": "Ready", "status": "Unknown"}]}, 1, False),  # the CRD's default
        ({"observedGeneration": 1, "conditions": READY}, 1, False),  # resumed: this generation was handled
        ({"observedGeneration": 1, "conditions": READY}, 2, True),  # a spec change
    ],
)
def test_applying_only_for_a_generation_not_handled_yet(
    previous: dict[str, Any], generation: int, expected: bool
) -> None:
    assert applying(previous, generation) is expected


def test_applying_status_reads_in_progress_for_the_new_generation() -> None:
    previous = {"observedGeneration": 1, "conditions": previous_conditions("True", "True")}
    patch = applying_status(2, previous, NOW)
    assert patch["observedGeneration"] == 2
    assert patch["summary"] == "Reconciling"
    assert [(c["type"], c["status"], c["observedGeneration"]) for c in patch["conditions"]] == [
        ("Ready", "Unknown", 2),
        ("Synced", "Unknown", 2),
        ("Reconciling", "True", 2),
    ]
    assert all(c["lastTransitionTime"] == NOW for c in patch["conditions"])
    # and once the pass ends, Ready=True is a new transition
    later = "2024-05-01T12:00:05Z"
    done = status_patch(running_pair(), True, 2, patch, later)
    assert [(c["type"], c["status"], c["lastTransitionTime"]) for c in done["conditions"]] == [
        ("Ready", "True", later),
        ("Synced", "True", later),
    ]


def test_deleting_status() -> None:
    patch = deleting_status("waiting to delete pipelines a: pachd down", 3, {}, NOW)
    assert patch["summary"] == "Deleting"
    assert [(c["type"], c["status"], c["reason"], c["observedGeneration"]) for c in patch["conditions"]] == [
        ("Ready", "False", "Deleting", 3),
        ("Reconciling", "True", "Deleting", 3),
    ]


# --- workers (pachd says RUNNING; the pods say whether the workers are up) ---------------------

WORKER_PODS = Path(__file__).parent / "testdata" / "worker_pods"


def workers_of(name: str, pipeline_name: str = "spout") -> WorkerHealth:
    """A pipeline's worker health from a real pod of the e2e node (see test_worker_health.py)."""
    pod = json.loads((WORKER_PODS / f"{name}.json").read_text())
    pod["metadata"]["labels"].update(pipelineName=pipeline_name, pipelineVersion="1")
    return health([pod], 1)


UP = WorkerHealth(1, 1)


@pytest.mark.parametrize(
    ("pod", "reason", "said"),
    [
        (
            "image-pull-backoff",
            "ImagePullBackOff",
            'Back-off pulling image "ghcr.io/spout-operator/does-not-exist',
        ),
        ("err-image-pull", "ErrImagePull", "failed to pull and unpack image"),
        ("crash-loop-with-message", "CrashLoopBackOff", "container user: the sky fell"),
        ("crash-loop", "CrashLoopBackOff", "container user: Error, exit code 3"),
        ("unschedulable", "Unschedulable", "0/1 nodes are available: 1 Insufficient cpu"),
    ],
)
@pytest.mark.parametrize("pachd_state", ["RUNNING", "CRASHING", "STARTING"])
def test_workers_that_cannot_come_up_make_ready_false_without_reconciling(
    pod: str, reason: str, said: str, pachd_state: str
) -> None:
    """pachd says RUNNING (and later CRASHING): the kubelet's reason is the one a user needs.
    Waiting cannot fix it, so no Reconciling: Argo CD reads Degraded."""
    found = running_pair(spout=pipeline("spout", pachd_state))
    conditions = by_type(
        conditions_for(found, running=True, workers={"spout": workers_of(pod), "processor": UP})
    )
    ready = conditions["Ready"]
    assert (ready.status, ready.reason) == (False, reason)
    assert ready.message.startswith(
        f"pipeline spout is {pachd_state} in pachd, 0/1 workers ready: {reason}: pod "
    )
    assert said in ready.message
    assert set(conditions) == {"Ready", "Synced"}
    assert conditions["Synced"].status is True  # pachd holds what was declared


@pytest.mark.parametrize("pod", ["pod-initializing", "init-running"])
def test_workers_on_their_way_up_are_reconciling(pod: str) -> None:
    found = running_pair()
    conditions = by_type(
        conditions_for(found, running=True, workers={"spout": UP, "processor": workers_of(pod, "processor")})
    )
    assert (conditions["Ready"].status, conditions["Ready"].reason) == (False, "WorkersStarting")
    assert conditions["Ready"].message.startswith(
        "pipeline processor is RUNNING in pachd, 0/1 workers ready: "
        "PodInitializing: pod default-fresh-v1-vvc78: "
    )
    assert conditions["Reconciling"] == Condition(
        "Reconciling", True, "WorkersStarting", conditions["Ready"].message
    )


def test_no_worker_pod_yet_is_reconciling() -> None:
    nothing = WorkerHealth(
        0, 0, "NoWorkers", "no worker pod of version 1 yet (watching namespaces pachyderm)"
    )
    conditions = by_type(
        conditions_for(running_pair(), running=True, workers={"spout": nothing, "processor": UP})
    )
    assert conditions["Reconciling"].reason == "WorkersStarting"
    assert conditions["Ready"].message == (
        "pipeline spout is RUNNING in pachd, 0/0 workers ready: NoWorkers: "
        "no worker pod of version 1 yet (watching namespaces pachyderm)"
    )


def test_pachd_still_starting_comes_before_its_workers() -> None:
    found = running_pair(spout=pipeline("spout", "STARTING"))
    conditions = by_type(
        conditions_for(
            found, running=True, workers={"spout": workers_of("pod-initializing"), "processor": UP}
        )
    )
    assert conditions["Ready"].reason == "PipelineNotRunning"
    assert conditions["Reconciling"].reason == "PipelinesStarting"


def test_workers_up_and_pachd_running_is_ready() -> None:
    workers = {"spout": workers_of("running"), "processor": workers_of("running", "processor")}
    conditions = by_type(conditions_for(running_pair(), running=True, workers=workers))
    assert conditions["Ready"] == Condition(
        "Ready", True, "Running", "both pipelines are running, workers ready: spout 1/1, processor 1/1"
    )


def test_a_processor_in_standby_needs_no_worker() -> None:
    found = running_pair(processor=pipeline("processor", "STANDBY"))
    workers = {"spout": UP, "processor": WorkerHealth(0, 0, "NoWorkers", "no worker pod of version 1 yet")}
    assert by_type(conditions_for(found, running=True, workers=workers))["Ready"].status is True


def test_declared_stopped_needs_no_workers() -> None:
    found = outcome(pipeline("spout", "PAUSED", stopped=True), pipeline("processor", "PAUSED", stopped=True))
    gone = WorkerHealth(0, 0, "NoWorkers", "no worker pod of version 1 yet")
    crashing = workers_of("crash-loop")
    for workers in ({"spout": gone, "processor": gone}, {"spout": crashing, "processor": gone}):
        ready = by_type(conditions_for(found, running=False, workers=workers))["Ready"]
        assert ready == Condition("Ready", True, "Stopped", "both pipelines are stopped, as declared")


def test_a_stopped_pipeline_reports_no_reason_for_having_no_worker() -> None:
    found = outcome(pipeline("spout", "PAUSED", stopped=True), pipeline("processor", "PAUSED", stopped=True))
    gone = WorkerHealth(0, 0, "NoWorkers", "no worker pod of version 1 yet")
    patch = status_patch(found, False, 2, {}, NOW, workers={"spout": gone, "processor": gone})
    assert patch["spout"]["workers"] == patch["processor"]["workers"] == {"ready": 0, "total": 0}
    assert (patch["workers"], patch["summary"]) == ("0/0", "Ready")


def test_a_spec_pachd_refuses_is_stalled_whatever_the_workers() -> None:
    found = outcome(pipeline("spout"), pipeline("processor"), error=PachdRejected(LIMIT))
    workers = {"spout": workers_of("image-pull-backoff"), "processor": UP}
    conditions = by_type(conditions_for(found, running=True, workers=workers))
    assert conditions["Ready"].reason == "PachdRejected"
    assert "Stalled" in conditions


def test_status_carries_each_pipelines_workers_and_the_pairs_count() -> None:
    workers = {"spout": workers_of("image-pull-backoff"), "processor": workers_of("running", "processor")}
    patch = status_patch(running_pair(), True, 4, {}, NOW, workers=workers)
    assert patch["workers"] == "1/2"
    assert patch["summary"] == "ImagePullBackOff"
    assert patch["processor"]["workers"] == {"ready": 1, "total": 1}
    spout = patch["spout"]["workers"]
    assert (spout["ready"], spout["total"], spout["reason"]) == (0, 1, "ImagePullBackOff")
    assert spout["message"].startswith("pod default-noimage-v1-sbxcc: container user: Back-off pulling image")
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "ImagePullBackOff", 4)


def test_without_worker_namespaces_pachds_word_stands() -> None:
    patch = status_patch(running_pair(), True, 1, {}, NOW)
    assert "workers" not in patch and "workers" not in patch["spout"] and "workers" not in patch["processor"]
    assert patch["summary"] == "Ready"
