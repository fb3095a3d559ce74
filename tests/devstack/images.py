"""Build the node's container images here, with no registry: `make images`.

- a base image made from Debian packages (mmdebstrap), standing in for the
  public `python:3.11-slim` the project's Dockerfiles name (they take it as the
  build ARG `BASE`);
- `images/spout101` and `images/operator`, built from their Dockerfiles;
- pachd's worker and sidecar images for v2.6.0 (what pachd names in
  WORKER_IMAGE / WORKER_SIDECAR_IMAGE), laid out as upstream's Dockerfile.worker
  and Dockerfile.pachd at that tag, from the Go-built binaries of that tag;
- a pause image (a static catatonit) for containerd's pod sandboxes.

Each image is saved as an archive in the cache, named by a key over its inputs:
an archive already there is reused, so nothing is rebuilt unless an input
changed. `import_all` loads the archives into a node's containerd.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from devstack import build, testing

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = os.environ.get("IMAGE_REGISTRY", "ghcr.io/spout-operator")
# The release's version (the VERSION file, which the chart and manifests/ share); $VERSION overrides.
VERSION = os.environ.get("VERSION") or (ROOT / "VERSION").read_text().strip()
SPOUT101_IMAGE = f"{REGISTRY}/spout101:{VERSION}"
OPERATOR_IMAGE = f"{REGISTRY}/spout-operator:{VERSION}"
PACHD_TAG = build.PACHYDERM_VERSION.lstrip("v")
# What the stack's pachd puts into every worker RC (WORKER_IMAGE / WORKER_SIDECAR_IMAGE).
WORKER_IMAGE = f"pachyderm/worker:{PACHD_TAG}"
SIDECAR_IMAGE = f"pachyderm/pachd:{PACHD_TAG}"

DEBIAN_SUITE = "bookworm"
# Debian's Python 3.11 with pip and venv, plus what the Dockerfiles' RUN steps use (useradd).
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
# Debian's Python differs from python:slim in two ways that the Dockerfiles meet:
# pip refuses to install into the system (PEP 668 marker), and `pip --prefix=P`
# installs below P/local/. The base image drops the marker and selects Debian's
# `deb` layout (P/lib/python3/dist-packages), which a .pth puts on the path for P=/usr/local.
BASE_HOOK = (
    'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED; '
    'echo /usr/local/lib/python3/dist-packages > "$1"/usr/lib/python3/dist-packages/usr-local-prefix.pth'
)
BASE_ENV = "DEB_PYTHON_INSTALL_LAYOUT=deb"
DUMB_INIT_VERSION = "1.2.5"  # what upstream's worker image holds at v2.6.0


class ImageError(RuntimeError):
    """An image could not be built; the message says which step and shows its output."""


say = functools.partial(testing.say, who="devstack images", stderr=True)


def images_dir() -> Path:
    return build.cache_root() / "images"


def _podman_env() -> dict[str, str]:
    """podman with its own storage in the cache and the settings this machine needs."""
    home = build.cache_root() / "podman"
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "containers.conf"
    # The default ulimits exceed what this VM allows; crun refuses hybrid cgroups.
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    storage = home / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{home / "storage"}"\nrunroot = "{home / "run"}"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


# podman's and mmdebstrap's own mounts (overlays, the chroot's /proc and /dev) are made in
# a mount namespace of their own, which ends with them: the machine's mounts are never touched.
PRIVATE_MOUNTS = ("unshare", "--mount", "--propagation", "private", "--")


def _run(
    args: list[str], log: Path, *, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> None:
    if Path(args[0]).name in ("podman", "mmdebstrap"):
        args = [*PRIVATE_MOUNTS, *args]
    with log.open("ab") as out:
        out.write(f"$ {' '.join(args)}\n".encode())
        out.flush()
        result = subprocess.run(
            args, input=stdin, stdout=out, stderr=subprocess.STDOUT, env=env or _podman_env(), check=False
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ImageError(f"`{' '.join(args)}` failed (log: {log}):\n{tail}")


def _require(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImageError(f"`{tool}` not found: run `make deps` (installs Debian's {package})")
    return found


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _tree_bytes(root: Path, exclude: tuple[str, ...] = ("__pycache__",)) -> list[bytes]:
    """Every file's relative path and content, in a stable order."""
    out: list[bytes] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part in exclude for part in path.parts):
            out += [str(path.relative_to(root)).encode(), path.read_bytes()]
    return out


@dataclass(frozen=True)
class Image:
    name: str  # short name, the archive's prefix
    ref: str  # the reference pods use
    key: str  # digest of every input
    make: Callable[[Image, Path], None]  # builds `ref` into podman's storage

    @property
    def archive(self) -> Path:
        return images_dir() / f"{self.name}-{self.key}.tar"


# --- inputs -------------------------------------------------------------------------


def _module_dir() -> Path:
    """The pachyderm module's source at the tag (LICENSE, licenses/, dex-assets/)."""
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=False
    ).stdout.strip() or str(Path.home() / "go" / "pkg" / "mod")
    path = Path(modcache) / "github.com" / "pachyderm" / "pachyderm" / f"v2@{build.PACHYDERM_VERSION}"
    if not path.is_dir():
        # The module is downloaded by the binaries' build; make sure it happened.
        build.build(["pachd"])
        subprocess.run(
            ["go", "mod", "download", f"github.com/pachyderm/pachyderm/v2@{build.PACHYDERM_VERSION}"],
            cwd=build.GOMOD_DIR / "pachyderm",
            capture_output=True,
            check=False,
        )
    if not path.is_dir():
        raise ImageError(f"pachyderm module source not found at {path}")
    return path


def dumb_init() -> Path:
    """A static dumb-init 1.2.5 (upstream's worker image holds the release binary of that
    version): compiled here from the PyPI sdist of the same version, cached."""
    target = build.cache_root() / "bin" / f"dumb-init-{DUMB_INIT_VERSION}" / "dumb-init"
    if target.exists():
        return target
    gcc = _require("gcc", "gcc")
    work = build.cache_root() / "build" / f"dumb-init-{DUMB_INIT_VERSION}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", str(work)]
    _run([*pip, f"dumb-init=={DUMB_INIT_VERSION}"], log, env=dict(os.environ))
    with tarfile.open(next(work.glob("dumb-init-*.tar.gz"))) as sdist:
        sdist.extractall(work, filter="data")
    source = work / f"dumb-init-{DUMB_INIT_VERSION}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    args = [gcc, "-std=gnu99", "-static", "-s", "-O2", "-o", str(partial), str(source / "dumb-init.c")]
    _run(args, log, env=dict(os.environ))
    partial.rename(target)
    return target


# --- rootfs tarballs for the images made from binaries ------------------------------


class _Rootfs:
    """A tar stream of files with explicit owners and modes (no root-owned host paths)."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w")  # noqa: SIM115 (closed in bytes())
        self.dirs: set[str] = set()

    def dir(self, path: str, mode: int = 0o755, uid: int = 0) -> None:
        if path in self.dirs:
            return
        parent = str(Path(path).parent)
        if parent not in ("/", "."):
            self.dir(parent)
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, mode, uid, uid, 0
        self.tar.addfile(info)
        self.dirs.add(path)

    def file(self, path: str, source: Path, mode: int = 0o755, uid: int = 0) -> None:
        self.dir(str(Path(path).parent))
        data = source.read_bytes()
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 0
        self.tar.addfile(info, io.BytesIO(data))

    def tree(self, path: str, source: Path) -> None:
        for item in sorted(source.rglob("*")):
            target = f"{path}/{item.relative_to(source)}"
            if item.is_dir():
                self.dir(target)
            elif item.is_file():
                self.file(target, item, mode=0o644)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def _import(rootfs: _Rootfs, ref: str, changes: list[str], log: Path) -> None:
    podman = _require("podman", "podman")
    args = [podman, "import"]
    for change in changes:
        args += ["--change", change]
    _run([*args, "-", ref], log, stdin=rootfs.bytes())


# --- the images ---------------------------------------------------------------------


def _make_base(image: Image, log: Path) -> None:
    mmdebstrap = _require("mmdebstrap", "mmdebstrap")
    podman = _require("podman", "podman")
    say(f"making the base image from Debian {DEBIAN_SUITE} packages (mmdebstrap, about a minute)")
    args = [
        mmdebstrap,
        "--quiet",
        "--variant=apt",
        f"--include={','.join(BASE_PACKAGES)}",
        f"--customize-hook={BASE_HOOK}",
        DEBIAN_SUITE,
        "-",
        *_debian_sources(),
    ]
    with log.open("ab") as out:
        out.write(f"$ {' '.join(args)} | podman import - {image.ref}\n".encode())
        out.flush()
        strap = subprocess.Popen([*PRIVATE_MOUNTS, *args], stdout=subprocess.PIPE, stderr=out)
        imported = subprocess.run(
            [
                *PRIVATE_MOUNTS,
                podman,
                "import",
                "--change",
                'CMD=["python3"]',
                "--change",
                f"ENV={BASE_ENV}",
                "-",
                image.ref,
            ],
            stdin=strap.stdout,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_podman_env(),
            check=False,
        )
        assert strap.stdout is not None
        strap.stdout.close()
        strap_rc = strap.wait()
    if strap_rc != 0 or imported.returncode != 0:
        raise ImageError(f"making the base image failed (log: {log}):\n{_tail(log)}")


def _debian_sources() -> list[str]:
    """The machine's own Debian sources (deb822 or one-line files), as mmdebstrap arguments."""
    found = [
        str(p)
        for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
        if p.is_file() and p.suffix in (".list", ".sources") and "debian" in p.read_text()
    ]
    return found or ["http://deb.debian.org/debian"]


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:])


def _make_dockerfile(context: Path, dockerfile: Path, base: Image) -> Callable[[Image, Path], None]:
    def make(image: Image, log: Path) -> None:
        podman = _require("podman", "podman")
        _ensure_in_podman(base, log)
        say(f"building {image.ref} from {dockerfile.relative_to(context)} in {context}")
        _run(
            [
                podman,
                "build",
                "--pull=never",
                "--network=host",  # pip reaches PyPI in RUN steps
                # pip verifies PyPI through this machine's CA bundle (a TLS-intercepting proxy).
                "-v",
                "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
                "--build-arg",
                f"BASE={base.ref}",
                "-f",
                str(dockerfile),
                "-t",
                image.ref,
                str(context),
            ],
            log,
        )

    return make


def _make_worker(image: Image, log: Path) -> None:
    """Upstream's Dockerfile.worker at the tag: FROM scratch, /LICENSE, /licenses, WORKDIR
    /app with worker, init (worker_init), pachctl, pachtf and dumb-init-<arch>, USER 1000."""
    module = _module_dir()
    rootfs = _Rootfs()
    rootfs.file("/LICENSE", module / "LICENSE", mode=0o644)
    rootfs.tree("/licenses", module / "licenses")
    rootfs.dir("/app")
    for name, program in (
        ("worker", "worker"),
        ("init", "worker_init"),
        ("pachctl", "pachctl"),
        ("pachtf", "pachtf"),
    ):
        rootfs.file(f"/app/{name}", build.program(program).path)
    rootfs.file("/app/dumb-init-amd64", dumb_init(), uid=1000)
    _import(rootfs, image.ref, ["WORKDIR=/app", "USER=1000"], log)


def _make_pachd(image: Image, log: Path) -> None:
    """Upstream's Dockerfile.pachd at the tag: FROM scratch, /LICENSE, /licenses, /pachd,
    /dex-assets, a world-writable /tmp, the CA bundle, USER 1000, ENTRYPOINT /pachd."""
    module = _module_dir()
    rootfs = _Rootfs()
    rootfs.file("/LICENSE", module / "LICENSE", mode=0o644)
    rootfs.tree("/licenses", module / "licenses")
    rootfs.file("/pachd", build.program("pachd").path)
    rootfs.tree("/dex-assets", module / "dex-assets")
    rootfs.dir("/tmp", mode=0o777)
    rootfs.file("/etc/ssl/certs/ca-certificates.crt", Path("/etc/ssl/certs/ca-certificates.crt"), mode=0o644)
    _import(rootfs, image.ref, ["USER=1000", 'ENTRYPOINT=["/pachd"]'], log)


def _make_pause(image: Image, log: Path) -> None:
    rootfs = _Rootfs()
    rootfs.file("/pause", _catatonit())
    _import(rootfs, image.ref, ['ENTRYPOINT=["/pause","-P"]', "USER=65535"], log)


def _catatonit() -> Path:
    path = shutil.which("catatonit")
    if path is None:
        raise ImageError("`catatonit` not found: run `make deps` (installs Debian's catatonit)")
    return Path(path)


def _ensure_in_podman(image: Image, log: Path) -> None:
    podman = _require("podman", "podman")
    exists = subprocess.run(
        [podman, "image", "exists", image.ref], env=_podman_env(), capture_output=True, check=False
    )
    if exists.returncode != 0:
        build_image(image)  # the archive, if missing
        _run([podman, "load", "-i", str(image.archive)], log)


def plan() -> list[Image]:
    """Every image with its key. Keys cover the inputs; the base's key is part of the
    keys of the images built on it."""
    sources = [Path(p).read_bytes() for p in _debian_sources() if Path(p).exists()]
    base_key = _digest(
        [
            DEBIAN_SUITE.encode(),
            " ".join(BASE_PACKAGES).encode(),
            BASE_HOOK.encode(),
            BASE_ENV.encode(),
            *sources,
        ]
    )
    base = Image("base", f"localhost/spout-base:{base_key}", base_key, _make_base)
    spout101_ctx = ROOT / "images" / "spout101"
    spout101 = Image(
        "spout101",
        SPOUT101_IMAGE,
        _digest([base_key.encode(), SPOUT101_IMAGE.encode(), *_tree_bytes(spout101_ctx)]),
        _make_dockerfile(spout101_ctx, spout101_ctx / "Dockerfile", base),
    )
    operator_file = ROOT / "images" / "operator" / "Dockerfile"
    operator = Image(
        "operator",
        OPERATOR_IMAGE,
        _digest(
            [
                base_key.encode(),
                OPERATOR_IMAGE.encode(),
                operator_file.read_bytes(),
                (ROOT / "requirements.txt").read_bytes(),
                *_tree_bytes(ROOT / "operator" / "spout_operator"),
            ]
        ),
        _make_dockerfile(ROOT, operator_file, base),
    )
    binaries = {
        name: build.program(name).path for name in ("pachd", "pachctl", "worker", "worker_init", "pachtf")
    }
    missing = [name for name, path in binaries.items() if not path.exists()]
    if missing:
        build.build(missing)

    def file_key(*paths: Path) -> list[bytes]:
        # Binaries are keyed by size and mtime (hashing 300 MB each time costs seconds).
        return [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() for p in paths]

    worker = Image(
        "worker",
        _normalized(WORKER_IMAGE),
        _digest(
            [
                _normalized(WORKER_IMAGE).encode(),
                DUMB_INIT_VERSION.encode(),
                *file_key(*(binaries[n] for n in ("worker", "worker_init", "pachctl", "pachtf"))),
            ]
        ),
        _make_worker,
    )
    pachd = Image(
        "pachd",
        _normalized(SIDECAR_IMAGE),
        _digest([_normalized(SIDECAR_IMAGE).encode(), *file_key(binaries["pachd"])]),
        _make_pachd,
    )
    pause = Image("pause", "", "", _make_pause)
    pause_key = _digest([_catatonit().read_bytes()])
    pause = Image("pause", f"localhost/devstack-pause:{pause_key}", pause_key, _make_pause)
    return [base, pause, worker, pachd, spout101, operator]


def previous_operator(commit: str, version: str) -> Image:
    """The operator image of an earlier release, built from its commit on today's base (the
    upgrade tests install it, then upgrade to this tree's)."""
    base = plan()[0]
    ref = f"{REGISTRY}/spout-operator:{version}"

    def make(image: Image, log: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="previous-operator-") as tmp:
            context = Path(tmp)
            tree = subprocess.run(
                ["git", "archive", commit, "requirements.txt", "operator/spout_operator", "images/operator"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(context)], input=tree, check=True)
            _make_dockerfile(context, context / "images" / "operator" / "Dockerfile", base)(image, log)

    return Image("previous-operator", ref, _digest([base.key.encode(), ref.encode(), commit.encode()]), make)


def build_image(image: Image) -> Path:
    if image.archive.exists():
        return image.archive
    podman = _require("podman", "podman")
    images_dir().mkdir(parents=True, exist_ok=True)
    log = images_dir() / f"{image.name}.log"
    log.write_text("")
    started = time.monotonic()
    image.make(image, log)
    partial = image.archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    # docker-archive keeps the full reference, which containerd's import names the image by.
    _run([podman, "save", "--format", "docker-archive", "-o", str(partial), image.ref], log)
    partial.rename(image.archive)
    for stale in images_dir().glob(f"{image.name}-*.tar"):
        if stale != image.archive:
            stale.unlink()
    say(f"{image.ref}: built in {time.monotonic() - started:.0f}s -> {image.archive}")
    return image.archive


def build_all() -> list[Image]:
    images = plan()
    for image in images:
        build_image(image)
        say(f"{image.ref}: {image.archive.name}")
    return images


def import_all(address: str, images: list[Image], log: Path) -> None:
    """Load every image into the containerd at `address` (namespace k8s.io, as the CRI uses)."""
    ctr = _require("ctr", "containerd")
    for image in images:
        if image.name == "base":
            continue  # only built on
        _run(
            [ctr, "--address", address, "-n", "k8s.io", "images", "import", str(image.archive)],
            log,
            env=dict(os.environ),
        )
    listed = subprocess.run(
        [ctr, "--address", address, "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for image in images:
        if image.name != "base" and _normalized(image.ref) not in listed:
            raise ImageError(f"{image.ref} missing from containerd after import; it has: {listed}")


def _normalized(ref: str) -> str:
    """containerd's name for a Docker-style reference."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def main() -> int:
    try:
        images = build_all()
    except (ImageError, build.BuildError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({image.ref: str(image.archive) for image in images}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
