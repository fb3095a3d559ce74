"""Issue 22's pipeline-spec fields: typed in the CRD, parsed, rendered as pachd reads them, and
compared so that a change updates and a re-apply writes nothing.

The stored forms below are what pachd 2.6 hands back (InspectPipeline details through
json_format.MessageToDict, as gateway._observed builds them): pachd's defaults filled in
(setPipelineDefaults: spout.service.type NodePort, reprocessSpec until_success), int64 as
strings, Durations in seconds, enums by name, zero values dropped."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from python_pachyderm.proto.v2.pps import pps_pb2
from spout_operator.gateway import canonical
from spout_operator.names import PipelineSpec
from spout_operator.observed import ObservedPipeline
from spout_operator.plan import (
    DEFAULT_REPROCESS_SPEC,
    DEFAULT_SPOUT_SERVICE_TYPE,
    MANAGED_FIELDS,
    Step,
    changed_fields,
    plan_pipeline,
    with_pachd_defaults,
)
from spout_operator.render import protobuf_duration, render
from spout_operator.spec import (
    COMMON_PIPELINE_FIELDS,
    PROCESSOR_ONLY_FIELDS,
    SPOUT_ONLY_FIELDS,
    SpecError,
    duration_seconds,
    parse,
)
from test_plan import stored_input

ROOT = Path(__file__).resolve().parents[2]
OWNER = "team-a/push"
IMAGE = "ghcr.io/spout-operator/spout101:0.1.0"

TOLERATIONS = [
    {"key": "dedicated", "operator": "EQUAL", "value": "spouts", "effect": "NO_SCHEDULE"},
    {"key": "gpu", "operator": "EXISTS"},
    {"key": "flaky", "operator": "EXISTS", "effect": "NO_EXECUTE", "tolerationSeconds": 30},
]
COMMON: dict[str, Any] = {
    "schedulingSpec": {"nodeSelector": {"disktype": "ssd"}, "priorityClassName": "spouts"},
    "tolerations": TOLERATIONS,
    "sidecarResourceRequests": {"cpu": 0.1, "memory": "64Mi"},
    "sidecarResourceLimits": {"cpu": 1, "memory": "256Mi", "disk": "1Gi"},
}
PROCESSOR: dict[str, Any] = {
    "datumTimeout": "1h2m",
    "jobTimeout": "90s",
    "datumSetSpec": {"number": 5},
    "reprocessSpec": "every_job",
    "egress": {"URL": "s3://bucket/dir"},
}
SERVICE = {"internalPort": 8080, "externalPort": 8080, "type": "ClusterIP"}


def full_spec(service: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "spout": {
            "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.receiver"]},
            "service": copy.deepcopy(service if service is not None else SERVICE),
            **copy.deepcopy(COMMON),
        },
        "processor": {
            "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.processor"]},
            **copy.deepcopy(COMMON),
            **copy.deepcopy(PROCESSOR),
        },
    }


def rendered(spec: dict[str, Any] | None = None) -> tuple[PipelineSpec, PipelineSpec]:
    pair = render(parse(spec or full_spec(), "push"), OWNER)
    return pair.spout, pair.processor


def desired(spec: PipelineSpec) -> PipelineSpec:
    return canonical(with_pachd_defaults(spec))


OWNERSHIP = {
    "labels": {"app.kubernetes.io/managed-by": "spout-operator"},
    "annotations": {"spout-operator.dev/owner": OWNER},
}
STORED_TOLERATIONS = [
    {"key": "dedicated", "operator": "EQUAL", "value": "spouts", "effect": "NO_SCHEDULE"},
    {"key": "gpu", "operator": "EXISTS"},
    {"key": "flaky", "operator": "EXISTS", "effect": "NO_EXECUTE", "tolerationSeconds": "30"},
]
# The push pair as pachd stores it. Alike in shape to test_plan's stored spout101 pair but
# other values: each module keeps the literal record of its own pair, as pachd returned it.
STORED_COMMON: dict[str, Any] = {
    "schedulingSpec": {"nodeSelector": {"disktype": "ssd"}, "priorityClassName": "spouts"},
    "tolerations": STORED_TOLERATIONS,
    "sidecarResourceRequests": {"cpu": 0.1, "memory": "64Mi"},
    "sidecarResourceLimits": {"cpu": 1.0, "memory": "256Mi", "disk": "1Gi"},
    "outputBranch": "master",
    "datumTries": "3",
    "salt": "0b9c1e6f3a4d4f1b8a3c2d7e5f6a7b8c",
    "createdAt": "2024-05-01T12:00:00.123456Z",
    "metadata": copy.deepcopy(OWNERSHIP),
}
STORED_SPOUT: dict[str, Any] = {
    "pipeline": {"name": "push", "project": {"name": "default"}},
    "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.receiver"]},
    "spout": {"service": {"internalPort": 8080, "externalPort": 8080, "type": "ClusterIP"}},
    "reprocessSpec": "until_success",
    **copy.deepcopy(STORED_COMMON),
}
STORED_PROCESSOR: dict[str, Any] = {
    "pipeline": {"name": "push-processor", "project": {"name": "default"}},
    "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.processor"]},
    "input": stored_input("push"),
    "datumTimeout": "3720s",
    "jobTimeout": "90s",
    "datumSetSpec": {"number": "5"},
    "reprocessSpec": "every_job",
    "egress": {"URL": "s3://bucket/dir"},
    **copy.deepcopy(STORED_COMMON),
}


def observed(stored: dict[str, Any]) -> ObservedPipeline:
    return ObservedPipeline(
        name=stored["pipeline"]["name"], version=1, state="RUNNING", stopped=False, spec=copy.deepcopy(stored)
    )


# --- parse ---------------------------------------------------------------------------------------


def test_each_pipeline_takes_its_own_fields() -> None:
    spec = full_spec()
    spec["spout"].update(copy.deepcopy(PROCESSOR))  # processor-only fields: not a spout's
    spec["processor"]["service"] = copy.deepcopy(SERVICE)  # a spout's only
    parsed = parse(spec, "push")

    assert parsed.spout.options == {"service": SERVICE, **COMMON}
    assert parsed.processor.options == {**COMMON, **PROCESSOR}


def test_field_lists_name_every_new_field_once() -> None:
    # Spelled out again on purpose (much as spec.py lists them): the test holds the module's
    # lists to an independent list of issue 22's fields, so a field dropped there fails here.
    new = {
        "schedulingSpec",
        "tolerations",
        "sidecarResourceRequests",
        "sidecarResourceLimits",
        "datumTimeout",
        "jobTimeout",
        "datumSetSpec",
        "reprocessSpec",
        "egress",
        "s3Out",
        "service",
    }
    listed = COMMON_PIPELINE_FIELDS + PROCESSOR_ONLY_FIELDS + SPOUT_ONLY_FIELDS
    assert len(listed) == len(set(listed))
    assert new <= set(listed)
    # Every top-level field the operator renders is compared (service rides inside `spout`).
    assert (new - {"service"}) <= set(MANAGED_FIELDS)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", "30"),
        ("1h2m", "3720"),
        ("1.5h", "5400"),
        ("250ms", "0.25"),
        ("1m30s500ms", "90.5"),
        ("2us", "0.000002"),
        ("2µs", "0.000002"),
        ("1ns", "0.000000001"),
        ("0", "0"),
        (".5s", "0.5"),
    ],
)
def test_go_durations_are_read_as_pachctl_reads_them(text: str, seconds: str) -> None:
    assert duration_seconds(text, "x") == Decimal(seconds)


@pytest.mark.parametrize("text", ["", "30", "-5s", "1d", "1h 2m", "s", "1.2.3s", "PT30S", 30, None])
def test_bad_durations_are_refused_with_the_field(text: Any) -> None:
    spec = full_spec()
    spec["processor"]["jobTimeout"] = text
    if text in ("", None):  # an empty value is no value
        assert "jobTimeout" not in parse(spec, "push").processor.options
        return
    with pytest.raises(SpecError, match=r"processor\.jobTimeout must be a duration"):
        parse(spec, "push")


def test_the_crd_duration_pattern_is_the_parser_s() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "spoutpipelines.yaml").read_text())
    processor = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "processor"
    ]["properties"]
    pattern = processor["datumTimeout"]["pattern"]
    assert processor["jobTimeout"]["pattern"] == pattern
    for text in ("30s", "1h2m", "1.5h", "250ms", "2µs", "0", ".5s"):
        assert re.search(pattern, text), text
        duration_seconds(text, "x")
    for text in ("30", "-5s", "1d", "1h 2m", "s", "PT30S"):
        assert not re.search(pattern, text), text


# --- render --------------------------------------------------------------------------------------


def test_spout_service_goes_inside_spout_never_at_the_top() -> None:
    spout, processor = rendered()
    assert spout["spout"] == {"service": SERVICE}
    assert "service" not in spout  # pachd would read it as a service pipeline
    assert "service" not in processor and "spout" not in processor


def test_a_spout_without_service_renders_as_before() -> None:
    spec = full_spec()
    del spec["spout"]["service"]
    spout, _ = rendered(spec)
    assert spout["spout"] == {}


def test_fields_are_rendered_unchanged_durations_in_protobuf_form() -> None:
    spout, processor = rendered()
    for role in (spout, processor):
        for key, value in COMMON.items():
            assert role[key] == value
    assert processor["datumTimeout"] == "3720s"
    assert processor["jobTimeout"] == "90s"
    for key in ("datumSetSpec", "reprocessSpec", "egress"):
        assert processor[key] == PROCESSOR[key]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [("0", "0s"), ("30", "30s"), ("3720", "3720s"), ("0.25", "0.25s"), ("1e-9", "0.000000001s")],
)
def test_protobuf_duration(seconds: str, text: str) -> None:
    assert protobuf_duration(Decimal(seconds)) == text


def test_python_pachyderm_parses_every_field_and_the_canonical_form_round_trips() -> None:
    for spec in rendered():
        once = canonical(spec)
        assert canonical(once) == once
    _, processor = rendered()
    assert canonical(processor)["datumSetSpec"] == {"number": "5"}
    assert canonical(processor)["tolerations"][2]["tolerationSeconds"] == "30"


def test_kubernetes_spelling_of_tolerations_is_refused_by_python_pachyderm() -> None:
    """Why the CRD takes EXISTS/NO_SCHEDULE: pachd's enum names, not Kubernetes' Exists."""
    _, processor = rendered()
    processor["tolerations"] = [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
    with pytest.raises(Exception, match="Invalid enum value Exists"):
        canonical(processor)


def test_the_crd_toleration_enums_are_pachd_s() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "spoutpipelines.yaml").read_text())
    item = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "spout"
    ]["properties"]["tolerations"]["items"]["properties"]
    # EMPTY is refused by pachd ("cannot omit key/value comparison operator").
    operators = [v.name for v in pps_pb2.TolerationOperator.DESCRIPTOR.values]
    assert item["operator"]["enum"] == [n for n in operators if n != "EMPTY"]
    assert set(item["effect"]["enum"]) == {v.name for v in pps_pb2.TaintEffect.DESCRIPTOR.values}


# --- plan: a no-op re-apply writes nothing, a change updates ---------------------------------------


@pytest.mark.parametrize("role", ["spout", "processor"])
def test_every_field_as_pachd_stores_it_needs_no_update(role: str) -> None:
    spout, processor = rendered()
    want = desired(spout if role == "spout" else processor)
    stored = STORED_SPOUT if role == "spout" else STORED_PROCESSOR
    assert changed_fields(want, stored) == ()
    assert plan_pipeline(want, observed(stored), running=True, owner=OWNER).steps == ()


def test_a_service_without_type_matches_pachd_s_node_port_default() -> None:
    spec = full_spec(service={"internalPort": 8080, "externalPort": 30080})
    spout, _ = rendered(spec)
    stored = copy.deepcopy(STORED_SPOUT)
    stored["spout"]["service"] = {"internalPort": 8080, "externalPort": 30080, "type": "NodePort"}
    assert DEFAULT_SPOUT_SERVICE_TYPE == "NodePort"
    assert plan_pipeline(desired(spout), observed(stored), running=True, owner=OWNER).steps == ()


def test_reprocess_spec_unset_matches_pachd_s_default() -> None:
    spec = full_spec()
    del spec["processor"]["reprocessSpec"]
    _, processor = rendered(spec)
    stored = copy.deepcopy(STORED_PROCESSOR)
    stored["reprocessSpec"] = "until_success"
    assert DEFAULT_REPROCESS_SPEC == "until_success"
    assert plan_pipeline(desired(processor), observed(stored), running=True, owner=OWNER).steps == ()


@pytest.mark.parametrize(
    ("role", "path", "value", "field"),
    [
        ("spout", "spout.service.externalPort", 9090, "spout"),
        ("spout", "spout.service.type", "LoadBalancer", "spout"),
        ("spout", "schedulingSpec.nodeSelector", {"disktype": "hdd"}, "schedulingSpec"),
        ("spout", "schedulingSpec.priorityClassName", "other", "schedulingSpec"),
        ("spout", "tolerations", [], "tolerations"),
        ("spout", "sidecarResourceLimits.memory", "1Gi", "sidecarResourceLimits"),
        ("processor", "sidecarResourceRequests.cpu", 0.2, "sidecarResourceRequests"),
        ("processor", "datumTimeout", "60s", "datumTimeout"),
        ("processor", "jobTimeout", "1.5s", "jobTimeout"),
        ("processor", "datumSetSpec", {"perWorker": "2"}, "datumSetSpec"),
        ("processor", "reprocessSpec", "until_success", "reprocessSpec"),
        ("processor", "egress", {"objectStorage": {"url": "s3://elsewhere"}}, "egress"),
        ("processor", "s3Out", True, "s3Out"),
    ],
)
def test_a_field_changed_behind_the_operator_s_back_is_an_update(
    role: str, path: str, value: Any, field: str
) -> None:
    spout, processor = rendered()
    stored = copy.deepcopy(STORED_SPOUT if role == "spout" else STORED_PROCESSOR)
    *parents, last = path.split(".")
    node = stored
    for key in parents:
        node = node[key]
    node[last] = value
    plan = plan_pipeline(
        desired(spout if role == "spout" else processor), observed(stored), running=True, owner=OWNER
    )
    assert plan.steps == (Step.UPDATE,)
    assert plan.changed_fields == (field,)


def test_existing_pipelines_without_the_new_fields_are_left_alone() -> None:
    """Pipelines made before these fields existed (and specs that do not use them) compare equal:
    upgrading the operator writes nothing."""
    spec = full_spec()
    for part in ("spout", "processor"):
        for key in (*COMMON, *PROCESSOR, "service"):
            spec[part].pop(key, None)
    spout, processor = rendered(spec)
    stored_spout = {k: v for k, v in STORED_SPOUT.items() if k not in COMMON}
    stored_spout["spout"] = {}
    stored_processor = {k: v for k, v in STORED_PROCESSOR.items() if k not in {*COMMON, *PROCESSOR}}
    stored_processor["reprocessSpec"] = "until_success"
    for want, stored in ((spout, stored_spout), (processor, stored_processor)):
        assert plan_pipeline(desired(want), observed(stored), running=True, owner=OWNER).steps == ()
