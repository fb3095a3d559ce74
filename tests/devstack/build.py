"""Build the Go binaries of the local stack into a cache outside the repo.

kube-apiserver, kube-controller-manager, pachd and pachctl are compiled from
their published Go modules, each program family in its own wrapper module so
minimal version selection never moves one program's dependencies under the
other; helm too, for the chart's tests, and promtool for the alert rules' tests.
`kstatus` is a small command of our own (gomod/kstatus/main.go) around the
kstatus library that Flux and kpt read status with, so the tests can ask the real
implementation what it makes of the statuses the operator writes. A binary already in
the cache is reused; nothing is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack import testing

KUBERNETES_VERSION = "v1.32.9"
# pachd 2.7.x is not served by the module proxy this project can reach; 2.6.0
# is the newest v2 release it serves, paired with python-pachyderm 7.5.0.
PACHYDERM_VERSION = "v2.6.0"
# sigs.k8s.io/cli-utils, whose pkg/kstatus/status is what Flux, kpt and cli-utils' own
# appliers read a resource's status with.
CLI_UTILS_VERSION = "v0.37.2"
# helm, for the chart's tests (lint, template, install); its Kubernetes libraries are the
# stack's minor version (v0.32).
HELM_VERSION = "v3.17.4"
# promtool, for the alert rules' tests (check rules, test rules) and the dashboard's queries
# (each one parsed by the real PromQL parser); built only when the tier that needs it runs.
# Its go.mod asks for Go 1.26.7 (with an older go, GOTOOLCHAIN=auto fetches that toolchain).
PROMETHEUS_VERSION = "v0.316.0"

# The wrapper modules (go.mod + go.sum + tools.go) live in gomod/<family>/, committed:
# the pinned go.sum makes every build verify the same module content without asking
# the checksum database (which does not know every version the proxy serves).
GOMOD_DIR = Path(__file__).resolve().parent / "gomod"


class BuildError(RuntimeError):
    """A build step failed; the message says what to do about it."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spout-operator"


@dataclass(frozen=True)
class Program:
    """One binary, the wrapper module it is built in, and its Go package."""

    name: str
    family: str
    version: str
    package: str
    ldflags: tuple[str, ...] = ()  # -X settings the program's own build sets

    @property
    def path(self) -> Path:
        return cache_root() / "bin" / f"{self.family}-{self.version}" / self.name


def _source_digest(family: str) -> str:
    """A short digest of a wrapper module that holds code of ours: the cache key changes
    with the code, so an edited main.go is never answered by an old binary."""
    digest = hashlib.sha256()
    for source in sorted((GOMOD_DIR / family).iterdir()):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


PROGRAMS = (
    Program("kube-apiserver", "kubernetes", KUBERNETES_VERSION, "k8s.io/kubernetes/cmd/kube-apiserver"),
    Program(
        "kube-controller-manager",
        "kubernetes",
        KUBERNETES_VERSION,
        "k8s.io/kubernetes/cmd/kube-controller-manager",
    ),
    Program("kube-scheduler", "kubernetes", KUBERNETES_VERSION, "k8s.io/kubernetes/cmd/kube-scheduler"),
    Program("kubelet", "kubernetes", KUBERNETES_VERSION, "k8s.io/kubernetes/cmd/kubelet"),
    Program(
        "pachd", "pachyderm", PACHYDERM_VERSION, "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachd"
    ),
    Program(
        "pachctl", "pachyderm", PACHYDERM_VERSION, "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachctl"
    ),
    # The worker image's binaries (upstream's Dockerfile.worker at the tag): the worker,
    # the init container that copies it into the pod, and pachtf, which init copies too.
    Program(
        "worker", "pachyderm", PACHYDERM_VERSION, "github.com/pachyderm/pachyderm/v2/src/server/cmd/worker"
    ),
    Program("worker_init", "pachyderm", PACHYDERM_VERSION, "github.com/pachyderm/pachyderm/v2/etc/worker"),
    Program(
        "pachtf", "pachyderm", PACHYDERM_VERSION, "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachtf"
    ),
    Program("kstatus", "kstatus", f"{CLI_UTILS_VERSION}-{_source_digest('kstatus')}", "."),
    Program(
        "helm",
        "helm",
        HELM_VERSION,
        "helm.sh/helm/v3/cmd/helm",
        # As helm's Makefile does: its version, and the Kubernetes version `helm template` and
        # `helm lint` assume (that of its client libraries), else v1.20.
        (
            f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
            "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
            "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=32",
            "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
            "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=32",
        ),
    ),
    Program("promtool", "prometheus", PROMETHEUS_VERSION, "github.com/prometheus/prometheus/cmd/promtool"),
)

# What the control-plane-only stack needs; the node (kubelet, scheduler) and the
# worker images need the rest.
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "pachd", "pachctl")
NODE = ("kube-scheduler", "kubelet")
WORKER = ("worker", "worker_init", "pachtf")


def program(name: str) -> Program:
    return next(p for p in PROGRAMS if p.name == name)


say = functools.partial(testing.say, who="devstack build", stderr=True)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go toolchain not found on PATH: install Go 1.22 or newer (https://go.dev/dl) "
            "to build the local stack, or run only the unit tests (make test-unit)"
        )
    return go


def _run(args: list[str], cwd: Path, log: Path) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        result = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildError(f"`{' '.join(args)}` failed (full log: {log}):\n{tail}")


def _prepare_module(family: str, version: str) -> Path:
    workdir = cache_root() / "build" / f"{family}-{version}"
    workdir.mkdir(parents=True, exist_ok=True)
    for source in (GOMOD_DIR / family).iterdir():
        shutil.copyfile(source, workdir / source.name)
    return workdir


def cached(name: str) -> Path:
    """The program's binary, built first only when the cache does not hold it yet."""
    path = program(name).path
    if not path.exists():
        build([name])
    return path


def build(names: list[str] | None = None) -> list[Path]:
    """Build the named programs (default: all) that are not cached yet."""
    wanted = [p for p in PROGRAMS if names is None or p.name in names]
    for family in dict.fromkeys(p.family for p in wanted):
        missing = [p for p in wanted if p.family == family and not p.path.exists()]
        if not missing:
            continue
        workdir = _prepare_module(family, missing[0].version)
        say(f"downloading {family} {missing[0].version} modules (first time: a few minutes)")
        _run([_go(), "mod", "download"], workdir, workdir / "build.log")
        for prog in missing:
            say(f"building {prog.name} {prog.version} (cold: 5-20 minutes on 2 cores)")
            prog.path.parent.mkdir(parents=True, exist_ok=True)
            partial = prog.path.with_suffix(".partial")
            ldflags = " ".join(("-s", "-w", *prog.ldflags))
            _run(
                [_go(), "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(partial), prog.package],
                workdir,
                workdir / "build.log",
            )
            partial.rename(prog.path)
            say(f"built {prog.path}")
    for prog in wanted:
        say(f"{prog.name}: {prog.path}")
    return [p.path for p in wanted]


if __name__ == "__main__":
    try:
        build(sys.argv[1:] or None)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
