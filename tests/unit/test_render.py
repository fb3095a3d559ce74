"""Unit tests of render: typed spec -> the two pipeline specs (Pachyderm pipeline JSON)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from spout_operator.names import MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, owner_id
from spout_operator.render import DesiredPair, owner_of, pipeline_name, render
from spout_operator.spec import parse

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"

# Upstream examples/spouts/spout101/pipelines/{spout,processor}.json, as given in
# shared/reference/spout101.md, without the transform (image and cmd differ: this
# project ships its own image and runs the workers as modules).
UPSTREAM_SPOUT: dict[str, Any] = {
    "pipeline": {"name": "spout"},
    "description": "A spout pipeline that emulates the reception of data from an external source",
    "spout": {},
}
UPSTREAM_PROCESSOR: dict[str, Any] = {
    "pipeline": {"name": "processor"},
    "description": "A pipeline that sorts 1KB vs 2KB files",
    "input": {"pfs": {"repo": "spout", "branch": "master", "glob": "/*"}},
}

IMAGE = "ghcr.io/spout-operator/spout101:0.2.0"  # the samples' (VERSION)
OWNER = "team-a/spout101"
OWNERSHIP = {
    "labels": {"app.kubernetes.io/managed-by": "spout-operator"},
    "annotations": {"spout-operator.dev/owner": OWNER},
}


def load_sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return loaded


def render_sample(name: str, namespace: str = "team-a") -> DesiredPair:
    resource = load_sample(name)
    resource_name = resource["metadata"]["name"]
    return render(parse(resource["spec"], resource_name), owner_id(namespace, resource_name))


def spec_with(**processor_fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(load_sample("spout.yaml")["spec"])
    spec["processor"].update(processor_fields)
    return spec


def without_operator_parts(rendered: dict[str, Any]) -> dict[str, Any]:
    """A rendered spec minus what the operator adds or sets differently from upstream:
    the transform, the project, and the ownership metadata."""
    stripped = copy.deepcopy(rendered)
    del stripped["transform"]
    del stripped["metadata"]
    del stripped["pipeline"]["project"]
    if "input" in stripped:
        del stripped["input"]["pfs"]["project"]
    return stripped


# --- the spout101 pair ---------------------------------------------------------------------


def test_sample_renders_upstream_spout_json() -> None:
    pair = render_sample("spout.yaml")
    assert without_operator_parts(pair.spout) == UPSTREAM_SPOUT


def test_sample_renders_upstream_processor_json() -> None:
    pair = render_sample("spout.yaml")
    assert without_operator_parts(pair.processor) == UPSTREAM_PROCESSOR


def test_sample_spout_in_full() -> None:
    assert render_sample("spout.yaml").spout == {
        **UPSTREAM_SPOUT,
        "pipeline": {"name": "spout", "project": {"name": "default"}},
        "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.consumer"]},
        "metadata": OWNERSHIP,
    }


def test_sample_processor_in_full() -> None:
    assert render_sample("spout.yaml").processor == {
        **UPSTREAM_PROCESSOR,
        "pipeline": {"name": "processor", "project": {"name": "default"}},
        "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.processor"]},
        "input": {"pfs": {"project": "default", "repo": "spout", "branch": "master", "glob": "/*"}},
        "metadata": OWNERSHIP,
    }


def test_minimal_sample_names_pipelines_after_the_resource() -> None:
    pair = render_sample("minimal.yaml")
    assert pipeline_name(pair.spout) == "events"
    assert pipeline_name(pair.processor) == "events-processor"
    assert pair.processor["input"]["pfs"]["repo"] == "events"
    assert "description" not in pair.spout
    assert "description" not in pair.processor
    assert "input" not in pair.spout
    assert "spout" not in pair.processor


# --- wiring and options -------------------------------------------------------------------


def test_processor_input_follows_spout_name_project_and_glob() -> None:
    spec = spec_with(glob="/*/*.txt")
    spec["spout"]["name"] = "ingest"
    spec["project"] = "analytics"
    pair = render(parse(spec, "spout101"), OWNER)

    assert pair.spout["pipeline"] == {"name": "ingest", "project": {"name": "analytics"}}
    assert pair.processor["pipeline"] == {"name": "processor", "project": {"name": "analytics"}}
    assert pair.processor["input"] == {
        "pfs": {"project": "analytics", "repo": "ingest", "branch": "master", "glob": "/*/*.txt"}
    }


def test_options_are_rendered_as_written() -> None:
    options = {
        "parallelismSpec": {"constant": 2},
        "datumTries": 5,
        "resourceRequests": {"cpu": 0.5, "memory": "256Mi"},
        "podPatch": "[]",
    }
    pair = render(parse(spec_with(**options), "spout101"), OWNER)
    for key, value in options.items():
        assert pair.processor[key] == value
    assert "datumTries" not in pair.spout


def test_transform_is_passed_through_whole() -> None:
    transform = {
        "image": "img:2",
        "cmd": ["sh"],
        "stdin": ["echo hi"],
        "env": {"A": "1"},
        "secrets": [{"name": "s", "key": "k", "envVar": "K"}],
    }
    pair = render(parse(spec_with(transform=transform), "spout101"), OWNER)
    assert pair.processor["transform"] == transform


# --- ownership metadata ------------------------------------------------------------------


def test_owner_id_is_namespace_slash_name() -> None:
    assert owner_id("team-a", "spout101") == "team-a/spout101"


def test_ownership_constants() -> None:
    assert OWNER_ANNOTATION == "spout-operator.dev/owner"
    assert (MANAGED_BY_LABEL, MANAGED_BY) == ("app.kubernetes.io/managed-by", "spout-operator")


@pytest.mark.parametrize("role", ["spout", "processor"])
def test_user_metadata_is_merged_and_the_owner_mark_wins(role: str) -> None:
    spec = copy.deepcopy(load_sample("spout.yaml")["spec"])
    spec[role]["metadata"] = {
        "labels": {"team": "data", "app.kubernetes.io/managed-by": "helm"},
        "annotations": {"note": "hi", "spout-operator.dev/owner": "someone/else"},
    }
    pair = render(parse(spec, "spout101"), OWNER)
    rendered = pair.spout if role == "spout" else pair.processor
    other = pair.processor if role == "spout" else pair.spout

    assert rendered["metadata"] == {
        "labels": {"team": "data", "app.kubernetes.io/managed-by": "spout-operator"},
        "annotations": {"note": "hi", "spout-operator.dev/owner": OWNER},
    }
    assert other["metadata"] == OWNERSHIP
    assert owner_of(rendered) == OWNER


def test_metadata_with_only_labels_still_gets_the_owner_annotation() -> None:
    spec = copy.deepcopy(load_sample("spout.yaml")["spec"])
    spec["spout"]["metadata"] = {"labels": {"team": "data"}}
    pair = render(parse(spec, "spout101"), OWNER)
    assert pair.spout["metadata"]["annotations"] == {OWNER_ANNOTATION: OWNER}
    assert pair.spout["metadata"]["labels"]["team"] == "data"


def test_render_does_not_modify_the_user_metadata() -> None:
    spec = copy.deepcopy(load_sample("spout.yaml")["spec"])
    spec["spout"]["metadata"] = {"labels": {"team": "data"}, "annotations": {"note": "hi"}}
    before = copy.deepcopy(spec)
    render(parse(spec, "spout101"), OWNER)
    assert spec == before


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"metadata": {"annotations": {OWNER_ANNOTATION: "ns/a"}}}, "ns/a"),
        ({"metadata": {"annotations": {"other": "x"}}}, None),
        ({"metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY}}}, None),
        ({}, None),
    ],
)
def test_owner_of(stored: dict[str, Any], expected: str | None) -> None:
    assert owner_of(stored) == expected


# --- order ---------------------------------------------------------------------------------


def test_spout_is_created_first_and_deleted_last() -> None:
    pair = render_sample("spout.yaml")
    assert [pipeline_name(p) for p in pair.in_creation_order()] == ["spout", "processor"]
    assert [pipeline_name(p) for p in pair.in_deletion_order()] == ["processor", "spout"]
