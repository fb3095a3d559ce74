"""Unit tests of reconcile.ensure / reconcile.remove against an in-memory fake pachd gateway."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from spout_operator.gateway import canonical
from spout_operator.names import OWNER_ANNOTATION, PipelineSpec
from spout_operator.observed import ObservedPipeline
from spout_operator.pachd_api import PachdError, PachdRejected, PachdUnavailable
from spout_operator.plan import Step
from spout_operator.reconcile import SpoutUpdateBlocked, ensure, reads_repo, remove
from spout_operator.render import DesiredPair, render
from spout_operator.spec import parse

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "spout.yaml"
OWNER = "team-a/spout101"
WRITES = {"create", "update", "start", "stop", "delete", "ensure_project"}


@dataclass
class FakePipeline:
    spec: PipelineSpec
    version: int = 1
    stopped: bool = False


class FakeGateway:
    """pachd in memory (a pachd_api.Pachd): stores what it is sent plus the fields pachd
    adds, records every call, bumps the version on every update (identical or not, like
    pachd), and refuses to delete a pipeline whose output repo another pipeline still reads."""

    def __init__(self, failures: dict[tuple[str, str], PachdError] | None = None) -> None:
        self.pipelines: dict[str, FakePipeline] = {}
        self.log: list[tuple[str, str]] = []
        self.failures: dict[tuple[str, str], PachdError] = dict(failures or {})
        self.ignore_deletes = False
        self.projects = {"default"}  # pachd's own; others are made by CreateProject

    def canonical(self, spec: PipelineSpec) -> PipelineSpec:
        return canonical(spec)  # the real conversion: what pachd's own protobuf makes of it

    def _record(self, method: str, name: str, project: str = "default") -> None:
        if project not in self.projects:  # pachd's word for it
            raise PachdRejected(f'project "{project}" not found')
        self.log.append((method, name))
        failure = self.failures.get((method, name))
        if failure is not None:
            raise failure

    def writes(self) -> list[tuple[str, str]]:
        return [call for call in self.log if call[0] in WRITES]

    def put(self, spec: PipelineSpec, stopped: bool = False, version: int = 1) -> None:
        """Seed a pipeline as pachd would store it."""
        stored = copy.deepcopy(spec)
        stored.update(
            outputBranch="master",
            reprocessSpec="until_success",
            salt="a1b2c3",
            createdAt="2024-05-01T12:00:00Z",
        )
        stored["datumTries"] = stored.get("datumTries", "3")
        self.pipelines[spec["pipeline"]["name"]] = FakePipeline(stored, version, stopped)

    def inspect(self, name: str, project: str) -> ObservedPipeline | None:
        if project not in self.projects:  # the gateway reads pachd's NotFound as "missing"
            self.log.append(("inspect", name))
            return None
        self._record("inspect", name, project)
        found = self.pipelines.get(name)
        if found is None:
            return None
        return ObservedPipeline(
            name=name,
            version=found.version,
            state="PAUSED" if found.stopped else "RUNNING",
            stopped=found.stopped,
            spec=copy.deepcopy(found.spec),
        )

    def list_pipelines(self) -> list[ObservedPipeline]:
        self.log.append(("list", ""))
        found = [self.inspect(name, "default") for name in self.pipelines]
        self.log = [call for call in self.log if call[0] != "inspect" or call[1] not in self.pipelines]
        return [p for p in found if p is not None]

    def snapshot(self, not_before: float) -> dict[tuple[str, str], ObservedPipeline]:
        """A fresh listing every time (the real gateway shares one per `not_before`)."""
        return {(p.project, p.name): p for p in self.list_pipelines()}

    def create(self, spec: PipelineSpec, update: bool) -> None:
        name = spec["pipeline"]["name"]
        self._record("update" if update else "create", name, spec["pipeline"]["project"]["name"])
        existing = self.pipelines.get(name)
        if existing is not None and not update:
            raise PachdRejected(f'pipeline "{name}" already exists')
        if existing is not None and "spout" in existing.spec and self._running_readers(name):
            # pachd 2.6.0's bug: an update of a spout that a running pipeline reads fails
            raise PachdRejected(
                f'add commit provenance from "default/x.meta@1" to "default/{name}.user@1": '
                'violates foreign key constraint "fk_to_commit"'
            )
        if existing is None:
            self.put(spec)
        else:
            self.put(spec, stopped=existing.stopped, version=existing.version + 1)

    def ensure_project(self, project: str) -> None:
        self.log.append(("ensure_project", project))
        failure = self.failures.get(("ensure_project", project))
        if failure is not None:
            raise failure
        self.projects.add(project)

    def start(self, name: str, project: str) -> None:
        self._record("start", name, project)
        self.pipelines[name].stopped = False

    def stop(self, name: str, project: str) -> None:
        self._record("stop", name, project)
        if name in self.pipelines:
            self.pipelines[name].stopped = True

    def _running_readers(self, repo: str) -> list[str]:
        return [
            other
            for other, p in self.pipelines.items()
            if p.spec.get("input", {}).get("pfs", {}).get("repo") == repo and not p.stopped
        ]

    def delete(self, name: str, project: str) -> None:
        self._record("delete", name, project)
        readers = [
            other
            for other, p in self.pipelines.items()
            if p.spec.get("input", {}).get("pfs", {}).get("repo") == name
        ]
        if readers:
            raise PachdRejected(f"cannot delete repo {name}: {readers[0]} is provenant on it")
        if not self.ignore_deletes:
            self.pipelines.pop(name, None)


def pair(state: str = "Running", owner: str = OWNER, project: str | None = None) -> DesiredPair:
    spec: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())["spec"]
    spec["state"] = state
    if project is not None:
        spec["project"] = project
    return render(parse(spec, "spout101"), owner)


def created(running: bool = True) -> FakeGateway:
    """A fake pachd holding the pair as a first ensure left it."""
    gateway = FakeGateway()
    outcome = ensure(pair("Running" if running else "Stopped"), running, OWNER, gateway)
    assert outcome.error is None
    gateway.log.clear()
    return gateway


def foreign_mark(gateway: FakeGateway, name: str, owner: str | None) -> None:
    annotations = gateway.pipelines[name].spec.setdefault("metadata", {}).setdefault("annotations", {})
    if owner is None:
        annotations.pop(OWNER_ANNOTATION)
    else:
        annotations[OWNER_ANNOTATION] = owner


# --- ensure: creation ---------------------------------------------------------------------------


def test_creates_the_spout_before_the_processor() -> None:
    gateway = FakeGateway()
    outcome = ensure(pair(), True, OWNER, gateway)

    assert gateway.writes() == [("create", "spout"), ("create", "processor")]
    assert outcome.applied == (("spout", Step.CREATE), ("processor", Step.CREATE))
    assert outcome.applied
    assert outcome.error is None
    assert [p.name for p in outcome.plans] == ["spout", "processor"]


def test_outcome_shows_pachd_after_the_writes() -> None:
    outcome = ensure(pair(), True, OWNER, FakeGateway())
    spout, processor = outcome.observed["spout"], outcome.observed["processor"]
    assert spout is not None and processor is not None
    assert (spout.version, spout.stopped) == (1, False)
    assert (processor.version, processor.stopped) == (1, False)
    assert processor.spec["input"]["pfs"]["repo"] == "spout"
    assert processor.spec["metadata"]["annotations"][OWNER_ANNOTATION] == OWNER


def test_created_pipelines_carry_pachds_defaults_and_the_owner_mark() -> None:
    gateway = FakeGateway()
    ensure(pair(), True, OWNER, gateway)
    sent = gateway.pipelines["processor"].spec
    assert sent["datumTries"] == "3"
    assert sent["input"]["pfs"]["name"] == "spout"
    assert sent["input"]["pfs"]["repoType"] == "user"


def test_creates_then_stops_when_declared_stopped() -> None:
    gateway = FakeGateway()
    outcome = ensure(pair("Stopped"), False, OWNER, gateway)

    assert gateway.writes() == [
        ("create", "spout"),
        ("stop", "spout"),
        ("create", "processor"),
        ("stop", "processor"),
    ]
    assert outcome.error is None
    assert all(p.stopped for p in gateway.pipelines.values())


def test_creates_only_the_missing_pipeline() -> None:
    gateway = created()
    del gateway.pipelines["processor"]
    outcome = ensure(pair(), True, OWNER, gateway)

    assert gateway.writes() == [("create", "processor")]
    assert outcome.applied == (("processor", Step.CREATE),)
    assert gateway.pipelines["spout"].version == 1


def test_after_a_repair_only_the_repaired_pipeline_is_looked_at_again() -> None:
    gateway = created()
    del gateway.pipelines["processor"]
    gateway.log.clear()
    outcome = ensure(pair(), True, OWNER, gateway)

    assert gateway.log == [
        ("inspect", "spout"),
        ("inspect", "processor"),
        ("create", "processor"),
        ("inspect", "processor"),
    ]
    processor = outcome.observed["processor"]
    assert processor is not None and processor.version == 1


# --- ensure: nothing to do ----------------------------------------------------------------------


@pytest.mark.parametrize("running", [True, False])
def test_no_writes_when_pachd_matches(running: bool) -> None:
    gateway = created(running)
    outcome = ensure(pair("Running" if running else "Stopped"), running, OWNER, gateway)

    assert gateway.writes() == []
    assert gateway.log == [("inspect", "spout"), ("inspect", "processor")]
    assert outcome.applied == ()
    assert outcome.applied == ()
    assert outcome.error is None
    assert all(p.steps == () for p in outcome.plans)
    assert {name: p.version for name, p in gateway.pipelines.items()} == {"spout": 1, "processor": 1}


def test_repeated_ensures_never_bump_versions() -> None:
    gateway = created()
    for _ in range(3):
        ensure(pair(), True, OWNER, gateway)
    assert gateway.writes() == []
    assert {name: p.version for name, p in gateway.pipelines.items()} == {"spout": 1, "processor": 1}


# --- ensure: drift ------------------------------------------------------------------------------------


def test_image_changed_behind_our_back_is_updated_back() -> None:
    gateway = created()
    gateway.pipelines["spout"].spec["transform"]["image"] = "someone/else:latest"
    outcome = ensure(pair(), True, OWNER, gateway)

    # the processor reads the spout's repo: paused around the update (pachd 2.6's bug)
    assert gateway.writes() == [("stop", "processor"), ("update", "spout"), ("start", "processor")]
    assert outcome.applied == (("processor", Step.STOP), ("spout", Step.UPDATE), ("processor", Step.START))
    assert outcome.paused == ("processor",)
    assert outcome.plans[0].changed_fields == ("transform",)
    assert gateway.pipelines["spout"].version == 2
    assert gateway.pipelines["spout"].spec["transform"]["image"] == "ghcr.io/spout-operator/spout101:0.2.0"
    assert gateway.pipelines["processor"].version == 1


def test_stopped_behind_our_back_is_started() -> None:
    gateway = created()
    gateway.pipelines["processor"].stopped = True
    outcome = ensure(pair(), True, OWNER, gateway)

    assert gateway.writes() == [("start", "processor")]
    assert outcome.applied == (("processor", Step.START),)
    processor = outcome.observed["processor"]
    assert processor is not None and processor.stopped is False


def test_declared_stopped_stops_running_pipelines_in_creation_order() -> None:
    gateway = created()
    outcome = ensure(pair("Stopped"), False, OWNER, gateway)
    assert gateway.writes() == [("stop", "spout"), ("stop", "processor")]
    assert outcome.error is None


# --- ensure: ownership --------------------------------------------------------------------------------


@pytest.mark.parametrize("other_owner", ["team-b/spout101", None])
def test_foreign_spout_blocks_both_pipelines(other_owner: str | None) -> None:
    gateway = created()
    foreign_mark(gateway, "spout", other_owner)
    del gateway.pipelines["processor"]  # ours is missing, but must not be wired to their spout
    outcome = ensure(pair(), True, OWNER, gateway)

    assert gateway.writes() == []
    assert outcome.applied == ()
    assert outcome.plans[0].foreign is True
    assert outcome.plans[0].foreign_owner == (other_owner or "(no owner mark)")
    assert outcome.skipped == ("processor",)
    assert "processor" not in gateway.pipelines


def test_foreign_spout_with_a_changed_image_is_left_alone() -> None:
    gateway = created()
    foreign_mark(gateway, "spout", "team-b/spout101")
    gateway.pipelines["spout"].spec["transform"]["image"] = "theirs:1"
    gateway.pipelines["spout"].stopped = True
    ensure(pair(), True, OWNER, gateway)

    assert gateway.writes() == []
    assert gateway.pipelines["spout"].spec["transform"]["image"] == "theirs:1"
    assert gateway.pipelines["spout"].stopped is True


def test_foreign_processor_is_left_alone_and_ours_is_still_repaired() -> None:
    gateway = created()
    foreign_mark(gateway, "processor", "team-b/spout101")
    gateway.pipelines["processor"].spec["description"] = "theirs"
    gateway.pipelines["spout"].stopped = True
    outcome = ensure(pair(), True, OWNER, gateway)

    assert gateway.writes() == [("start", "spout")]
    assert outcome.plans[1].foreign is True
    assert outcome.skipped == ()
    assert gateway.pipelines["processor"].spec["description"] == "theirs"


# --- ensure: errors -----------------------------------------------------------------------------------


def test_pachd_unavailable_on_inspect_is_reported_not_raised() -> None:
    gateway = FakeGateway(failures={("inspect", "spout"): PachdUnavailable("pachd unreachable")})
    outcome = ensure(pair(), True, OWNER, gateway)

    assert isinstance(outcome.error, PachdUnavailable)
    assert outcome.applied == ()
    assert outcome.plans == ()
    assert gateway.writes() == []


def test_rejected_processor_keeps_the_spout_write_in_the_outcome() -> None:
    limit = PachdRejected("an activation key is required to create more than 16 pipelines")
    gateway = FakeGateway(failures={("create", "processor"): limit})
    outcome = ensure(pair(), True, OWNER, gateway)

    assert outcome.error is limit
    assert outcome.errors == {"processor": limit}
    assert outcome.applied == (("spout", Step.CREATE),)
    assert [p.name for p in outcome.plans] == ["spout", "processor"]
    assert gateway.writes() == [("create", "spout"), ("create", "processor")]


def test_unavailable_while_writing_is_reported() -> None:
    gateway = created()
    gateway.pipelines["spout"].stopped = True
    gateway.failures[("start", "spout")] = PachdUnavailable("deadline exceeded")
    outcome = ensure(pair(), True, OWNER, gateway)

    assert isinstance(outcome.error, PachdUnavailable)
    assert outcome.applied == ()


def test_spec_pachd_cannot_parse_is_reported_before_any_call() -> None:
    spec: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())["spec"]
    spec["processor"]["transform"]["bogus"] = True
    gateway = FakeGateway()
    outcome = ensure(render(parse(spec, "spout101"), OWNER), True, OWNER, gateway)

    assert isinstance(outcome.error, PachdRejected)
    assert "bogus" in str(outcome.error)
    assert gateway.log == []


# --- remove -------------------------------------------------------------------------------------------------


def test_remove_deletes_processor_before_spout() -> None:
    gateway = created()
    removal = remove(pair(), OWNER, gateway)

    assert gateway.writes() == [("delete", "processor"), ("delete", "spout")]
    assert removal.remaining == ()
    assert removal.foreign == ()
    assert removal.error is None
    assert gateway.pipelines == {}


def test_remove_when_nothing_is_left_deletes_nothing() -> None:
    gateway = FakeGateway()
    removal = remove(pair(), OWNER, gateway)
    assert gateway.writes() == []
    assert removal.remaining == ()
    assert removal.error is None


def test_remove_finishes_a_half_done_deletion() -> None:
    gateway = created()
    del gateway.pipelines["processor"]
    removal = remove(pair(), OWNER, gateway)
    assert gateway.writes() == [("delete", "spout")]
    assert removal.remaining == ()


@pytest.mark.parametrize("other_owner", ["team-b/spout101", None])
def test_remove_leaves_a_foreign_spout(other_owner: str | None) -> None:
    gateway = created()
    foreign_mark(gateway, "spout", other_owner)
    removal = remove(pair(), OWNER, gateway)

    assert gateway.writes() == [("delete", "processor")]
    assert removal.foreign == ("spout",)
    assert removal.remaining == ()
    assert removal.error is None
    assert list(gateway.pipelines) == ["spout"]


def test_remove_leaves_a_foreign_processor_and_reports_what_pachd_refuses() -> None:
    gateway = created()
    foreign_mark(gateway, "processor", "team-b/spout101")
    removal = remove(pair(), OWNER, gateway)

    assert ("delete", "processor") not in gateway.writes()
    assert removal.foreign == ("processor",)
    assert isinstance(removal.error, PachdRejected)  # their processor still reads our spout's repo
    assert set(gateway.pipelines) == {"spout", "processor"}


def test_remove_reports_pipelines_pachd_still_has() -> None:
    gateway = created()
    gateway.ignore_deletes = True
    gateway.pipelines["processor"].spec["input"] = {}  # so the fake does not refuse the spout
    removal = remove(pair(), OWNER, gateway)
    assert removal.remaining == ("processor", "spout")
    assert removal.error is None


@pytest.mark.parametrize(
    ("failing_call", "deleted_before"),
    [(("inspect", "processor"), []), (("delete", "spout"), [("delete", "processor")])],
)
def test_remove_reports_pachd_errors_without_raising(
    failing_call: tuple[str, str], deleted_before: list[tuple[str, str]]
) -> None:
    gateway = created()
    gateway.failures[failing_call] = PachdUnavailable("pachd unreachable")
    removal = remove(pair(), OWNER, gateway)

    assert isinstance(removal.error, PachdUnavailable)
    assert removal.remaining == ("processor", "spout")  # unknown on error: assume both remain
    assert [w for w in gateway.writes() if w != failing_call] == deleted_before


# --- ensure: spout updates on pachd 2.6 (its readers paused around the update) ----------------


def edited(state: str = "Running", spout_image: str = "", processor_glob: str = "") -> DesiredPair:
    spec: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())["spec"]
    spec["state"] = state
    if spout_image:
        spec["spout"]["transform"]["image"] = spout_image
    if processor_glob:
        spec["processor"]["glob"] = processor_glob
    return render(parse(spec, "spout101"), OWNER)


def reader(gateway: FakeGateway, name: str, owner: str | None, stopped: bool = False) -> None:
    """Another pipeline reading the spout's repo."""
    spec = copy.deepcopy(gateway.pipelines["processor"].spec)
    spec["pipeline"]["name"] = name
    gateway.put(spec, stopped=stopped)
    foreign_mark(gateway, name, owner)


def test_spout_change_pauses_the_processor_updates_the_spout_and_starts_it_again() -> None:
    gateway = created()
    outcome = ensure(edited(spout_image="spout101:2"), True, OWNER, gateway)

    assert gateway.writes() == [("stop", "processor"), ("update", "spout"), ("start", "processor")]
    assert outcome.errors == {}
    assert outcome.paused == ("processor",)
    assert gateway.pipelines["spout"].version == 2
    assert gateway.pipelines["processor"].version == 1  # start is no update
    assert not gateway.pipelines["processor"].stopped
    assert ensure(edited(spout_image="spout101:2"), True, OWNER, gateway).applied == ()


def test_spout_and_processor_changes_together() -> None:
    gateway = created()
    outcome = ensure(edited(spout_image="spout101:2", processor_glob="/*.txt"), True, OWNER, gateway)

    assert gateway.writes() == [
        ("stop", "processor"),
        ("update", "spout"),
        ("update", "processor"),
        ("start", "processor"),
    ]
    assert outcome.errors == {}
    assert not gateway.pipelines["processor"].stopped


@pytest.mark.parametrize("killed_after", ["stop", "update"])
def test_a_pass_killed_midway_converges_on_the_next(killed_after: str) -> None:
    gateway = created()
    gateway.pipelines["processor"].stopped = True  # the pass had paused the processor
    if killed_after == "update":  # ... and its spout update had landed
        gateway.put(with_image(gateway.pipelines["spout"].spec, "spout101:2"), version=2)
    outcome = ensure(edited(spout_image="spout101:2"), True, OWNER, gateway)

    rest = [("start", "processor")]
    assert gateway.writes() == (rest if killed_after == "update" else [("update", "spout"), *rest])
    assert outcome.errors == {}
    assert not gateway.pipelines["processor"].stopped
    assert gateway.pipelines["spout"].version == 2


def with_image(spec: PipelineSpec, image: str) -> PipelineSpec:
    changed = copy.deepcopy(spec)
    changed["transform"]["image"] = image
    return changed


def test_a_running_foreign_reader_blocks_the_spout_update_and_is_never_stopped() -> None:
    gateway = created()
    reader(gateway, "audit", owner="team-b/audit")
    outcome = ensure(edited(spout_image="spout101:2", processor_glob="/*.txt"), True, OWNER, gateway)

    assert ("stop", "audit") not in gateway.writes()
    assert ("update", "spout") not in gateway.writes()
    assert gateway.writes() == [("update", "processor")]  # the processor's own change still applies
    blocked = outcome.errors["spout"]
    assert isinstance(blocked, SpoutUpdateBlocked)
    assert "default/audit (owner: team-b/audit)" in str(blocked) and "pachctl stop pipeline" in str(blocked)
    assert "processor" not in outcome.errors
    assert not gateway.pipelines["processor"].stopped and not gateway.pipelines["audit"].stopped


def test_a_stopped_foreign_reader_does_not_block() -> None:
    gateway = created()
    reader(gateway, "audit", owner=None, stopped=True)
    outcome = ensure(edited(spout_image="spout101:2"), True, OWNER, gateway)

    assert gateway.writes() == [("stop", "processor"), ("update", "spout"), ("start", "processor")]
    assert outcome.errors == {}
    assert gateway.pipelines["audit"].stopped


def test_a_refused_spout_update_still_starts_the_paused_processor() -> None:
    gateway = created()
    refusal = PachdRejected("invalid image name")
    gateway.failures[("update", "spout")] = refusal
    outcome = ensure(edited(spout_image="spout101:2"), True, OWNER, gateway)

    assert gateway.writes() == [("stop", "processor"), ("update", "spout"), ("start", "processor")]
    assert outcome.errors == {"spout": refusal}
    assert not gateway.pipelines["processor"].stopped


def test_a_refused_processor_change_does_not_hold_back_the_spouts() -> None:
    gateway = created()
    refusal = PachdRejected("parallelism above 8 requires an activation key")
    gateway.failures[("update", "processor")] = refusal
    outcome = ensure(edited(spout_image="spout101:2", processor_glob="/*.txt"), True, OWNER, gateway)

    assert gateway.pipelines["spout"].version == 2
    assert outcome.errors == {"processor": refusal}
    assert not gateway.pipelines["processor"].stopped  # started although its update was refused


def test_a_spout_change_of_a_stopped_pair_leaves_both_stopped() -> None:
    gateway = created(running=False)
    outcome = ensure(edited(state="Stopped", spout_image="spout101:2"), False, OWNER, gateway)

    assert gateway.writes() == [("update", "spout"), ("stop", "spout")]
    assert outcome.errors == {}
    assert gateway.pipelines["spout"].stopped and gateway.pipelines["processor"].stopped


def test_reads_repo_finds_the_repo_at_any_depth() -> None:
    nested = {"input": {"cross": [{"pfs": {"repo": "other"}}, {"union": [{"pfs": {"repo": "spout"}}]}]}}
    assert reads_repo(nested, "default", "spout")
    assert not reads_repo(nested, "elsewhere", "spout")
    assert not reads_repo({"spout": {}}, "default", "spout")


def test_a_project_pachd_refuses_to_make_is_asked_again_so_each_pipeline_says_why() -> None:
    refused = PachdRejected("not authorized to create project team-a")
    gateway = FakeGateway({("ensure_project", "team-a"): refused})
    outcome = ensure(pair(project="team-a"), True, OWNER, gateway, create_project=True)
    assert outcome.errors == {"spout": refused, "processor": refused}
    assert gateway.writes() == [("ensure_project", "team-a"), ("ensure_project", "team-a")]
