"""The CRD's schema teaches `kubectl explain` and matches what the operator reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

CRDS = Path(__file__).resolve().parents[2] / "crds"
ALL = ["spoutpipelines.yaml", "pachdconnections.yaml", "clusterpachdconnections.yaml"]
IDENTIFIER = re.compile(r"^[a-zA-Z][a-zA-Z0-9]*$")
SCHEMA_KEYWORDS = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "enum",
    "default",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "x-kubernetes-validations",
    "additionalProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def schema(file: str = "spoutpipelines.yaml") -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / file).read_text())
    result: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def properties(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, property schema) pair in the tree."""
    found = []
    if isinstance(node, dict):
        for name, child in (node.get("properties") or {}).items():
            found.append((f"{path}.{name}", child))
            found.extend(properties(child, f"{path}.{name}"))
        if isinstance(node.get("items"), dict):
            found.extend(properties(node["items"], f"{path}[]"))
    return found


@pytest.mark.parametrize("file", ALL)
def test_every_property_name_is_an_identifier(file: str) -> None:
    # A comma inside a YAML flow mapping silently turns prose into a property name.
    bad = [path for path, _ in properties(schema(file)) if not IDENTIFIER.match(path.rsplit(".", 1)[-1])]
    assert bad == []


@pytest.mark.parametrize("file", ALL)
def test_every_property_schema_uses_only_schema_keywords(file: str) -> None:
    # e.g. `{description: Memory, e.g. 256Mi.}` parses as a key "e.g. 256Mi." (the API server
    # rejects the whole CRD under strict decoding).
    bad = {
        path: sorted(set(node) - SCHEMA_KEYWORDS)
        for path, node in properties(schema(file))
        if set(node) - SCHEMA_KEYWORDS
    }
    assert bad == {}


@pytest.mark.parametrize("file", ALL)
def test_every_spec_and_status_field_has_a_description(file: str) -> None:
    skip = {".metadata"}
    missing = [
        path for path, node in properties(schema(file)) if path not in skip and not node.get("description")
    ]
    assert missing == []


def test_spec_fields_the_operator_reads_exist() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert {"connectionRef", "project", "state", "deletionPolicy", "spout", "processor"} <= set(spec)
    assert "pachd" not in spec  # no address or Secret of a tenant's choosing
    assert spec["connectionRef"]["properties"]["kind"]["enum"] == [
        "ClusterPachdConnection",
        "PachdConnection",
    ]
    assert spec["state"]["enum"] == ["Running", "Stopped"]
    assert spec["deletionPolicy"]["enum"] == ["Delete", "Orphan"]
    processor = spec["processor"]["properties"]
    assert {"glob", "datumTries", "parallelismSpec", "autoscaling", "transform"} <= set(processor)
    assert "glob" not in spec["spout"]["properties"]


def test_crds_are_all_installed_by_kustomize() -> None:
    kustomization = yaml.safe_load((CRDS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(ALL)


@pytest.mark.parametrize(
    ("file", "scope"), [("pachdconnections.yaml", "Namespaced"), ("clusterpachdconnections.yaml", "Cluster")]
)
def test_connection_kinds_read_what_the_operator_parses(file: str, scope: str) -> None:
    crd = yaml.safe_load((CRDS / file).read_text())
    assert crd["spec"]["scope"] == scope
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"address", "tls", "authTokenSecretRef"} <= set(spec)
    assert set(spec["tls"]["properties"]) == {"enabled", "caSecretRef", "caConfigMapRef"}
    # A connection names a Secret by name only: no namespace field to reach elsewhere.
    assert set(spec["authTokenSecretRef"]["properties"]) == {"name", "key"}
    assert ({"namespaces", "namespaceSelector"} <= set(spec)) is (scope == "Cluster")
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Address", "Ready", "Version"} <= columns


def test_a_new_resource_reads_in_progress_until_the_operator_writes_its_status() -> None:
    # kstatus reads a resource without status as Current; the default says Reconciling.
    status = schema()["properties"]["status"]
    conditions = {c["type"]: c for c in status["default"]["conditions"]}
    assert conditions["Ready"]["status"] == "Unknown"
    assert conditions["Reconciling"]["status"] == "True"
    item = status["properties"]["conditions"]["items"]
    for condition in conditions.values():
        assert set(condition) <= set(item["properties"])
        assert set(item["required"]) <= set(condition)
        assert condition["status"] in item["properties"]["status"]["enum"]


def test_conditions_are_a_map_keyed_by_type_with_their_generation() -> None:
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "observedGeneration" in conditions["items"]["properties"]


COLUMN_TYPES = {"string": "string", "integer": "integer", "boolean": "boolean", "date": "string"}
CONDITION = re.compile(r'^\.status\.conditions\[\?\(@\.type=="(\w+)"\)\]\.(\w+)$')


def field_at(path: str) -> dict[str, Any] | None:
    """The schema of a printer column's JSON path (.a.b.c, or a condition's field), or None."""
    crd = yaml.safe_load((CRDS / "spoutpipelines.yaml").read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    if path == ".metadata.creationTimestamp":
        return {"type": "string"}  # the API server's own
    matched = CONDITION.match(path)
    if matched:
        path = f".status.conditions.items.{matched.group(2)}"
    node: dict[str, Any] | None = root
    for part in path.strip(".").split("."):
        if node is None:
            return None
        node = node["items"] if part == "items" else (node.get("properties") or {}).get(part)
    return node


def test_every_column_reads_a_field_of_its_own_type() -> None:
    crd = yaml.safe_load((CRDS / "spoutpipelines.yaml").read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    wrong = {
        c["name"]: c["jsonPath"]
        for c in columns
        if (field_at(c["jsonPath"]) or {}).get("type") != COLUMN_TYPES[c["type"]]
    }
    assert wrong == {}


def test_wide_output_shows_pause_and_automatic_restarts() -> None:
    crd = yaml.safe_load((CRDS / "spoutpipelines.yaml").read_text())
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    wide = {(c["jsonPath"], c["type"]) for c in columns.values() if c.get("priority") == 1}
    assert {(".status.paused", "boolean"), (".status.autoRestart.restarts", "integer")} <= wide
    assert (columns["Paused"]["jsonPath"], columns["Auto-Restarts"]["jsonPath"]) == (
        ".status.paused",
        ".status.autoRestart.restarts",
    )
    # `kubectl get` without -o wide keeps to the essentials.
    plain = [name for name, c in columns.items() if not c.get("priority")]
    assert "Paused" not in plain and "Auto-Restarts" not in plain


def test_kubectl_get_wide_shows_where_to_push() -> None:
    crd = yaml.safe_load((CRDS / "spoutpipelines.yaml").read_text())
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    push = columns["Push-Address"]
    assert push["jsonPath"] == ".status.pushAddress"
    assert push["type"] == "string"
    assert push.get("priority") == 1  # -o wide only: most spouts have no service
    assert "pushAddress" in schema()["properties"]["status"]["properties"]
