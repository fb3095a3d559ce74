"""One reconcile pass: desired pair -> observe pachd -> plan -> apply -> outcome.

Level-based and idempotent: run it on create, update, resume and every drift
check alike. The only I/O is through the gateway; planning and status are pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spout_operator.gateway import Gateway, PachdError, canonical
from spout_operator.observed import ObservedPipeline
from spout_operator.plan import PipelinePlan, Step, plan_pipeline, with_pachd_defaults
from spout_operator.render import DesiredPair, PipelineSpec, pipeline_name


@dataclass(frozen=True)
class Outcome:
    """What a pass found and did. `observed` is pachd's view after the writes."""

    names: tuple[str, str]  # spout, processor: known even when pachd could not be asked
    plans: tuple[PipelinePlan, ...]
    observed: dict[str, ObservedPipeline | None]
    applied: tuple[tuple[str, Step], ...] = ()
    error: PachdError | None = None
    skipped: tuple[str, ...] = field(default=())  # not touched because the spout is not ours


def project_of(spec: PipelineSpec) -> str:
    return str(spec["pipeline"].get("project", {}).get("name", "default"))


def ensure(
    pair: DesiredPair,
    running: bool,
    owner: str,
    gateway: Gateway,
    snapshot: Mapping[tuple[str, str], ObservedPipeline] | None = None,
) -> Outcome:
    """Bring pachd to the desired pair. With a snapshot (drift checks and polls), the first
    look at pachd comes from that shared listing; otherwise each pipeline is inspected."""
    names = (pipeline_name(pair.spout), pipeline_name(pair.processor))
    observed: dict[str, ObservedPipeline | None] = {}
    plans: list[PipelinePlan] = []
    applied: list[tuple[str, Step]] = []
    skipped: list[str] = []
    try:
        desired = [canonical(with_pachd_defaults(spec)) for spec in pair.in_creation_order()]
        for spec in desired:
            name = pipeline_name(spec)
            listed = None if snapshot is None else snapshot.get((project_of(spec), name))
            # Absent from the listing (deleted, or written since it was taken): ask pachd, so
            # nothing is ever created on the word of a listing that may be out of date.
            observed[name] = listed if listed is not None else gateway.inspect(name, project_of(spec))
            plans.append(plan_pipeline(spec, observed[name], running, owner))
        spout_plan = plans[0]
        for spec, plan in zip(desired, plans, strict=True):
            if plan is not spout_plan and spout_plan.foreign:
                skipped.append(plan.name)  # never wire our processor to someone else's spout
                continue
            for step in plan.steps:
                _apply(gateway, spec, step)
                applied.append((plan.name, step))
        written = {name for name, _ in applied}
        for spec in desired:  # only what changed: at a sweep with many repairs, calls count
            if pipeline_name(spec) in written:
                observed[pipeline_name(spec)] = gateway.inspect(pipeline_name(spec), project_of(spec))
    except PachdError as err:
        return Outcome(names, tuple(plans), observed, tuple(applied), err, tuple(skipped))
    return Outcome(names, tuple(plans), observed, tuple(applied), None, tuple(skipped))


def unobserved(pair: DesiredPair, error: PachdError) -> Outcome:
    """The outcome of a pass that could not look at pachd at all."""
    return Outcome((pipeline_name(pair.spout), pipeline_name(pair.processor)), (), {}, error=error)


def _apply(gateway: Gateway, spec: PipelineSpec, step: Step) -> None:
    name, project = pipeline_name(spec), project_of(spec)
    if step is Step.CREATE:
        gateway.create(spec, update=False)
    elif step is Step.UPDATE:
        gateway.create(spec, update=True)
    elif step is Step.START:
        gateway.start(name, project)
    elif step is Step.STOP:
        gateway.stop(name, project)


@dataclass(frozen=True)
class Removal:
    """What a deletion pass left behind: names still in pachd (or unknown on error)."""

    remaining: tuple[str, ...]
    foreign: tuple[str, ...]
    error: PachdError | None = None


def remove(pair: DesiredPair, owner: str, gateway: Gateway) -> Removal:
    """Delete the pipelines this resource owns, processor first (it reads the spout's repo)."""
    foreign: list[str] = []
    remaining: list[str] = []
    try:
        for spec in pair.in_deletion_order():
            name, project = pipeline_name(spec), project_of(spec)
            found = gateway.inspect(name, project)
            if found is None:
                continue
            if plan_pipeline(spec, found, running=True, owner=owner).foreign:
                foreign.append(name)
                continue
            gateway.delete(name, project)
            if gateway.inspect(name, project) is not None:
                remaining.append(name)
    except PachdError as err:
        names = tuple(pipeline_name(s) for s in pair.in_deletion_order())
        return Removal(names, tuple(foreign), err)
    return Removal(tuple(remaining), tuple(foreign))
