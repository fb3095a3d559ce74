"""One version, read from the VERSION file, for the operator package, its images, the chart and
the kustomize install: a release never ships a chart that runs another version's image."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from devstack import images

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "VERSION").read_text().strip()


def test_version_is_semver() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_chart_version_and_app_version() -> None:
    chart = yaml.safe_load((ROOT / "manifests" / "helm" / "spout-operator" / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION)


def test_python_package() -> None:
    assert f'\nversion = "{VERSION}"\n' in (ROOT / "pyproject.toml").read_text()


def test_kustomize_image_tag_and_deployment_image() -> None:
    kustomization = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())
    tags = {i["name"]: i["newTag"] for i in kustomization["images"]}
    assert tags == {"ghcr.io/spout-operator/spout-operator": VERSION}
    deployment = yaml.safe_load((ROOT / "manifests" / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/spout-operator/spout-operator:{VERSION}"


def test_images_and_samples() -> None:
    assert images.OPERATOR_IMAGE.endswith(f"/spout-operator:{VERSION}")
    assert images.SPOUT101_IMAGE.endswith(f"/spout101:{VERSION}")
    for sample in sorted((ROOT / "crds" / "samples").glob("*.yaml")):
        for tag in re.findall(r"ghcr\.io/spout-operator/[\w-]+:([\w.-]+)", sample.read_text()):
            assert tag == VERSION, sample.name


def test_makefile_reads_the_version_file() -> None:
    assert "VERSION ?= $(shell cat VERSION)" in (ROOT / "Makefile").read_text()
