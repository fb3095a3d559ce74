"""The CRD's schema teaches `kubectl explain` and matches what the operator reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

CRD = Path(__file__).resolve().parents[2] / "crds" / "spoutpipelines.yaml"
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
    "additionalProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
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


def test_every_property_name_is_an_identifier() -> None:
    # A comma inside a YAML flow mapping silently turns prose into a property name.
    bad = [path for path, _ in properties(schema()) if not IDENTIFIER.match(path.rsplit(".", 1)[-1])]
    assert bad == []


def test_every_property_schema_uses_only_schema_keywords() -> None:
    # e.g. `{description: Memory, e.g. 256Mi.}` parses as a key "e.g. 256Mi." (the API server
    # rejects the whole CRD under strict decoding).
    bad = {
        path: sorted(set(node) - SCHEMA_KEYWORDS)
        for path, node in properties(schema())
        if set(node) - SCHEMA_KEYWORDS
    }
    assert bad == {}


def test_every_spec_and_status_field_has_a_description() -> None:
    skip = {".metadata"}
    missing = [
        path for path, node in properties(schema()) if path not in skip and not node.get("description")
    ]
    assert missing == []


def test_spec_fields_the_operator_reads_exist() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert {"pachd", "project", "state", "deletionPolicy", "spout", "processor"} <= set(spec)
    assert spec["state"]["enum"] == ["Running", "Stopped"]
    assert spec["deletionPolicy"]["enum"] == ["Delete", "Orphan"]
    processor = spec["processor"]["properties"]
    assert {"glob", "datumTries", "parallelismSpec", "autoscaling", "transform"} <= set(processor)
    assert "glob" not in spec["spout"]["properties"]


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
