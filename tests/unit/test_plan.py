"""Unit tests of plan: desired spec vs. what pachd holds -> create / update / start / stop."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from spout_operator.gateway import canonical
from spout_operator.names import PipelineSpec
from spout_operator.observed import ObservedPipeline
from spout_operator.plan import (
    DEFAULT_DATUM_TRIES,
    DEFAULT_USER_IMAGE,
    PipelinePlan,
    Step,
    changed_fields,
    plan_pipeline,
    with_pachd_defaults,
)
from spout_operator.render import DesiredPair, render
from spout_operator.spec import parse

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "spout.yaml"
OWNER = "team-a/spout101"
IMAGE = "ghcr.io/spout-operator/spout101:0.2.0"  # the samples' (VERSION)
OWNERSHIP = {
    "annotations": {"spout-operator.dev/owner": OWNER},
    "labels": {"app.kubernetes.io/managed-by": "spout-operator"},
}


def stored_input(repo: str, glob: str = "/*") -> dict[str, Any]:
    """A pfs input of `repo` as pachd 2.6 stores it: its defaults (name, repoType, branch)
    filled in."""
    return {
        "pfs": {
            "name": repo,
            "repo": repo,
            "repoType": "user",
            "branch": "master",
            "glob": glob,
            "project": "default",
        }
    }


# What pachd 2.6 returns for the spout101 pair once the operator created it (InspectPipeline
# with details, through json_format.MessageToDict, as gateway._observed builds it): pachd's
# defaults filled in, int64 as strings, plus the fields pachd owns.
STORED_SPOUT: dict[str, Any] = {
    "pipeline": {"name": "spout", "project": {"name": "default"}},
    "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.consumer"]},
    "description": "A spout pipeline that emulates the reception of data from an external source",
    "spout": {},
    "outputBranch": "master",
    "datumTries": "3",
    "reprocessSpec": "until_success",
    "salt": "0b9c1e6f3a4d4f1b8a3c2d7e5f6a7b8c",
    "createdAt": "2024-05-01T12:00:00.123456Z",
    "workersRequested": "1",
    "workerRc": "default-spout-v1",
    "metadata": copy.deepcopy(OWNERSHIP),
}
STORED_PROCESSOR: dict[str, Any] = {
    "pipeline": {"name": "processor", "project": {"name": "default"}},
    "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.processor"]},
    "description": "A pipeline that sorts 1KB vs 2KB files",
    "input": stored_input("spout"),
    "outputBranch": "master",
    "datumTries": "3",
    "reprocessSpec": "until_success",
    "salt": "5d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a",
    "createdAt": "2024-05-01T12:00:01.654321Z",
    "workersRequested": "1",
    "workerRc": "default-processor-v1",
    "metadata": copy.deepcopy(OWNERSHIP),
}


def sample_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())["spec"]
    return spec


def rendered_pair(spec: dict[str, Any] | None = None) -> DesiredPair:
    return render(parse(spec if spec is not None else sample_spec(), "spout101"), OWNER)


def desired(spec: PipelineSpec) -> PipelineSpec:
    """What reconcile compares: the rendered spec with pachd's defaults, in protobuf JSON form."""
    return canonical(with_pachd_defaults(spec))


def desired_processor() -> PipelineSpec:
    return desired(rendered_pair().processor)


def observed(
    stored: dict[str, Any], stopped: bool = False, state: str = "RUNNING", version: int = 1
) -> ObservedPipeline:
    return ObservedPipeline(
        name=stored["pipeline"]["name"],
        version=version,
        state=state,
        stopped=stopped,
        spec=copy.deepcopy(stored),
    )


def stored_processor(**changes: Any) -> dict[str, Any]:
    stored = copy.deepcopy(STORED_PROCESSOR)
    stored.update(changes)
    return stored


# --- the guard against needless updates -------------------------------------------------


@pytest.mark.parametrize(("role", "stored"), [("spout", STORED_SPOUT), ("processor", STORED_PROCESSOR)])
def test_rendered_spec_matches_what_pachd_stores(role: str, stored: dict[str, Any]) -> None:
    pair = rendered_pair()
    want = desired(pair.spout if role == "spout" else pair.processor)

    assert changed_fields(want, stored) == ()
    assert plan_pipeline(want, observed(stored), running=True, owner=OWNER) == PipelinePlan(
        stored["pipeline"]["name"]
    )


def test_stopped_pipeline_that_should_be_stopped_and_matches_needs_nothing() -> None:
    plan = plan_pipeline(
        desired_processor(), observed(STORED_PROCESSOR, stopped=True), running=False, owner=OWNER
    )
    assert plan.steps == ()


def test_rendered_spec_with_every_option_matches_what_pachd_stores() -> None:
    spec = sample_spec()
    spec["processor"].update(
        datumTries=5,
        parallelismSpec={"constant": 2},
        autoscaling=True,
        resourceRequests={"cpu": 0.5, "memory": "256Mi"},
        resourceLimits={"cpu": 1, "memory": "512Mi", "gpu": {"type": "nvidia.com/gpu", "number": 1}},
        podPatch="[]",
        metadata={"labels": {"team": "data"}},
        glob="//*/",
    )
    spec["processor"]["transform"]["env"] = {"LOG_LEVEL": "debug"}
    stored = stored_processor(
        datumTries="5",
        parallelismSpec={"constant": "2"},
        autoscaling=True,
        resourceRequests={"cpu": 0.5, "memory": "256Mi"},
        resourceLimits={"cpu": 1.0, "memory": "512Mi", "gpu": {"type": "nvidia.com/gpu", "number": "1"}},
        podPatch="[]",
        metadata={"labels": {"team": "data", **OWNERSHIP["labels"]}, "annotations": OWNERSHIP["annotations"]},
    )
    stored["transform"]["env"] = {"LOG_LEVEL": "debug"}
    want = desired(rendered_pair(spec).processor)

    assert plan_pipeline(want, observed(stored), running=True, owner=OWNER).steps == ()


# --- changes that must update ----------------------------------------------------------------


def test_image_changed_in_pachd_plans_an_update() -> None:
    stored = stored_processor()
    stored["transform"]["image"] = "someone/else:latest"
    plan = plan_pipeline(desired_processor(), observed(stored), running=True, owner=OWNER)

    assert plan.steps == (Step.UPDATE,)
    assert plan.changed_fields == ("transform",)


@pytest.mark.parametrize(
    ("stored_env", "wanted_env"),
    [
        ({"LOG_LEVEL": "info"}, {"LOG_LEVEL": "debug"}),
        ({}, {"LOG_LEVEL": "debug"}),
        ({"LOG_LEVEL": "debug", "EXTRA": "1"}, {"LOG_LEVEL": "debug"}),
        ({"LOG_LEVEL": "debug"}, {}),
    ],
)
def test_env_var_difference_plans_an_update(stored_env: dict[str, str], wanted_env: dict[str, str]) -> None:
    spec = sample_spec()
    if wanted_env:
        spec["processor"]["transform"]["env"] = wanted_env
    stored = stored_processor()
    if stored_env:
        stored["transform"]["env"] = stored_env
    plan = plan_pipeline(desired(rendered_pair(spec).processor), observed(stored), running=True, owner=OWNER)

    assert plan.steps == (Step.UPDATE,)
    assert plan.changed_fields == ("transform",)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"description": "changed by hand"}, "description"),
        ({"datumTries": "7"}, "datumTries"),
        ({"parallelismSpec": {"constant": "4"}}, "parallelismSpec"),
        ({"resourceLimits": {"memory": "1Gi"}}, "resourceLimits"),
        ({"autoscaling": True}, "autoscaling"),
        ({"podPatch": "[]"}, "podPatch"),
        ({"input": stored_input("spout", glob="/")}, "input"),
        (
            {
                "metadata": {
                    "labels": {**OWNERSHIP["labels"], "extra": "x"},
                    "annotations": OWNERSHIP["annotations"],
                }
            },
            "metadata",
        ),
        ({"pipeline": {"name": "processor", "project": {"name": "other"}}}, "pipeline"),
    ],
)
def test_a_changed_managed_field_is_named(change: dict[str, Any], field: str) -> None:
    plan = plan_pipeline(desired_processor(), observed(stored_processor(**change)), running=True, owner=OWNER)
    assert plan.steps == (Step.UPDATE,)
    assert plan.changed_fields == (field,)


def test_several_changed_fields_are_all_named_in_a_stable_order() -> None:
    stored = stored_processor(description="x", datumTries="9")
    stored["transform"]["image"] = "other:1"
    plan = plan_pipeline(desired_processor(), observed(stored), running=True, owner=OWNER)
    assert plan.changed_fields == ("description", "transform", "datumTries")


def test_spout_turned_into_a_plain_pipeline_plans_an_update() -> None:
    stored = copy.deepcopy(STORED_SPOUT)
    del stored["spout"]
    stored["input"] = {
        "pfs": {"name": "x", "repo": "x", "repoType": "user", "branch": "master", "glob": "/*"}
    }
    plan = plan_pipeline(desired(rendered_pair().spout), observed(stored), running=True, owner=OWNER)
    assert plan.steps == (Step.UPDATE,)
    assert "input" in plan.changed_fields


@pytest.mark.parametrize(
    "pachd_only",
    [
        {"salt": "different"},
        {"createdAt": "2030-01-01T00:00:00Z"},
        {"recentError": "boom"},
        {"workersAvailable": "3"},
        {"outputBranch": "other"},
        {"specCommit": {"id": "abc"}},
    ],
)
def test_fields_pachd_owns_are_not_compared(pachd_only: dict[str, Any]) -> None:
    plan = plan_pipeline(
        desired_processor(), observed(stored_processor(**pachd_only)), running=True, owner=OWNER
    )
    assert plan.steps == ()


# --- every observed situation -----------------------------------------------------------------

CHANGED = stored_processor(description="changed by hand")


@pytest.mark.parametrize(
    ("situation", "found", "running", "steps"),
    [
        ("missing, should run", None, True, (Step.CREATE,)),
        ("missing, should be stopped", None, False, (Step.CREATE, Step.STOP)),
        ("identical and running", observed(STORED_PROCESSOR), True, ()),
        ("identical and stopped, should be stopped", observed(STORED_PROCESSOR, stopped=True), False, ()),
        ("changed, should run", observed(CHANGED), True, (Step.UPDATE,)),
        (
            "stopped, should run",
            observed(STORED_PROCESSOR, stopped=True, state="PAUSED"),
            True,
            (Step.START,),
        ),
        ("running, should be stopped", observed(STORED_PROCESSOR), False, (Step.STOP,)),
        ("changed and running, should be stopped", observed(CHANGED), False, (Step.UPDATE, Step.STOP)),
        (
            "changed and stopped, should be stopped",
            observed(CHANGED, stopped=True),
            False,
            (Step.UPDATE, Step.STOP),
        ),
        ("changed and stopped, should run", observed(CHANGED, stopped=True), True, (Step.UPDATE, Step.START)),
        ("failing but matching, should run", observed(STORED_PROCESSOR, state="CRASHING"), True, ()),
    ],
)
def test_plan_for_each_situation(
    situation: str, found: ObservedPipeline | None, running: bool, steps: tuple[Step, ...]
) -> None:
    plan = plan_pipeline(desired_processor(), found, running=running, owner=OWNER)
    assert plan.name == "processor"
    assert plan.steps == steps, situation
    assert plan.foreign is False
    assert plan.foreign_owner is None


def test_missing_pipeline_has_no_changed_fields() -> None:
    assert plan_pipeline(desired_processor(), None, running=True, owner=OWNER).changed_fields == ()


@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("changed", [False, True])
def test_pipeline_of_another_owner_is_never_touched(running: bool, changed: bool) -> None:
    stored = stored_processor(metadata={"annotations": {"spout-operator.dev/owner": "team-b/other"}})
    if changed:
        stored["transform"]["image"] = "other:1"
    plan = plan_pipeline(
        desired_processor(), observed(stored, stopped=not running), running=running, owner=OWNER
    )

    assert plan.steps == ()
    assert plan.foreign is True
    assert plan.foreign_owner == "team-b/other"


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {"labels": {"app.kubernetes.io/managed-by": "spout-operator"}},
        {"annotations": {"unrelated": "x"}},
    ],
)
def test_pipeline_without_owner_mark_is_foreign(metadata: dict[str, Any] | None) -> None:
    stored = stored_processor()
    if metadata is None:
        del stored["metadata"]
    else:
        stored["metadata"] = metadata
    plan = plan_pipeline(desired_processor(), observed(stored), running=True, owner=OWNER)

    assert plan.steps == ()
    assert plan.foreign is True
    assert plan.foreign_owner == "(no owner mark)"


def test_same_name_in_another_namespace_is_foreign() -> None:
    plan = plan_pipeline(
        desired_processor(), observed(STORED_PROCESSOR), running=True, owner="team-b/spout101"
    )
    assert plan.foreign_owner == OWNER


# --- with_pachd_defaults ------------------------------------------------------------------------


def base(**fields: Any) -> PipelineSpec:
    spec: PipelineSpec = {"pipeline": {"name": "p"}, "transform": {"image": "img:1", "cmd": ["x"]}}
    spec.update(fields)
    return spec


@pytest.mark.parametrize(
    ("transform", "image"),
    [
        ({"cmd": ["x"]}, "ubuntu:20.04"),
        ({"image": "", "cmd": ["x"]}, "ubuntu:20.04"),
        ({"image": "img:1", "cmd": ["x"]}, "img:1"),
    ],
)
def test_default_image(transform: dict[str, Any], image: str) -> None:
    assert with_pachd_defaults(base(transform=transform))["transform"]["image"] == image


def test_missing_transform_gets_the_default_image() -> None:
    spec = base()
    del spec["transform"]
    assert with_pachd_defaults(spec)["transform"] == {"image": "ubuntu:20.04"}


def test_default_constants_mirror_pachd() -> None:
    assert (DEFAULT_USER_IMAGE, DEFAULT_DATUM_TRIES) == ("ubuntu:20.04", 3)


@pytest.mark.parametrize(("given", "expected"), [(None, 3), (0, 3), (1, 1), (5, 5)])
def test_default_datum_tries(given: int | None, expected: int) -> None:
    spec = base() if given is None else base(datumTries=given)
    assert with_pachd_defaults(spec)["datumTries"] == expected


def test_pfs_input_defaults() -> None:
    spec = base(input={"pfs": {"project": "default", "repo": "spout", "glob": "/*"}})
    assert with_pachd_defaults(spec)["input"] == {
        "pfs": {
            "project": "default",
            "repo": "spout",
            "glob": "/*",
            "branch": "master",
            "name": "spout",
            "repoType": "user",
        }
    }


def test_pfs_input_values_given_are_kept() -> None:
    pfs = {"repo": "spout", "glob": "/*", "branch": "dev", "name": "in", "repoType": "meta"}
    assert with_pachd_defaults(base(input={"pfs": dict(pfs)}))["input"]["pfs"] == pfs


@pytest.mark.parametrize(
    ("glob", "cleaned"),
    [
        ("/*", "/*"),
        ("//*/", "/*"),
        ("/*/", "/*"),
        ("///a//b/*", "/a/b/*"),
        ("/a/./b", "/a/b"),
        ("/a/../*", "/*"),
        ("/..", "/"),
        ("/", "/"),
        ("*", "/*"),
        ("/**", "/**"),
        ("/{a,b}/*.txt", "/{a,b}/*.txt"),
    ],
)
def test_glob_is_path_cleaned_like_pachd(glob: str, cleaned: str) -> None:
    spec = base(input={"pfs": {"repo": "spout", "glob": glob}})
    assert with_pachd_defaults(spec)["input"]["pfs"]["glob"] == cleaned


def test_spout_gets_no_input() -> None:
    assert "input" not in with_pachd_defaults(base(spout={}))


def test_with_pachd_defaults_does_not_modify_its_input() -> None:
    spec = base(input={"pfs": {"repo": "spout", "glob": "//*/"}})
    spec["transform"] = {"cmd": ["x"]}
    before = copy.deepcopy(spec)
    result = with_pachd_defaults(spec)

    assert spec == before
    result["transform"]["cmd"].append("y")
    result["input"]["pfs"]["repo"] = "changed"
    assert spec == before


def test_with_pachd_defaults_is_idempotent() -> None:
    once = with_pachd_defaults(base(input={"pfs": {"repo": "spout", "glob": "//*/"}}))
    assert with_pachd_defaults(once) == once


# --- changed_fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, {}, [], ""])
def test_empty_and_absent_values_are_equal(empty: Any) -> None:
    want = base()
    stored = base(description=empty, podPatch=empty, resourceRequests=empty)
    assert changed_fields(want, stored) == ()
    assert changed_fields(stored, want) == ()
