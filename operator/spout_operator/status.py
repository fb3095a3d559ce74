"""Turn a reconcile outcome into the resource's `.status` (pure).

Conditions follow the Kubernetes convention (type, status, reason, message,
lastTransitionTime) so `kubectl wait --for=condition=Ready` works; the
transition time only moves when the condition's status does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spout_operator.gateway import PachdUnavailable
from spout_operator.observed import ObservedPipeline
from spout_operator.reconcile import Outcome, SpoutUpdateBlocked

HEALTHY_RUNNING = {"RUNNING", "STANDBY"}
MISSING = "Missing"
UNKNOWN = "Unknown"  # pachd could not be asked


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def pipeline_status(
    name: str, observed: ObservedPipeline | None, foreign_owner: str | None, error: str
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
    if foreign_owner is not None:
        entry["state"] = "Foreign"
        entry["foreignOwner"] = foreign_owner
    return entry


def conditions_for(
    outcome: Outcome | None, running: bool, spec_error: str = "", error_reason: str = "InvalidSpec"
) -> list[Condition]:
    if spec_error:  # nothing was asked of pachd: the spec, or its connection, is unusable
        reason, message = error_reason, spec_error
        return [Condition("Ready", False, reason, message), Condition("Synced", False, reason, message)]
    assert outcome is not None
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
    return [_ready(outcome, running, synced), synced]


def _ready(outcome: Outcome, running: bool, synced: Condition) -> Condition:
    if not synced.status:
        return Condition("Ready", False, synced.reason, synced.message)
    for name, observed in outcome.observed.items():
        if observed is None:
            return Condition("Ready", False, "PipelineMissing", f"pipeline {name} does not exist in pachd")
        if running and (observed.stopped or observed.state not in HEALTHY_RUNNING):
            detail = observed.recent_error or observed.reason
            message = f"pipeline {name} is {observed.state}" + (f": {detail}" if detail else "")
            return Condition("Ready", False, "PipelineNotRunning", message)
        if not running and not observed.stopped:
            return Condition("Ready", False, "PipelineNotStopped", f"pipeline {name} is not stopped yet")
    if running:
        return Condition("Ready", True, "Running", "both pipelines are running")
    return Condition("Ready", True, "Stopped", "both pipelines are stopped, as declared")


def render_conditions(
    conditions: list[Condition], previous: list[Mapping[str, Any]] | None, now: str
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous or []}
    rendered = []
    for condition in conditions:
        status = "True" if condition.status else "False"
        old = before.get(condition.type, {})
        rendered.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": old.get("lastTransitionTime", now)
                if old.get("status") == status
                else now,
            }
        )
    return rendered


def status_patch(
    outcome: Outcome | None,
    running: bool,
    generation: int,
    previous: Mapping[str, Any],
    now: str,
    spec_error: str = "",
    drift_repairs: int = 0,
    error_reason: str = "InvalidSpec",
) -> dict[str, Any]:
    """The full `.status` to merge-patch onto the resource."""
    conditions = conditions_for(outcome, running, spec_error, error_reason)
    patch: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": render_conditions(conditions, previous.get("conditions"), now),
        "driftRepairs": int(previous.get("driftRepairs", 0)) + drift_repairs,
    }
    if outcome is not None:
        owners = {plan.name: plan.foreign_owner for plan in outcome.plans}
        for role, name in zip(("spout", "processor"), outcome.names, strict=True):
            error = str(outcome.errors.get(name, ""))
            if name in outcome.observed:
                patch[role] = pipeline_status(name, outcome.observed[name], owners.get(name), error)
            else:  # never observed: say so rather than leave an older state in place
                patch[role] = {"name": name, "state": UNKNOWN, "lastError": error}
        ready = next(c for c in conditions if c.type == "Ready")
        patch["summary"] = "Ready" if ready.status else ready.reason
    else:
        patch["summary"] = error_reason
    return patch
