"""One pachd of the stack serving TLS, from a CA the stack makes.

pachd 2.6.0 reads its serving certificate from one fixed place, `/pachd-tls-cert/tls.crt` and
`tls.key` (src/internal/tls/tls.go: `VolumePath`, a constant; no variable moves it), where a
Kubernetes install mounts its TLS Secret. When both files are there its external gRPC server
(PORT) serves TLS only, on the same port (src/internal/grpcutil/server.go: NewServer with
`publicPortTLSAllowed`); its internal server (PEER_PORT, what pachd dials itself on) stays
plain text. Without them it serves plain text, as the stack's other pachds do.

The machine's root filesystem is never touched: the TLS pachd runs in a private mount
namespace of its own (`unshare --mount --propagation private`), chrooted into a tmpfs whose
entries are symlinks into a recursive bind of the machine's `/` (so every path means what it
means outside), plus one real directory, `/pachd-tls-cert`, holding copies of the stack's
certificate and key. Nothing of it propagates to the machine's mount table, and it all goes
with the namespace's last process, pachd itself (`exec` all the way from the recorded PID).
It also runs in a network namespace of its own: pachd 2.6 binds port 1658 on every interface.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# pachd 2.6.0's src/internal/tls/tls.go: VolumePath, CertFile, KeyFile.
CERT_DIR = "/pachd-tls-cert"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
# In the private root: where the machine's own `/` is bound (the symlinks point there).
HOST_DIR = ".devstack-host"


class TlsError(RuntimeError):
    """The TLS pachd's certificates could not be made."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA's certificate (PEM): what a client must trust
    cert: Path  # pachd's serving certificate, for its address only
    key: Path

    @property
    def directory(self) -> Path:
        return self.cert.parent


def _openssl(directory: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TlsError(f"`openssl {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")


def make_certs(directory: Path, ip: str) -> TlsFiles:
    """A CA of its own (not the stack's Kubernetes CA) and, signed by it, pachd's serving
    certificate for `ip` (its only subject alternative name): `ca.crt`, `tls.crt`, `tls.key`."""
    directory.mkdir(parents=True, exist_ok=True)
    days = ("-days", "3650")
    _openssl(
        directory,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", *days),
        *("-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=devstack-pachd-ca"),
    )
    (directory / "tls.ext").write_text(
        f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl(
        directory,
        *(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            KEY_FILE,
            "-out",
            "tls.csr",
            "-subj",
            "/CN=pachd",
        ),
    )
    _openssl(
        directory,
        *("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"),
        *(*days, "-out", CERT_FILE, "-extfile", "tls.ext"),
    )
    return TlsFiles(directory / "ca.crt", directory / CERT_FILE, directory / KEY_FILE)


def root_script() -> str:
    """Run in the TLS pachd's fresh mount namespace: build its root, then exec pachd there.

    Arguments: the (empty) directory to build the root on, the directory holding tls.crt and
    tls.key, then the command."""
    return "\n".join(
        [
            "set -eu",
            "root=$1 certs=$2",
            "shift 2",
            'mount -t tmpfs -o mode=0755,size=4m devstack-tls-root "$root"',
            f'mkdir "$root/{HOST_DIR}"',
            f'mount --rbind / "$root/{HOST_DIR}"',
            "for entry in /* /.[!.]*; do",
            '  [ -e "$entry" ] || [ -L "$entry" ] || continue',
            "  name=${entry#/}",
            f'  [ "$name" = {CERT_DIR.lstrip("/")} ] && continue',
            f'  ln -s "/{HOST_DIR}/$name" "$root/$name"',
            "done",
            f'mkdir -m 0700 "$root{CERT_DIR}"',
            f'cp "$certs/{CERT_FILE}" "$certs/{KEY_FILE}" "$root{CERT_DIR}/"',
            'exec chroot "$root" "$@"',
            "",
        ]
    )


def command(netns: str, script: Path, root: Path, tls: TlsFiles, program: list[str]) -> list[str]:
    """`program` in a private mount namespace (its root from `script`) and in network namespace
    `netns`; every step execs the next, so the first process's PID ends up being pachd's."""
    return [
        *("unshare", "--mount", "--propagation", "private", "--"),
        # Not `ip netns exec`: nothing of the machine's /etc/netns or /sys is wanted here.
        *("nsenter", f"--net=/run/netns/{netns}", "--"),
        *("sh", str(script), str(root), str(tls.directory), *program),
    ]


def mounts_mentioning(*paths: str, table: str = "/proc/self/mountinfo") -> list[str]:
    """Lines of a mount table (this process's: the machine's) whose mount point is one of
    `paths` or below one: what the TLS pachd's root must never leave there."""
    found = []
    for line in Path(table).read_text().splitlines():
        point = line.split()[4]
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in paths):
            found.append(line)
    return found
