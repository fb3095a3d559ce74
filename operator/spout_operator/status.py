"""Turn a reconcile outcome into the resource's `.status` (pure).

Conditions follow the Kubernetes convention (metav1.Condition: type, status, reason,
message, lastTransitionTime, observedGeneration) and kstatus, so `kubectl wait`,
Flux, kpt and the health script for Argo CD (manifests/argocd/) read them alike:

- `Ready`: both pipelines exist as declared and run (or are stopped, as declared), and,
  where the operator sees pachd's worker pods (workers.py), their workers are up.
- `Synced`: the last pass applied the spec without error.
- `Reconciling`: present (True) only while the operator is applying a change, pachd
  is still starting or stopping a pipeline, or its worker pods are still starting (being
  scheduled, pulling, initializing): kstatus reads InProgress. Workers that cannot come up
  by waiting (pull errors, crash loops, unschedulable) make Ready=False without it.
- `Stalled`: present (True) only when retrying cannot help, only a change of the spec
  (or of what stands in its way in pachd): kstatus reads Failed.

Every condition carries the generation it describes, so a reader never takes an old
generation's Ready=True for the new one's. The transition time only moves when the
condition's status does. The status is written with merge patches, which replace a
list whole: a condition that no longer holds disappears with the next write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spout_operator.conditions import Condition, render_conditions
from spout_operator.names import PAUSED_ANNOTATION
from spout_operator.observed import ObservedPipeline
from spout_operator.pachd_api import PachdUnavailable
from spout_operator.reconcile import Outcome, SpoutUpdateBlocked
from spout_operator.workers import WorkerHealth

HEALTHY_RUNNING = {"RUNNING", "STANDBY"}
MISSING = "Missing"
UNKNOWN = "Unknown"  # pachd could not be asked
RETRIED_REASONS = {"ConnectionUnavailable"}  # a connection read failed: the next pass may succeed


# pachd states on the way to the declared one: the operator waits for them, nothing is wrong.
TRANSIENT = {"STARTING", "RESTARTING"}
FAILING = {"FAILURE", "CRASHING"}  # pachd gave up, or its workers crash: not progress
# Refusals that retrying the same spec cannot cure: kstatus reads Stalled=True as Failed.
STALLED_REASONS = {"InvalidSpec", "PachdRejected", "SpoutUpdateBlocked", "ForeignPipeline"}
WORKERS_STARTING = "WorkersStarting"
CARRIED_CONDITIONS = {"DataFlowing"}  # not this module's: a change under way keeps them
PAUSED_REASON = "ReconcilePaused"  # Ready's reason while worker pods are on their way up


def pipeline_status(
    name: str,
    observed: ObservedPipeline | None,
    foreign_owner: str | None,
    error: str,
    workers: WorkerHealth | None = None,
) -> dict[str, Any]:
    if observed is None:
        return {"name": name, "state": MISSING, "version": 0, "lastError": error}
    entry: dict[str, Any] = {
        "name": name,
        "state": observed.state,
        "version": observed.version,
        "stopped": observed.stopped,
        "lastError": error or observed.recent_error or observed.reason,
    }
    if workers is not None:
        # A stopped pipeline has no worker by design: no reason to report for that.
        quiet = observed.stopped and workers.total == 0
        entry["workers"] = {"ready": 0, "total": 0} if quiet else workers.as_status()
    if foreign_owner is not None:
        entry["state"] = "Foreign"
        entry["foreignOwner"] = foreign_owner
    return entry


def conditions_for(
    outcome: Outcome | None,
    running: bool,
    spec_error: str = "",
    error_reason: str = "InvalidSpec",
    workers: Mapping[str, WorkerHealth] | None = None,
    paused: bool = False,
    exhausted: str = "",
) -> list[Condition]:
    """Ready and Synced, then Reconciling or Stalled when (and only when) either holds.
    `workers`: each pipeline's worker health by name; None where workers cannot be seen
    (pachd's word stands). `paused`: nothing was written (operating.py): Synced says so and
    what is held, Ready still tells what pachd runs, and nothing is in progress. `exhausted`:
    automatic restarts reached their maximum (autorestart.py), why: Stalled."""
    if spec_error:  # nothing was asked of pachd: the spec, or its connection, is unusable
        reason, message = error_reason, spec_error
        conditions = [Condition("Ready", False, reason, message), Condition("Synced", False, reason, message)]
        if reason not in RETRIED_REASONS:  # only a change to the spec or the connection helps
            conditions.append(Condition("Stalled", True, reason, message))
        return conditions
    assert outcome is not None
    synced = _synced(outcome)
    ready = _ready(outcome, running, synced, workers or {})
    if paused:
        if synced.status:
            synced = Condition("Synced", False, PAUSED_REASON, _paused_message(outcome))
        return [ready, synced]
    conditions = [ready, synced]
    if exhausted and synced.reason not in STALLED_REASONS:
        conditions.append(Condition("Stalled", True, "AutoRestartLimit", exhausted))
    elif synced.reason in STALLED_REASONS:
        conditions.append(Condition("Stalled", True, synced.reason, synced.message))
    elif progress := _in_progress(outcome, running, ready):
        conditions.append(Condition("Reconciling", True, *progress))
    return conditions


def _paused_message(outcome: Outcome) -> str:
    held = [f"{step.value} {plan.name}" for plan in outcome.plans for step in plan.steps]
    what = f"held: {', '.join(held)}" if held else "pachd holds both pipelines as declared"
    return f"reconciliation is paused ({PAUSED_ANNOTATION}); nothing is written to pachd; {what}"


def _in_progress(outcome: Outcome, running: bool, ready: Condition) -> tuple[str, str] | None:
    """(reason, message) while pachd is on its way to the declared state, else None."""
    if ready.reason == WORKERS_STARTING:
        return WORKERS_STARTING, ready.message
    if ready.status or ready.reason not in ("PipelineNotRunning", "PipelineNotStopped"):
        return None
    waiting = [
        name
        for name, observed in outcome.observed.items()
        if observed is not None
        and (
            (running and observed.state in TRANSIENT)
            or (not running and not observed.stopped)
            or (observed.state not in FAILING and any(written == name for written, _ in outcome.applied))
        )
    ]
    if not waiting:
        return None
    which = f"pipeline{'s' if len(waiting) > 1 else ''} {', '.join(waiting)}"
    if running:
        return "PipelinesStarting", f"waiting for pachd to start {which}"
    return "PipelinesStopping", f"waiting for pachd to stop {which}"


def _synced(outcome: Outcome) -> Condition:
    foreign = [p for p in outcome.plans if p.foreign]
    refused = {name: err for name, err in outcome.errors.items() if not isinstance(err, PachdUnavailable)}
    if isinstance(outcome.error, PachdUnavailable):
        synced = Condition("Synced", False, "PachdUnavailable", str(outcome.error))
    elif refused:
        blocked = any(isinstance(err, SpoutUpdateBlocked) for err in refused.values())
        reason = "SpoutUpdateBlocked" if blocked else "PachdRejected"
        if len(set(map(str, refused.values()))) == 1:  # one cause (e.g. an unknown project)
            message = str(next(iter(refused.values())))
        else:  # each pipeline's own
            message = "; ".join(f"{name}: {err}" for name, err in refused.items())
        synced = Condition("Synced", False, reason, message)
    elif foreign:
        names = ", ".join(f"{p.name} (owned by {p.foreign_owner})" for p in foreign)
        synced = Condition(
            "Synced", False, "ForeignPipeline", f"pipelines exist that this resource does not own: {names}"
        )
    else:
        synced = Condition("Synced", True, "Synced", "pachd holds both pipelines as declared")
    return synced


def _ready(
    outcome: Outcome, running: bool, synced: Condition, workers: Mapping[str, WorkerHealth]
) -> Condition:
    if not synced.status:
        return Condition("Ready", False, synced.reason, synced.message)
    for name, observed in outcome.observed.items():
        if observed is None:
            return Condition("Ready", False, "PipelineMissing", f"pipeline {name} does not exist in pachd")
        health = workers.get(name)
        if running and not observed.stopped and health is not None and health.failing:
            # The kubelet's reason says more than pachd's RUNNING (or its later CRASHING).
            return Condition("Ready", False, health.reason, _workers_message(name, observed, health))
        if running and (observed.stopped or observed.state not in HEALTHY_RUNNING):
            detail = observed.recent_error or observed.reason
            message = f"pipeline {name} is {observed.state}" + (f": {detail}" if detail else "")
            return Condition("Ready", False, "PipelineNotRunning", message)
        if not running and not observed.stopped:
            return Condition("Ready", False, "PipelineNotStopped", f"pipeline {name} is not stopped yet")
    if not running:
        return Condition("Ready", True, "Stopped", "both pipelines are stopped, as declared")
    starting = [
        (name, observed, health)
        for name, observed in outcome.observed.items()
        if observed is not None
        and (health := workers.get(name)) is not None
        and observed.state != "STANDBY"  # pachd scaled it down: no worker is needed
        and not health.up
    ]
    if starting:
        name, observed, health = starting[0]
        return Condition("Ready", False, WORKERS_STARTING, _workers_message(name, observed, health))
    if workers and all(workers.get(name) is not None for name in outcome.observed):
        counts = ", ".join(f"{name} {workers[name].ready}/{workers[name].total}" for name in outcome.observed)
        return Condition("Ready", True, "Running", f"both pipelines are running, workers ready: {counts}")
    return Condition("Ready", True, "Running", "both pipelines are running")


def _workers_message(name: str, observed: ObservedPipeline, health: WorkerHealth) -> str:
    detail = f"{health.reason}: {health.message}" if health.message else health.reason
    return (
        f"pipeline {name} is {observed.state} in pachd, {health.ready}/{health.total} workers ready: {detail}"
    )


def applying(previous: Mapping[str, Any], generation: int) -> bool:
    """Whether to show a change under way before its pass: the status describes an older
    generation (a spec change), or there is none at all (a CRD without the status default,
    which kstatus would read as Current). Not for the CRD's default (it says Reconciling
    already), nor for a resume of a generation the operator has handled."""
    observed = previous.get("observedGeneration")
    return (isinstance(observed, int) and observed != generation) or not previous.get("conditions")


def applying_status(generation: int, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """What a change shows while its pass runs: a reader never sees the previous
    generation's Ready=True for this one (Flux's convention: Ready=Unknown, Reconciling).
    The rest of the previous status stands."""
    message = f"applying generation {generation} of the spec to pachd"
    conditions = [
        Condition("Ready", None, "Progressing", message),
        Condition("Synced", None, "Progressing", message),
        Condition("Reconciling", True, "Progressing", message),
    ]
    # Conditions of the data flow (dataflow.py) are judged apart from the spec: they stand.
    carried = [c for c in previous.get("conditions") or [] if c.get("type") in CARRIED_CONDITIONS]
    return {
        **previous,
        "observedGeneration": generation,
        "summary": "Reconciling",
        "conditions": [*render_conditions(conditions, previous.get("conditions"), now, generation), *carried],
    }


def deleting_status(message: str, generation: int, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """What deletion shows while it waits for pachd (kstatus reads Terminating anyway); the
    rest of the status (status.managed above all) stands."""
    conditions = [
        Condition("Ready", False, "Deleting", message),
        Condition("Reconciling", True, "Deleting", message),
    ]
    return {
        **previous,
        "summary": "Deleting",
        "conditions": render_conditions(conditions, previous.get("conditions"), now, generation),
    }


def status_patch(
    outcome: Outcome | None,
    running: bool,
    generation: int,
    previous: Mapping[str, Any],
    now: str,
    spec_error: str = "",
    drift_repairs: int = 0,
    error_reason: str = "InvalidSpec",
    workers: Mapping[str, WorkerHealth] | None = None,
    managed: Mapping[str, Any] | None = None,
    paused: bool = False,
    exhausted: str = "",
    handled: Mapping[str, Any] | None = None,
    push_address: str | None = None,
) -> dict[str, Any]:
    """The full `.status` to write onto the resource (it is written whole). `workers`: see
    conditions_for; `managed`: where its pipelines were created (ownership.managed_after),
    which deletion reads."""
    conditions = conditions_for(outcome, running, spec_error, error_reason, workers, paused, exhausted)
    patch: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": render_conditions(conditions, previous.get("conditions"), now, generation),
        "driftRepairs": int(previous.get("driftRepairs", 0)) + drift_repairs,
    }
    if managed:
        patch["managed"] = dict(managed)
    if paused:
        patch["paused"] = True
    if push_address:  # status is written whole: an address that no longer holds goes with it
        patch["pushAddress"] = push_address
    # The operating handles' acknowledgements (lastHandledReconcileAt, restarts, autoRestart)
    patch.update(handled or {})
    if outcome is not None:
        owners = {plan.name: plan.foreign_owner for plan in outcome.plans}
        for role, name in zip(("spout", "processor"), outcome.names, strict=True):
            error = str(outcome.errors.get(name, ""))
            if name in outcome.observed:
                health = None if workers is None else workers.get(name)
                patch[role] = pipeline_status(name, outcome.observed[name], owners.get(name), error, health)
            else:  # never observed: say so rather than leave an older state in place
                patch[role] = {"name": name, "state": UNKNOWN, "lastError": error}
        ready = next(c for c in conditions if c.type == "Ready")
        patch["summary"] = "Ready" if ready.status else ready.reason
        if workers:  # the printer column: ready/total over both pipelines
            known = [workers[name] for name in outcome.names if name in workers]
            patch["workers"] = f"{sum(h.ready for h in known)}/{sum(h.total for h in known)}"
    else:
        patch["summary"] = error_reason
    return patch
