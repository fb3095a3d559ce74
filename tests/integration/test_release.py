"""`make release` builds every artefact of a release into one directory: both images as OCI
archives named by their references, the packaged chart (its CRDs the repository's), install.yaml
(CRDs and operator at the release's version) and SHA256SUMS over them. It builds images, so it is
in this tier; with the image cache warm it takes well under a minute (no stack needed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "VERSION").read_text().strip()


def test_make_release_produces_the_artefacts(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "stale").parent.mkdir()
    (dist / "stale").write_text("left from an earlier run")
    result = subprocess.run(
        ["make", "--no-print-directory", "release", f"DIST={dist}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # cold: the Debian base (~30 s), operator and spout101 images (~40 s)
        check=False,
        env={k: v for k, v in os.environ.items() if k != "VERSION"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    operator, spout101 = f"spout-operator-{VERSION}.oci.tar", f"spout101-{VERSION}.oci.tar"
    chart, install = f"spout-operator-{VERSION}.tgz", "install.yaml"
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        [operator, spout101, chart, install, "SHA256SUMS"]
    )
    sums = dict(reversed(line.split("  ")) for line in (dist / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {operator, spout101, chart, install}
    for name, digest in sums.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest, name
    for archive, ref in (
        (operator, f"ghcr.io/spout-operator/spout-operator:{VERSION}"),
        (spout101, f"ghcr.io/spout-operator/spout101:{VERSION}"),
    ):
        with tarfile.open(dist / archive) as tar:
            index = tar.extractfile("index.json")
            assert index is not None
            manifests = json.load(index)["manifests"]
            assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in manifests] == [ref]
            assert "oci-layout" in tar.getnames()
    with tarfile.open(dist / chart) as tar:
        meta = tar.extractfile("spout-operator/Chart.yaml")
        assert meta is not None
        assert yaml.safe_load(meta)["appVersion"] == VERSION
        crd = tar.extractfile("spout-operator/files/crds/spoutpipelines.yaml")
        assert crd is not None and crd.read().decode() == (ROOT / "crds" / "spoutpipelines.yaml").read_text()
    objects = [d for d in yaml.safe_load_all((dist / install).read_text()) if d]
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "Namespace"} <= kinds
    assert "ConfigMap" not in kinds  # the pachd-namespace knob's source is never applied
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/spout-operator/spout-operator:{VERSION}"
