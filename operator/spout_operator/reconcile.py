"""One reconcile pass: desired pair -> observe pachd -> plan -> apply -> outcome.

Level-based and idempotent: run it on create, update, resume and every drift
check alike. The only I/O is through the Pachd protocol (the gateway); planning and status are pure.

Each pipeline's writes stand on their own: pachd refusing one pipeline's change
never keeps a valid change to the other from being applied, and each pipeline
reports its own error. Only an unreachable pachd ends the pass early.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spout_operator.names import PipelineSpec
from spout_operator.observed import ObservedPipeline
from spout_operator.pachd_api import Pachd, PachdError, PachdUnavailable
from spout_operator.plan import PipelinePlan, Step, plan_pipeline, with_pachd_defaults
from spout_operator.render import DesiredPair, owner_of, pipeline_name


class SpoutUpdateBlocked(PachdError):
    """The spout's update has to wait: pipelines this resource does not manage read its repo."""


@dataclass(frozen=True)
class Outcome:
    """What a pass found and did. `observed` is pachd's view after the writes."""

    names: tuple[str, str]  # spout, processor: known even when pachd could not be asked
    plans: tuple[PipelinePlan, ...]
    observed: dict[str, ObservedPipeline | None]
    applied: tuple[tuple[str, Step], ...] = ()
    errors: Mapping[str, PachdError] = field(default_factory=dict)  # pipeline name -> its own error
    skipped: tuple[str, ...] = ()  # not touched because the spout is not ours
    paused: tuple[str, ...] = ()  # stopped (and started again) around the spout's update

    @property
    def error(self) -> PachdError | None:
        """The error that describes the pass: pachd unreachable first, then the first refusal."""
        unavailable = [e for e in self.errors.values() if isinstance(e, PachdUnavailable)]
        return next(iter(unavailable or self.errors.values()), None)


def project_of(spec: PipelineSpec) -> str:
    return str(spec["pipeline"].get("project", {}).get("name", "default"))


def reads_repo(spec: Mapping[str, Any], project: str, repo: str) -> bool:
    """Whether a (canonical) pipeline spec's input reads `project/repo`, at any depth."""

    def inputs(node: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
        yield node
        for key in ("cross", "union", "join", "group"):
            for child in node.get(key) or []:
                yield from inputs(child)

    for node in inputs(spec.get("input") or {}):
        pfs = node.get("pfs")
        if pfs and pfs.get("repo") == repo and (pfs.get("project") or "default") == project:
            return True
    return False


def spout_readers(pipelines: Iterable[ObservedPipeline], project: str, spout: str) -> list[ObservedPipeline]:
    """Running pipelines whose input reads the spout's output repo.

    pachd 2.6 fails an update of a spout while any of them runs (commit provenance,
    see docs/development.md "Versions and known limits"); a stopped one has no provenance to trip on.
    """
    return [p for p in pipelines if not p.stopped and reads_repo(p.spec, project, spout)]


def ensure(
    pair: DesiredPair,
    running: bool,
    owner: str,
    gateway: Pachd,
    snapshot: Mapping[tuple[str, str], ObservedPipeline] | None = None,
    create_project: bool = False,
    hold: bool = False,
) -> Outcome:
    """Bring pachd to the desired pair. With a snapshot (drift checks and polls), the first
    look at pachd comes from that shared listing; otherwise each pipeline is inspected.
    `create_project`: the project is the resource's namespace's own: create it with the
    first pipeline created there (pachd refuses pipelines in a project it does not have).
    `hold`: reconciliation is paused: plan, but write nothing (the plans say what is held)."""
    names = (pipeline_name(pair.spout), pipeline_name(pair.processor))
    observed: dict[str, ObservedPipeline | None] = {}
    plans: list[PipelinePlan] = []
    applied: list[tuple[str, Step]] = []
    errors: dict[str, PachdError] = {}
    skipped: list[str] = []
    paused: list[str] = []
    # The projects this pass made sure of (None: not ours to create): one call each, not one per create.
    projects: set[str] | None = set() if create_project else None
    try:
        spout_spec, processor_spec = (
            gateway.canonical(with_pachd_defaults(s)) for s in pair.in_creation_order()
        )
        for spec in (spout_spec, processor_spec):
            name = pipeline_name(spec)
            listed = None if snapshot is None else snapshot.get((project_of(spec), name))
            # Absent from the listing (deleted, or written since it was taken): ask pachd, so
            # nothing is ever created on the word of a listing that may be out of date.
            observed[name] = listed if listed is not None else gateway.inspect(name, project_of(spec))
        spout, processor = names
        spout_plan = plan_pipeline(spout_spec, observed[spout], running, owner)
        plans.append(spout_plan)
        processor_seen = observed[processor]
        if hold:
            plans.append(plan_pipeline(processor_spec, processor_seen, running, owner))
            return Outcome(names, tuple(plans), observed)
        if Step.UPDATE in spout_plan.steps:
            blocked, pausable = _readers_in_the_way(gateway, spout_spec, owner)
            if blocked:
                errors[spout] = blocked
                spout_plan = dataclasses.replace(
                    spout_plan, steps=tuple(s for s in spout_plan.steps if s is not Step.UPDATE)
                )
            for reader in pausable:  # our own processor: stopped now, started again below
                gateway.stop(reader.name, reader.project)
                applied.append((reader.name, Step.STOP))
                paused.append(reader.name)
                if reader.name == processor and processor_seen is not None:
                    processor_seen = dataclasses.replace(processor_seen, stopped=True)
        _apply_plan(gateway, spout_spec, spout_plan, applied, errors, projects)
        # Planned against what pachd holds now: a processor paused for the spout's update is
        # started again here, whatever became of the update (never left stopped).
        processor_plan = plan_pipeline(processor_spec, processor_seen, running, owner)
        plans.append(processor_plan)
        if spout_plan.foreign:
            skipped.append(processor)  # never wire our processor to someone else's spout
        else:
            _apply_plan(gateway, processor_spec, processor_plan, applied, errors, projects)
        for spec in (spout_spec, processor_spec):  # only what changed: at a sweep, calls count
            name = pipeline_name(spec)
            if any(written == name for written, _ in applied):
                observed[name] = gateway.inspect(name, project_of(spec))
    except PachdUnavailable as err:
        errors = {name: err for name in names}
    except PachdError as err:  # pachd cannot even parse the desired specs
        errors = {name: errors.get(name, err) for name in names}
    return Outcome(names, tuple(plans), observed, tuple(applied), errors, tuple(skipped), tuple(paused))


def _readers_in_the_way(
    gateway: Pachd, spout: PipelineSpec, owner: str
) -> tuple[SpoutUpdateBlocked | None, list[ObservedPipeline]]:
    """The running readers of the spout's repo: blocked by any this resource does not own,
    else the ones to pause (ours) for the update."""
    name, project = pipeline_name(spout), project_of(spout)
    readers = spout_readers(gateway.list_pipelines(), project, name)
    foreign = [r for r in readers if owner_of(r.spec) != owner]
    if not foreign:
        return None, readers
    listed = ", ".join(f"{r.project}/{r.name} (owner: {owner_of(r.spec) or 'none'})" for r in foreign)
    return (
        SpoutUpdateBlocked(
            f"spout {name} cannot be updated while pipelines this resource does not manage read its "
            f"repo: {listed}. pachd 2.6 fails a spout update while a pipeline reads it; stop those "
            f"pipelines (pachctl stop pipeline <name>), the update then applies, and start them again"
        ),
        [],
    )


def _apply_plan(
    gateway: Pachd,
    spec: PipelineSpec,
    plan: PipelinePlan,
    applied: list[tuple[str, Step]],
    errors: dict[str, PachdError],
    projects: set[str] | None = None,
) -> None:
    """Apply one pipeline's steps. A refused create ends them; a refused update still lets
    start/stop follow, so a declared state holds while the new spec waits for a fix.
    `projects`: None, or the projects made sure of so far: a create first makes sure of its
    own (once: a project pachd refused is asked again by the next create)."""
    for step in plan.steps:
        try:
            if step is Step.CREATE and projects is not None and project_of(spec) not in projects:
                gateway.ensure_project(project_of(spec))
                projects.add(project_of(spec))
            _apply(gateway, spec, step)
        except PachdUnavailable:
            raise
        except PachdError as err:
            errors.setdefault(plan.name, err)
            if step is Step.CREATE:
                return
            continue
        applied.append((plan.name, step))


def unobserved(pair: DesiredPair, error: PachdError) -> Outcome:
    """The outcome of a pass that could not look at pachd at all."""
    names = (pipeline_name(pair.spout), pipeline_name(pair.processor))
    return Outcome(names, (), {}, errors={name: error for name in names})


def _apply(gateway: Pachd, spec: PipelineSpec, step: Step) -> None:
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


def remove(pair: DesiredPair, owner: str, gateway: Pachd) -> Removal:
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
