"""`make release`: the release's artefacts, built here, into one directory (default dist/).

- spout-operator-<v>.oci.tar, spout101-<v>.oci.tar: the operator and worker images as OCI
  archives (the builder of `make images`, so the same Debian-made base and inputs; each archive
  names its image ghcr.io/spout-operator/<name>:<v>). Nothing is pushed anywhere: a user copies
  them into their own registry (`skopeo copy oci-archive:... docker://...`, or `podman load`).
- spout-operator-<v>.tgz: the Helm chart (`helm package`; its CRDs are crds/, the links followed).
- install.yaml: CRDs and operator (`kubectl kustomize manifests/`), for `kubectl apply -f`.
- SHA256SUMS, over all of them (`sha256sum -c SHA256SUMS`).

The version is the VERSION file's, which the chart, manifests/ and the images share.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devstack import build, images

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "helm" / "spout-operator"
RELEASED_IMAGES = ("operator", "spout101")


def say(message: str) -> None:
    print(f"[release] {message}", file=sys.stderr, flush=True)


def version() -> str:
    return (ROOT / "VERSION").read_text().strip()


def image_archives(dist: Path, v: str) -> list[Path]:
    planned = {image.name: image for image in images.plan()}
    podman = shutil.which("podman")
    if podman is None:
        raise images.ImageError("`podman` not found: run `make deps`")
    out = []
    for name in RELEASED_IMAGES:
        image = planned[name]
        assert image.ref.endswith(f":{v}"), f"{image.ref} is not version {v} (is $VERSION set?)"
        images.build_image(image)  # reused from the cache when its inputs are unchanged
        log = images.images_dir() / f"release-{name}.log"
        log.write_text("")
        images._ensure_in_podman(image, log)
        target = dist / f"{image.ref.rsplit('/', 1)[1].replace(':', '-')}.oci.tar"
        images._run([podman, "save", "--format", "oci-archive", "-o", str(target), image.ref], log)
        out.append(target)
    return out


def chart(dist: Path) -> Path:
    helm = build.program("helm").path
    if not helm.exists():
        build.build(["helm"])
    subprocess.run([str(helm), "lint", "--strict", str(CHART)], check=True, capture_output=True)
    subprocess.run([str(helm), "package", str(CHART), "-d", str(dist)], check=True, capture_output=True)
    return dist / f"spout-operator-{version()}.tgz"


def install_yaml(dist: Path, v: str) -> Path:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests")], check=True, capture_output=True, text=True
    ).stdout
    target = dist / "install.yaml"
    target.write_text(
        f"# spout-operator {v}: CRDs, namespace spout-operator-system, RBAC, the operator Deployment\n"
        "# (kubectl kustomize manifests/). Then, once the CRDs are established, a ClusterPachdConnection\n"
        "# `default` of your own (manifests/connection.yaml is the template).\n" + rendered
    )
    return target


def checksums(dist: Path, files: list[Path]) -> Path:
    lines = []
    for path in sorted(files):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {path.name}\n")
    target = dist / "SHA256SUMS"
    target.write_text("".join(lines))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.release", description=__doc__)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output directory (emptied first)")
    args = parser.parse_args(argv)
    dist: Path = args.dist.resolve()
    v = version()
    started = time.monotonic()
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    try:
        files = [*image_archives(dist, v), chart(dist), install_yaml(dist, v)]
    except (images.ImageError, build.BuildError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", None) or ""
        print(f"error: {err}\n{detail}", file=sys.stderr)
        return 1
    checksums(dist, files)
    say(f"spout-operator {v} in {dist} ({time.monotonic() - started:.0f}s):")
    for path in sorted(dist.iterdir()):
        print(f"{path.stat().st_size:>12}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
