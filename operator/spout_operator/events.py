"""Which Kubernetes Events a pass posts (pure).

Normal Events say what the operator did to pachd; Warnings say what is wrong, and go
out only when a condition changes: 500 resources on a pachd that is down would
otherwise post 50 Events a second, to the API server and to memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from spout_operator.names import PAUSED_ANNOTATION, REPAIRS, Trigger
from spout_operator.plan import Step
from spout_operator.reconcile import Outcome


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def news(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether any condition's status, reason or message differs from the previous status."""

    def essence(status: Mapping[str, Any]) -> set[tuple[Any, ...]]:
        return {
            (c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
            for c in status.get("conditions") or []
        }

    return essence(previous) != essence(new)


def for_invalid_spec(
    trigger: Trigger, previous: Mapping[str, Any], new: Mapping[str, Any], reason: str = "InvalidSpec"
) -> list[Event]:
    """A spec, or its connection, that nothing can be sent to pachd with (reason says which)."""
    message = next((c["message"] for c in new.get("conditions") or [] if c.get("type") == "Synced"), "")
    if trigger == "change" or news(previous, new):
        return [Event("Warning", reason, message)]
    return []


def for_pass(
    trigger: Trigger, outcome: Outcome, previous: Mapping[str, Any], new: Mapping[str, Any]
) -> list[Event]:
    events: list[Event] = []
    for pipeline, step in outcome.applied:
        if pipeline in outcome.paused and step in (Step.STOP, Step.START):
            # pachd 2.6 cannot update a spout while its readers run: say why they stopped
            reason = "ProcessorPaused" if step is Step.STOP else "ProcessorResumed"
            verb = (
                "paused for the spout's update"
                if step is Step.STOP
                else "started again after the spout's update"
            )
            events.append(Event("Normal", reason, f"pipeline {pipeline} {verb}"))
        elif trigger in REPAIRS:
            events.append(Event("Normal", "DriftRepaired", f"{step.value} pipeline {pipeline}"))
        else:
            events.append(
                Event("Normal", "Pipeline" + step.value.capitalize(), f"{step.value} pipeline {pipeline}")
            )
    if not (trigger == "change" or news(previous, new)):
        return events
    for plan in outcome.plans:
        if plan.foreign:
            message = f"pipeline {plan.name} exists and belongs to {plan.foreign_owner}; left untouched"
            events.append(Event("Warning", "ForeignPipeline", message))
    seen: set[str] = set()
    for name, error in outcome.errors.items():
        if str(error) not in seen:  # one cause (pachd down) once, not once per pipeline
            seen.add(str(error))
            events.append(Event("Warning", type(error).__name__, f"pipeline {name}: {error}"))
    return events


def for_pause(previous: Mapping[str, Any], paused: bool) -> list[Event]:
    """One Event when a pause starts, one when it ends (status.paused says which it was)."""
    if paused and not previous.get("paused"):
        return [
            Event(
                "Normal",
                "ReconcilePaused",
                f"reconciliation paused ({PAUSED_ANNOTATION}): pachd is left as it is",
            )
        ]
    if not paused and previous.get("paused"):
        return [
            Event("Normal", "ReconcileResumed", "reconciliation resumed: pachd is brought to the spec again")
        ]
    return []
