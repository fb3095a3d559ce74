"""Which pipelines in pachd a SpoutPipeline answers for, and when its deletion may finish
without pachd (pure).

status.managed records where a resource's pipelines were created: deletion reads it, and a
resource that never got that far is deleted without asking pachd.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spout_operator.pachd_api import PachdUnavailable
from spout_operator.reconcile import Outcome
from spout_operator.spec import ConnectionRef


def wrote_to_pachd(outcome: Outcome) -> bool:
    """Whether this pass may have created something in pachd: a write succeeded, one was
    attempted (a write that timed out may still have landed), or a pipeline of ours exists."""
    if outcome.applied:
        return True
    timed_out = {name for name, err in outcome.errors.items() if isinstance(err, PachdUnavailable)}
    if any(plan.steps and not plan.foreign and plan.name in timed_out for plan in outcome.plans):
        return True
    foreign = {plan.name for plan in outcome.plans if plan.foreign}
    return any(found is not None and name not in foreign for name, found in outcome.observed.items())


def managed_entry(ref: ConnectionRef, address: str) -> dict[str, Any]:
    """status.managed: where the pipelines were created, for deletion to find them."""
    return {"connectionRef": {"kind": ref.kind, "name": ref.name}, "address": address}


def managed_after(
    previous: Mapping[str, Any], outcome: Outcome, ref: ConnectionRef, address: str
) -> Mapping[str, Any] | None:
    """status.managed after a pass: where this pass found or made the resource's pipelines
    (so it follows a connection whose address changed), else the entry already recorded (a
    pass that could not look at pachd knows nothing new), else None (nothing in pachd is
    this resource's)."""
    if wrote_to_pachd(outcome):
        return managed_entry(ref, address)
    recorded: Mapping[str, Any] | None = previous.get("managed") or None
    return recorded


def recorded_connection(status: Mapping[str, Any]) -> ConnectionRef | None:
    """The connection status.managed names, or None when nothing was ever created."""
    ref = (status.get("managed") or {}).get("connectionRef")
    if not ref:
        return None
    return ConnectionRef(kind=str(ref.get("kind")), name=str(ref.get("name")))


def finish_without_pachd(
    managed: bool, permanent: bool, namespace_terminating: bool, waited_s: float, grace_s: float
) -> bool:
    """Whether a deletion that cannot reach pachd may still remove the finalizer.

    Nothing created: nothing to delete. In a namespace being deleted, its connection and
    Secret never come back (no object can be created there any more): finish at once when
    they are gone, after `grace_s` when pachd only fails to answer. Otherwise wait; the
    way out is spec.deletionPolicy: Orphan."""
    if not managed:
        return True
    if namespace_terminating:
        return permanent or waited_s >= grace_s
    return False
