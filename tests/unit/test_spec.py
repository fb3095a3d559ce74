"""Unit tests of spec.parse: a SpoutPipeline `.spec` dict -> typed spec with defaults."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from spout_operator.spec import ConnectionRef, DeletionPolicy, RunState, SpecError, parse

SPOUT_TRANSFORM = {"image": "example/spout:1", "cmd": ["python", "-m", "spout"]}
PROCESSOR_TRANSFORM = {"image": "example/processor:1", "cmd": ["python", "-m", "processor"]}


def minimal() -> dict[str, Any]:
    return {
        "spout": {"transform": copy.deepcopy(SPOUT_TRANSFORM)},
        "processor": {"transform": copy.deepcopy(PROCESSOR_TRANSFORM)},
    }


def with_changes(**changes: Any) -> dict[str, Any]:
    """The minimal spec with top-level keys replaced, and `spout.x` / `processor.x` keys set."""
    spec = minimal()
    for key, value in changes.items():
        role, _, field = key.partition("__")
        if field:
            spec[role][field] = value
        else:
            spec[role] = value
    return spec


# --- defaults ---------------------------------------------------------------------


def test_minimal_spec_gets_every_default() -> None:
    parsed = parse(minimal(), "events")

    assert parsed.spout.name == "events"
    assert parsed.processor.name == "events-processor"
    assert parsed.project == "default"
    assert parsed.state is RunState.RUNNING
    assert parsed.running is True
    assert parsed.deletion_policy is DeletionPolicy.DELETE
    assert parsed.glob == "/*"
    assert parsed.connection == ConnectionRef("ClusterPachdConnection", "default")
    assert parsed.spout.options == {}
    assert parsed.processor.options == {}
    assert parsed.spout.transform == SPOUT_TRANSFORM
    assert parsed.processor.transform == PROCESSOR_TRANSFORM


@pytest.mark.parametrize(
    ("spec", "attribute", "expected"),
    [
        (with_changes(spout__name="src"), "spout_name", "src"),
        (with_changes(processor__name="sink"), "processor_name", "sink"),
        (with_changes(spout__name="src"), "processor_name", "events-processor"),
        (with_changes(project="team-a"), "project", "team-a"),
        (with_changes(project=""), "project", "default"),
        (with_changes(state="Stopped"), "state", RunState.STOPPED),
        (with_changes(state="Running"), "state", RunState.RUNNING),
        (with_changes(state=""), "state", RunState.RUNNING),
        (with_changes(deletionPolicy="Orphan"), "deletion_policy", DeletionPolicy.ORPHAN),
        (with_changes(deletionPolicy=None), "deletion_policy", DeletionPolicy.DELETE),
        (with_changes(processor__glob="/*/*"), "glob", "/*/*"),
        (with_changes(processor__glob=""), "glob", "/*"),
        (with_changes(processor__glob="/"), "glob", "/"),
    ],
)
def test_explicit_values_and_empty_ones(spec: dict[str, Any], attribute: str, expected: Any) -> None:
    parsed = parse(spec, "events")
    actual = {
        "spout_name": parsed.spout.name,
        "processor_name": parsed.processor.name,
        "project": parsed.project,
        "state": parsed.state,
        "deletion_policy": parsed.deletion_policy,
        "glob": parsed.glob,
    }[attribute]
    assert actual == expected


def test_stopped_state_is_not_running() -> None:
    assert parse(with_changes(state="Stopped"), "events").running is False


# --- connection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ({}, ConnectionRef("ClusterPachdConnection", "default")),
        ({"name": "shared"}, ConnectionRef("ClusterPachdConnection", "shared")),
        ({"kind": "PachdConnection", "name": "team"}, ConnectionRef("PachdConnection", "team")),
        ({"kind": "PachdConnection"}, ConnectionRef("PachdConnection", "default")),
    ],
)
def test_connection_ref(ref: dict[str, Any], expected: ConnectionRef) -> None:
    assert parse(with_changes(connectionRef=ref), "events").connection == expected


def test_connection_ref_of_another_kind_is_refused() -> None:
    with pytest.raises(SpecError, match=r"connectionRef\.kind"):
        parse(with_changes(connectionRef={"kind": "Secret", "name": "x"}), "events")


def test_a_spec_cannot_carry_an_address_or_a_secret() -> None:
    # The old spec.pachd (address, authTokenSecretRef) is gone: whatever is left of it in a
    # stored object is ignored, never used to reach pachd.
    old = {"address": "grpc://attacker:1", "authTokenSecretRef": {"name": "db-password"}}
    parsed = parse(with_changes(pachd=old), "events")
    assert parsed.connection == ConnectionRef()
    assert not hasattr(parsed, "pachd")


# --- options pass-through ------------------------------------------------------------

COMMON_OPTIONS: dict[str, Any] = {
    "description": "a pipeline",
    "resourceRequests": {"cpu": 0.5, "memory": "256Mi"},
    "resourceLimits": {"cpu": 1, "memory": "512Mi"},
    "podPatch": '[{"op": "add", "path": "/metadata/labels/x", "value": "y"}]',
    "metadata": {"labels": {"team": "data"}, "annotations": {"note": "hi"}},
}
PROCESSOR_OPTIONS: dict[str, Any] = {
    "parallelismSpec": {"constant": 2},
    "autoscaling": True,
    "datumTries": 5,
}


def test_spout_passes_common_options_only() -> None:
    spout = {"transform": SPOUT_TRANSFORM, "name": "src", **COMMON_OPTIONS, **PROCESSOR_OPTIONS}
    spout["input"] = {"pfs": {"repo": "elsewhere", "glob": "/*"}}  # not a field the user may set
    spout["glob"] = "/x"
    parsed = parse(with_changes(spout=spout), "events")

    assert parsed.spout.options == COMMON_OPTIONS


def test_processor_passes_common_and_processor_options_only() -> None:
    processor = {
        "transform": PROCESSOR_TRANSFORM,
        "name": "sink",
        "glob": "/**",
        "spout": {},  # would turn the processor into a spout: not allowed through
        "service": {"internalPort": 8080, "externalPort": 8080},  # the spout's, not a service pipeline
        "input": {"pfs": {"repo": "elsewhere", "glob": "/*"}},  # wired by the operator only
        **COMMON_OPTIONS,
        **PROCESSOR_OPTIONS,
    }
    parsed = parse(with_changes(processor=processor), "events")

    assert parsed.processor.options == {**COMMON_OPTIONS, **PROCESSOR_OPTIONS}
    assert parsed.processor.name == "sink"
    assert parsed.glob == "/**"


@pytest.mark.parametrize("empty", [None, "", {}, []])
def test_empty_options_are_dropped(empty: Any) -> None:
    spec = with_changes(spout__description=empty, processor__resourceRequests=empty)
    parsed = parse(spec, "events")

    assert "description" not in parsed.spout.options
    assert "resourceRequests" not in parsed.processor.options


def test_parse_does_not_modify_its_input() -> None:
    spec = with_changes(processor__datumTries=4, spout__description="d")
    before = copy.deepcopy(spec)
    parse(spec, "events")
    assert spec == before


# --- errors ----------------------------------------------------------------------------


# A table of cases for one parametrized test: rows alike in shape are different cases, each
# with its own id, kept as data (the logic they share is the test below, written once).
@pytest.mark.parametrize(
    ("spec", "resource_name", "message"),
    [
        pytest.param(
            with_changes(spout__name="same", processor__name="same"),
            "events",
            "different names",
            id="both-named-the-same",
        ),
        pytest.param(
            with_changes(spout__name="events-processor"),
            "events",
            "different names",
            id="spout-named-like-the-default-processor",
        ),
        pytest.param(
            with_changes(processor__name="events"),
            "events",
            "different names",
            id="processor-named-like-the-default-spout",
        ),
        pytest.param({"processor": minimal()["processor"]}, "events", "spout is required", id="no-spout"),
        pytest.param({"spout": minimal()["spout"]}, "events", "processor is required", id="no-processor"),
        pytest.param(with_changes(spout="nope"), "events", "spout must be an object", id="spout-not-object"),
        pytest.param(with_changes(spout={}), "events", "transform is required", id="spout-no-transform"),
        pytest.param(
            with_changes(processor={"glob": "/*"}),
            "events",
            "transform is required",
            id="processor-no-transform",
        ),
        pytest.param(
            with_changes(spout__transform={"cmd": ["x"]}),
            "events",
            "spout.transform.image is required",
            id="spout-no-image",
        ),
        pytest.param(
            with_changes(processor__transform={"image": "", "cmd": ["x"]}),
            "events",
            "processor.transform.image is required",
            id="processor-empty-image",
        ),
        pytest.param(
            with_changes(spout__transform={"image": "i"}),
            "events",
            "spout.transform.cmd is required",
            id="spout-no-cmd",
        ),
        pytest.param(
            with_changes(processor__transform={"image": "i", "cmd": []}),
            "events",
            "processor.transform.cmd is required",
            id="processor-empty-cmd",
        ),
        pytest.param(with_changes(state="running"), "events", "state must be one of", id="state-lowercase"),
        pytest.param(with_changes(state="Paused"), "events", "state must be one of", id="state-unknown"),
        pytest.param(
            with_changes(deletionPolicy="Keep"),
            "events",
            "deletionPolicy must be one of",
            id="bad-deletion-policy",
        ),
        pytest.param(
            with_changes(processor__glob="*"), "events", "glob must start with '/'", id="glob-without-slash"
        ),
        pytest.param(
            with_changes(processor__glob="pfs/*"), "events", "glob must start with '/'", id="glob-relative"
        ),
        pytest.param(
            with_changes(connectionRef={"kind": "Secret"}),
            "events",
            "connectionRef.kind must be",
            id="connection-ref-other-kind",
        ),
        pytest.param(
            with_changes(connectionRef="default"),
            "events",
            "connectionRef must be an object",
            id="connection-ref-not-object",
        ),
    ],
)
def test_invalid_specs_raise_spec_error(spec: dict[str, Any], resource_name: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse(spec, resource_name)


def test_enum_error_lists_the_allowed_values() -> None:
    with pytest.raises(SpecError) as caught:
        parse(with_changes(deletionPolicy="Keep"), "events")
    assert "Delete, Orphan" in str(caught.value)
    assert "'Keep'" in str(caught.value)


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)
