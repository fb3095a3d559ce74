"""The Helm chart ships the CRDs of crds/ as they are (Helm installs a chart's crds/ as-is)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "helm" / "spout-operator"


def test_chart_crds_are_the_crds() -> None:
    kustomization = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())
    crds = {name: (ROOT / "crds" / name).read_text() for name in kustomization["resources"]}
    chart = {path.name: path.read_text() for path in (CHART / "crds").glob("*.yaml")}
    assert chart == crds, "copy crds/*.yaml into manifests/helm/spout-operator/crds/"


def test_chart_version_is_the_operator_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject
