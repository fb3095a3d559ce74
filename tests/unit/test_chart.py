"""The Helm chart's CRDs are the repository's crds/, one source: files/crds/ holds links to them,
which templates/crds.yaml renders (so `helm upgrade` upgrades them); nothing in a `crds/`
directory, which Helm would install once the legacy way and never upgrade."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "helm" / "spout-operator"


def test_chart_crds_are_links_to_the_crds() -> None:
    kustomization = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())
    links = sorted((CHART / "files" / "crds").iterdir())
    assert [p.name for p in links] == sorted(kustomization["resources"])
    for link in links:
        assert link.is_symlink(), link
        assert link.resolve() == (ROOT / "crds" / link.name).resolve()
        assert not os.path.isabs(os.readlink(link))  # works from any checkout
    assert not (CHART / "crds").exists()


def test_crd_template_keeps_or_not() -> None:
    template = (CHART / "templates" / "crds.yaml").read_text()
    assert '.Files.Glob "files/crds/*.yaml"' in template and ".Values.crds.enabled" in template
    assert "helm.sh/resource-policy: keep" in (CHART / "templates" / "_helpers.tpl").read_text()


def test_values_schema_covers_every_value() -> None:
    """A value in values.yaml the schema does not name would be refused at install."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(value: object, node: dict[str, object], where: str) -> None:
        if not isinstance(value, dict) or "properties" not in node:
            return
        properties = node["properties"]
        assert isinstance(properties, dict)
        for key, item in value.items():
            assert key in properties, f"{where}{key} missing from values.schema.json"
            check(item, properties[key], f"{where}{key}.")

    check(values, schema, "")
    assert schema["additionalProperties"] is False
