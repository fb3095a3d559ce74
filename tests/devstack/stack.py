"""Start and stop a real local stack: etcd, kube-apiserver, kube-controller-manager,
PostgreSQL and one or more pachd instances, all on 127.0.0.1 with free ports.

Everything lives in one state directory; `state.json` there records the PIDs
this module started so `down` stops exactly those. Without a node no kubelet or
scheduler runs: pods are API objects only and never execute. With `up(node=True)`
(one pachd, in a network namespace it shares with the node) kube-scheduler, the
pod-making controllers, containerd and a kubelet run too (see node.py), and the
images of images.py are imported: pods really run. With `up(tls_pachd=True)` one more pachd
serves TLS from a CA the stack makes (see pachd_tls.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devstack import build, images, pachd_tls
from devstack import node as nodes
from devstack.node import NodeState

PACHD_TOKEN = "devstack-pachd-token"
POSTGRES_USER = "pachyderm"
POSTGRES_PASSWORD = "devstack"
# pachd 2.6 binds its identity (dex) web server to this port, on every interface, with
# no setting to move it: two full pachds cannot share one network namespace.
PACHD_IDENTITY_PORT = 1658
# pachd's own defaults, used when it runs beside a node (in a namespace of its own).
PACHD_PORT = 1650
PACHD_PEER_PORT = 1653
PACHD_UID = 1000
TLS_PACHD = "tls-pachd"  # its name in state.pids


CONTROLLERS = ("garbage-collector-controller", "namespace-controller")
# With a node: pachd's ReplicationControllers and the operator's Deployment become pods,
# pods get ServiceAccounts and the cluster CA, Services get endpoints.
NODE_CONTROLLERS = (
    "replicationcontroller-controller",
    "replicaset-controller",
    "deployment-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "pod-garbage-collector-controller",
    # Lifts the not-ready taint the kubelet registers its node with, once it is Ready.
    "node-lifecycle-controller",
)


class StackError(RuntimeError):
    """A component failed to start; the message carries its log tail."""


@dataclass
class Pachd:
    index: int
    namespace: str
    port: int
    peer_port: int
    pid: int = 0
    env: dict[str, str] = field(default_factory=dict)  # what pachd was started with; sidecars reuse it
    host: str = "127.0.0.1"  # the pachd's own address: loopback, or its network namespace's
    netns: str = ""  # network namespace it runs in ("" = the machine's own)
    tls: bool = False  # serves TLS on `port` (its peer port stays plain text)

    @property
    def address(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.host}:{self.port}"


@dataclass
class Link:
    """A network namespace for one pachd, joined to the machine by a veth pair.

    pachd 2.6 binds port 1658 on every interface with no way to move it, so several
    pachds on one machine each need a network namespace of their own.
    """

    netns: str
    veth: str  # the machine's end
    host_ip: str  # the machine's address on the link: etcd, PostgreSQL, kube-apiserver
    pachd_ip: str  # the namespace's address: pachd


def plan_links(count: int, tag: str = "", octet: int = -1) -> list[Link]:
    """/30 links in 10.231.<random>.0/24: 63 at most, unlikely to meet another stack's."""
    if count > 63:
        raise StackError("at most 63 pachd instances in one stack")
    tag = tag or secrets.token_hex(2)
    octet = octet if octet >= 0 else secrets.randbelow(256)
    return [
        Link(f"dvs{tag}{i}", f"dvh{tag}{i}", f"10.231.{octet}.{4 * i + 1}", f"10.231.{octet}.{4 * i + 2}")
        for i in range(count)
    ]


def _create_link(link: Link) -> None:
    ip = _require("ip", "install Debian's iproute2 (`make deps`)")
    peer = link.veth.replace("dvh", "dvn", 1)
    for args in (
        ["netns", "add", link.netns],
        ["link", "add", link.veth, "type", "veth", "peer", "name", peer],
        ["link", "set", peer, "netns", link.netns],
        ["addr", "add", f"{link.host_ip}/30", "dev", link.veth],
        ["link", "set", link.veth, "up"],
        ["-n", link.netns, "addr", "add", f"{link.pachd_ip}/30", "dev", peer],
        ["-n", link.netns, "link", "set", peer, "up"],
        ["-n", link.netns, "link", "set", "lo", "up"],
    ):
        _run([ip, *args])


def _delete_link(link: Link) -> None:
    # Deleting the namespace deletes the veth pair with it.
    subprocess.run(["ip", "netns", "delete", link.netns], capture_output=True, check=False)


@dataclass
class State:
    root: str
    kubeconfig: str
    apiserver_port: int
    etcd_port: int
    postgres_port: int
    postgres_data: str
    pachctl_config: str
    pids: dict[str, int] = field(default_factory=dict)
    # How each process was started, so a fault test can start it again (restart()).
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    pachds: list[Pachd] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)  # network namespaces made for pachds
    node: NodeState | None = None  # the kubelet's node, when started with one
    pachd_home: str = ""  # the node's pachd: storage shared with its workers' sidecars
    # With up(tls_pachd=True): the pachd that serves TLS (not one of `pachds`), its network
    # namespace, and the PEM file of the CA that signed its certificate (what clients trust).
    tls_pachd: Pachd | None = None
    tls_link: Link | None = None
    tls_ca: str = ""

    def save(self) -> None:
        Path(self.root, "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path) -> State:
        raw = json.loads((root / "state.json").read_text())
        raw["pachds"] = [Pachd(**p) for p in raw["pachds"]]
        raw["links"] = [Link(**link) for link in raw.get("links", [])]
        raw["node"] = NodeState(**raw["node"]) if raw.get("node") else None
        raw["tls_pachd"] = Pachd(**raw["tls_pachd"]) if raw.get("tls_pachd") else None
        raw["tls_link"] = Link(**raw["tls_link"]) if raw.get("tls_link") else None
        return cls(**raw)

    def all_links(self) -> list[Link]:
        """Every network namespace made for a pachd: etcd, PostgreSQL and kube-apiserver listen
        on each link's near end too."""
        return [*self.links, *([self.tls_link] if self.tls_link else [])]

    def env(self) -> dict[str, str]:
        """Variables that point kubectl, pachctl and python-pachyderm at this stack."""
        return {
            "KUBECONFIG": self.kubeconfig,
            "PACH_CONFIG": self.pachctl_config,
            "DEVSTACK_PACHD_ADDRESS": self.pachds[0].address,
        }


# Ports handed out by this process: a port is picked long before its server binds it,
# so the same port must not be picked twice in between.
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _candidates() -> Iterator[int]:
    """Random ports outside the ephemeral range (and above the well-known ones)."""
    low, high = ephemeral_range()
    pool = [*range(10000, low), *range(high + 1, 65536)]
    rng = secrets.SystemRandom()
    return (rng.choice(pool) for _ in range(min(len(pool), 1000)))


def free_port() -> int:
    """A port nobody listens on, and that no outgoing connection can take meanwhile.

    Binding to port 0 would give a port of the ephemeral range, where the stack's own
    clients (the apiserver to etcd, say) may take it as a connection's local port before
    its server starts: postgres then fails with "Address already in use"."""
    for port in _candidates():
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise StackError("no free port outside the ephemeral range (see ip_local_port_range)")


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_until(what: str, ready: Callable[[], bool], deadline_s: float, log: Path, pid: int | None) -> None:
    """Poll `ready` until it holds; fail early if the process died, late on the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if pid is not None and not _alive(pid):
            raise StackError(f"{what} exited during start-up; last lines of {log}:\n{log_tail(log)}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {deadline_s:.0f}s; last lines of {log}:\n{log_tail(log)}")


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (stack started by another process)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return waited == 0


def _spawn(
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
    unset: tuple[str, ...] = (),
) -> int:
    if user is not None:
        args = ["runuser", "-u", user, "--", *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset},
            start_new_session=True,  # Ctrl-C in a terminal must not hit the servers first
        )
    return proc.pid


def _run(args: list[str], **kwargs: Any) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise StackError(f"`{' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return str(result.stdout)


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"`{tool}` not found: {hint}")
    return path


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise StackError(f"PostgreSQL `{name}` not found: run `make deps` (installs Debian postgresql)")
    return str(found)


# --- certificates -----------------------------------------------------------------


def make_certs(pki: Path, extra_sans: tuple[str, ...] = ()) -> None:
    """One CA, a serving cert for 127.0.0.1, an admin client cert and a service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    openssl = _require("openssl", "install Debian's openssl (`make deps`)")

    def ssl_cmd(*args: str) -> None:
        _run([openssl, *args], cwd=pki)

    ssl_cmd(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=devstack-ca",
    )
    sans = ",".join(("IP:127.0.0.1", "DNS:localhost", *extra_sans))
    (pki / "serving.ext").write_text(f"subjectAltName={sans}\n")
    for name, subject, ext in (
        ("serving", "/CN=kube-apiserver", ["-extfile", "serving.ext"]),
        ("admin", "/O=system:masters/CN=devstack-admin", []),
    ):
        ssl_cmd(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
        )
        ssl_cmd(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            f"{name}.crt",
            *ext,
        )
    ssl_cmd("genrsa", "-out", "sa.key", "2048")
    ssl_cmd("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def write_kubeconfig(path: Path, pki: Path, port: int) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devstack",
                "cluster": {
                    "server": f"https://127.0.0.1:{port}",
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": "devstack-admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [{"name": "devstack", "context": {"cluster": "devstack", "user": "devstack-admin"}}],
        "current-context": "devstack",
    }
    path.write_text(json.dumps(config, indent=2))


def service_account_kubeconfig(state: State, namespace: str, account: str) -> Path:
    """A kubeconfig that acts as a ServiceAccount (a TokenRequest token), to prove RBAC."""
    token = _run(
        [
            "kubectl",
            "--kubeconfig",
            state.kubeconfig,
            "create",
            "token",
            account,
            "-n",
            namespace,
            "--duration=24h",
        ]
    ).strip()
    ca = base64.b64encode((Path(state.root) / "pki" / "ca.crt").read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": account,
        "clusters": [
            {
                "name": "devstack",
                "cluster": {
                    "server": f"https://127.0.0.1:{state.apiserver_port}",
                    "certificate-authority-data": ca,
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "devstack", "user": account}}],
    }
    path = Path(state.root) / f"kubeconfig-{namespace}-{account}"
    path.write_text(json.dumps(config, indent=2))
    return path


def _https_ok(port: int, pki: Path, url_path: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{url_path}", context=ctx, timeout=3) as r:
        return int(r.status) == 200


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as r:
        return int(r.status) == 200


# --- the stack ----------------------------------------------------------------------


class Stack:
    """The running stack. `up()` starts it, `down()` stops what `up()` started."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.state: State | None = None

    # Components are started in dependency order; each records its PID at once so a
    # failure half-way still lets `down()` stop whatever did start.
    def up(
        self, pachd_count: int = 1, deadline_s: float = 180, node: bool = False, tls_pachd: bool = False
    ) -> State:
        """Start the stack; with `node`, also a kubelet node that runs pods (one pachd then);
        with `tls_pachd`, also one pachd that serves TLS (`state.tls_pachd`, CA in `state.tls_ca`)."""
        if node and pachd_count != 1:
            raise StackError("a stack with a node runs exactly one pachd")
        if tls_pachd and node:
            raise StackError("the TLS pachd runs in stacks without a node")
        if tls_pachd and os.geteuid() != 0:
            raise StackError(
                "the TLS pachd needs root: a network namespace (pachd 2.6 pins port 1658) and a "
                f"private mount namespace (pachd reads its certificate from {pachd_tls.CERT_DIR} only)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        wanted = [*build.CONTROL_PLANE, *(build.NODE + build.WORKER if node else ())]
        binaries = {p.name: p.path for p in build.PROGRAMS if p.name in wanted}
        missing = [name for name, path in binaries.items() if not path.exists()]
        if missing:
            build.build(missing)
        node_images = images.build_all() if node else []
        etcd = _require("etcd", "install Debian's etcd-server (`make deps`)")
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        state = self.state = State(
            root=str(self.root),
            kubeconfig=str(self.root / "kubeconfig"),
            apiserver_port=free_port(),
            etcd_port=free_port(),
            postgres_port=free_port(),
            postgres_data="",
            pachctl_config=str(self.root / "pachctl-config.json"),
        )
        try:
            if pachd_count > 1 or node or tls_pachd:
                tag, octet = secrets.token_hex(2), secrets.randbelow(256)
                namespaced = pachd_count > 1 or node  # else the one plain pachd runs on the machine
                planned = plan_links((pachd_count if namespaced else 0) + (1 if tls_pachd else 0), tag, octet)
                state.links = planned[:pachd_count] if namespaced else []
                state.tls_link = planned[-1] if tls_pachd else None
                if node:
                    link = state.links[0]
                    state.node = nodes.plan(self.root, link.netns, link.pachd_ip, link.host_ip, tag, octet)
                state.save()  # before creating anything, so down() can remove it
                for link in state.all_links():
                    _create_link(link)
            self._start_etcd(etcd, logs, deadline_s)
            self._start_apiserver(binaries["kube-apiserver"], logs, deadline_s)
            self._start_controller_manager(binaries["kube-controller-manager"], logs)
            self._start_postgres(logs, deadline_s)
            if node:
                self._start_scheduler(binaries["kube-scheduler"], logs)
                self._start_node(binaries["kubelet"], node_images, logs, deadline_s)
            for index in range(pachd_count):
                self._start_pachd(binaries["pachd"], index, logs, deadline_s)
            if tls_pachd:
                self._start_pachd(binaries["pachd"], pachd_count, logs, deadline_s, tls=True)
            self._write_pachctl_config()
        except BaseException:
            self.down()
            raise
        return state

    # The parameters of _spawn, on purpose: each is recorded as given, so `restart` can
    # spawn the component again exactly as `up` did.
    def _spawn_recorded(
        self,
        name: str,
        args: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        user: str | None = None,
        unset: tuple[str, ...] = (),
    ) -> int:
        assert self.state is not None
        self.state.commands[name] = {
            "args": args,
            "log": str(log),
            "env": env or {},
            "user": user,
            "unset": list(unset),
        }
        return _spawn(args, log, env=env, user=user, unset=unset)

    # --- faults: what the fault tier does to the components it started ---------------

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to one component (its process group: `ip netns exec` and its child)."""
        assert self.state is not None
        os.killpg(self.state.pids[name], sig)

    def kill(self, name: str) -> None:
        """SIGKILL one component and reap it."""
        assert self.state is not None
        pid = self.state.pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        while _alive(pid):
            time.sleep(0.05)

    def restart(self, name: str, kill: bool = False, deadline_s: float = 120) -> None:
        """Stop one component (SIGTERM, or SIGKILL with kill=True) and start it again as it was
        started; return once it serves again."""
        assert self.state is not None
        if kill:
            self.kill(name)
        else:
            _stop(self.state.pids[name], name)
        self.start(name, deadline_s)

    def start(self, name: str, deadline_s: float = 120) -> None:
        """Start a component stopped by kill() again, as it was started; return once it serves."""
        assert self.state is not None
        command = self.state.commands[name]
        log = Path(command["log"])
        if name.startswith("pachd-") and not self.state.links:
            free = f"port {PACHD_IDENTITY_PORT} free"
            wait_until(free, lambda: _port_free(PACHD_IDENTITY_PORT), 60, log, None)
        pid = _spawn(command["args"], log, command["env"], command["user"], tuple(command["unset"]))
        self._record(name, pid)
        if name.startswith("pachd-"):
            self.state.pachds[int(name.split("-")[1])].pid = pid
            self.state.save()
        if name == TLS_PACHD and self.state.tls_pachd is not None:
            self.state.tls_pachd.pid = pid
            self.state.save()
        wait_until(name, lambda: self._serving(name), deadline_s, log, pid)

    def _serving(self, name: str) -> bool:
        assert self.state is not None
        if name.startswith("pachd-"):
            pachd = self.state.pachds[int(name.split("-")[1])]
            return _pachd_ready(pachd.host, pachd.port)
        if name == TLS_PACHD and self.state.tls_pachd is not None:
            return _pachd_ready(self.state.tls_pachd.host, self.state.tls_pachd.port, self.state.tls_ca)
        if name == "etcd":
            return _http_ok(f"http://127.0.0.1:{self.state.etcd_port}/health")
        if name == "kube-apiserver":
            return _https_ok(self.state.apiserver_port, self.root / "pki", "/readyz")
        return True

    def _record(self, name: str, pid: int) -> None:
        assert self.state is not None
        self.state.pids[name] = pid
        self.state.save()

    def _start_etcd(self, etcd: str, logs: Path, deadline_s: float) -> None:
        assert self.state is not None
        peer = free_port()
        hosts = ["127.0.0.1", *(link.host_ip for link in self.state.all_links())]
        url = ",".join(f"http://{host}:{self.state.etcd_port}" for host in hosts)
        pid = self._spawn_recorded(
            "etcd",
            [
                etcd,
                "--name",
                "devstack",
                "--data-dir",
                str(self.root / "etcd"),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"devstack=http://127.0.0.1:{peer}",
            ],
            logs / "etcd.log",
            env={"ETCD_UNSUPPORTED_ARCH": ""},
        )
        self._record("etcd", pid)
        health = f"http://127.0.0.1:{self.state.etcd_port}/health"
        wait_until("etcd", lambda: _http_ok(health), deadline_s, logs / "etcd.log", pid)

    def _start_apiserver(self, binary: Path, logs: Path, deadline_s: float) -> None:
        assert self.state is not None
        pki = self.root / "pki"
        node = self.state.node
        sans: tuple[str, ...] = ()
        if node is not None:  # the kubelet and pods (through the `kubernetes` ClusterIP) dial it too
            sans = (
                f"IP:{node.host_ip}",
                f"IP:{nodes.KUBERNETES_CLUSTER_IP}",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            )
        make_certs(pki, sans)
        (pki / "tokens.csv").write_text(f"{PACHD_TOKEN},pachd,pachd,system:masters\n")
        port = self.state.apiserver_port
        log = logs / "kube-apiserver.log"
        pid = self._spawn_recorded(
            "kube-apiserver",
            [
                str(binary),
                f"--etcd-servers=http://127.0.0.1:{self.state.etcd_port}",
                # Loopback only, unless pachds in network namespaces must reach it too.
                "--bind-address=" + ("0.0.0.0" if self.state.all_links() else "127.0.0.1"),
                f"--secure-port={port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer=https://127.0.0.1:{port}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                # With a node, pods get their ServiceAccount tokens; without one there are
                # no pods and no controller making ServiceAccounts.
                *(
                    [
                        f"--kubelet-client-certificate={pki / 'admin.crt'}",
                        f"--kubelet-client-key={pki / 'admin.key'}",
                        # Dial the kubelet by its address: no DNS lookup of the node's name.
                        "--kubelet-preferred-address-types=InternalIP",
                    ]
                    if node is not None
                    else ["--disable-admission-plugins=ServiceAccount"]
                ),
                f"--token-auth-file={pki / 'tokens.csv'}",
            ],
            log,
        )
        self._record("kube-apiserver", pid)
        write_kubeconfig(Path(self.state.kubeconfig), pki, port)
        wait_until(
            "kube-apiserver",
            lambda: _https_ok(port, pki, "/readyz") and _https_ok(port, pki, "/api/v1/namespaces/default"),
            max(deadline_s, 120),
            log,
            pid,
        )

    def _start_controller_manager(self, binary: Path, logs: Path) -> None:
        assert self.state is not None
        kubeconfig = self.state.kubeconfig
        pid = self._spawn_recorded(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--controllers=" + ",".join(CONTROLLERS + (NODE_CONTROLLERS if self.state.node else ())),
                *([f"--root-ca-file={self.root / 'pki' / 'ca.crt'}"] if self.state.node else []),
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
            logs / "kube-controller-manager.log",
        )
        self._record("kube-controller-manager", pid)

    def _start_scheduler(self, binary: Path, logs: Path) -> None:
        assert self.state is not None
        kubeconfig = self.state.kubeconfig
        pid = _spawn(
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
            logs / "kube-scheduler.log",
        )
        self._record("kube-scheduler", pid)

    def _start_node(
        self, kubelet: Path, node_images: list[images.Image], logs: Path, deadline_s: float
    ) -> None:
        """containerd and the kubelet in the node's namespaces; the images imported; Ready."""
        state, node = self.state, self.state.node if self.state else None
        assert state is not None and node is not None
        pki = self.root / "pki"
        kubeconfig = json.loads(Path(state.kubeconfig).read_text())
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://{node.host_ip}:{state.apiserver_port}"
        pause = next(i.ref for i in node_images if i.name == "pause")
        files = nodes.write_configs(node, pki, kubeconfig, pause)
        nodes.create_cgroup_root(node)
        holder_log = logs / "node-holder.log"
        node.holder_pid = _spawn(
            # Not `ip netns exec`: it remounts /sys, hiding the cgroup hierarchies from the kubelet.
            [
                *("unshare", "--mount", "--propagation", "private", "--"),
                *("nsenter", f"--net=/run/netns/{node.netns}", "--", "sh", str(files["holder"])),
            ],
            holder_log,
        )
        self._record("node-holder", node.holder_pid)
        host_ns = nodes.mount_ns_of(os.getpid())

        def holder_ready() -> bool:
            # Its namespace is set up once it sleeps (the script ends in `exec sleep`).
            ns = nodes.mount_ns_of(node.holder_pid)
            cmdline = Path(f"/proc/{node.holder_pid}/cmdline").read_bytes()
            return bool(ns) and ns != host_ns and cmdline.startswith(b"sleep")

        wait_until("node namespaces", holder_ready, 30, holder_log, node.holder_pid)
        node.mount_ns = nodes.mount_ns_of(node.holder_pid)
        state.save()
        containerd_log = logs / "containerd.log"
        pid = _spawn(nodes.nsenter(node, "containerd", "--config", str(files["containerd"])), containerd_log)
        self._record("containerd", pid)
        ctr = ["ctr", "--address", node.containerd_socket]
        wait_until("containerd", lambda: _run([*ctr, "version"]) != "", 60, containerd_log, pid)
        started = time.monotonic()
        images.import_all(node.containerd_socket, node_images, logs / "image-import.log")
        print(f"[devstack] images imported into the node in {time.monotonic() - started:.0f}s", flush=True)
        for rule in nodes.iptables_rules(node, state.apiserver_port, state.etcd_port, PACHD_PORT):
            _run(nodes.netns_exec(node, "iptables", "-w", *rule))
        kubelet_log = logs / "kubelet.log"
        pid = _spawn(
            nodes.nsenter(
                node,
                str(kubelet),
                f"--config={files['kubelet']}",
                f"--kubeconfig={files['kubeconfig']}",
                f"--root-dir={Path(node.dir) / 'kubelet'}",
                f"--cert-dir={Path(node.dir) / 'kubelet' / 'pki'}",
                f"--hostname-override={nodes.NODE_NAME}",
                f"--node-ip={node.node_ip}",
                "--v=1",
            ),
            kubelet_log,
        )
        self._record("kubelet", pid)

        def node_ready() -> bool:
            out = _run(
                [
                    "kubectl",
                    "--kubeconfig",
                    state.kubeconfig,
                    "get",
                    "node",
                    nodes.NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                ]
            )
            return out.strip() == "True"

        wait_until("the node (kubelet Ready)", node_ready, max(deadline_s, 120), kubelet_log, pid)

    def _start_postgres(self, logs: Path, deadline_s: float) -> None:
        assert self.state is not None
        # PostgreSQL refuses to run as root: run it as the Debian `postgres` user, in a
        # directory that user can reach even when the state dir sits under /root.
        user = "postgres" if os.geteuid() == 0 else None
        data = Path(tempfile.mkdtemp(prefix="devstack-pg-"))
        self.state.postgres_data = str(data)
        if user is not None:
            uid = pwd.getpwnam(user).pw_uid
            os.chown(data, uid, -1)
        log = logs / "postgres.log"
        with log.open("ab") as out:
            args = [_postgres_bin("initdb"), "-D", str(data / "db"), "-U", POSTGRES_USER, "--auth=trust"]
            if user is not None:
                args = ["runuser", "-u", user, "--", *args]
            if subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise StackError(f"initdb failed; last lines of {log}:\n{log_tail(log)}")
        if self.state.all_links():
            # pachds in network namespaces connect from their links' far ends. A pachd process
            # on the machine itself given a link's address (a spout's storage sidecar, run
            # locally with its pachd's environment) connects from the near end, the machine's
            # own address on the link: as local as 127.0.0.1, trusted alike.
            with (data / "db" / "pg_hba.conf").open("a") as hba:
                for link in self.state.all_links():
                    hba.write(f"host all all {link.pachd_ip}/32 trust\n")
                    hba.write(f"host all all {link.host_ip}/32 trust\n")
        listen = ",".join(["127.0.0.1", *(link.host_ip for link in self.state.all_links())])
        pid = self._spawn_recorded(
            "postgres",
            [
                _postgres_bin("postgres"),
                "-D",
                str(data / "db"),
                "-p",
                str(self.state.postgres_port),
                "-k",
                str(data),
                "-c",
                f"listen_addresses={listen}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
            ],
            log,
            user=user,
        )
        self._record("postgres", pid)
        wait_until("postgres", lambda: self._psql("SELECT 1") is not None, deadline_s, log, None)

    def _psql(self, sql: str) -> str:
        assert self.state is not None
        return _run(
            [
                _postgres_bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.state.postgres_port),
                "-U",
                POSTGRES_USER,
                "-d",
                "postgres",
                "-tAc",
                sql,
            ]
        )

    def _start_pachd(
        self, binary: Path, index: int, logs: Path, deadline_s: float, tls: bool = False
    ) -> None:
        """pachd-<index>; with `tls`, the TLS pachd instead (its own databases, etcd prefix,
        Kubernetes namespace `pachyderm-tls` and network namespace)."""
        assert self.state is not None
        key = "tls" if tls else str(index)
        name = TLS_PACHD if tls else f"pachd-{index}"
        namespace = "pachyderm-tls" if tls else "pachyderm" if index == 0 else f"pachyderm-{index}"
        for db in (f"pachyderm_{key}", f"dex_{key}"):
            self._psql(f"CREATE DATABASE {db}")
        self._prepare_pachd_namespace(namespace)
        link = self.state.tls_link if tls else self.state.links[index] if self.state.links else None
        pachd = Pachd(index=index, namespace=namespace, port=free_port(), peer_port=free_port(), tls=tls)
        if link is not None:
            pachd.host, pachd.netns = link.pachd_ip, link.netns
        server = link.host_ip if link is not None else "127.0.0.1"  # etcd, PostgreSQL, kube-apiserver
        token_file = self.root / "pki" / "pachd-token"
        token_file.write_text(PACHD_TOKEN)
        storage = self.root / f"pachd-{key}"
        if self.state.node is not None:
            # Its workers' sidecars write the same storage through a hostPath volume, as uid
            # 1000 (pachd's image user): pachd runs as that user too, in a directory it owns.
            home = Path(tempfile.mkdtemp(prefix="devstack-pachd-"))
            self.state.pachd_home = str(home)
            self.state.save()
            os.chmod(home, 0o755)
            storage = home / "storage"
            storage.mkdir()
            token_file = home / "token"
            token_file.write_text(PACHD_TOKEN)
            for path in (home, storage, token_file):
                os.chown(path, PACHD_UID, PACHD_UID)
            pachd.port, pachd.peer_port = PACHD_PORT, PACHD_PEER_PORT
        storage.mkdir(exist_ok=True)
        env = {
            "ETCD_SERVICE_HOST": server,
            "ETCD_SERVICE_PORT": str(self.state.etcd_port),
            "ETCD_PREFIX": f"pachd{key}/",
            "PG_BOUNCER_HOST": server,
            "PG_BOUNCER_PORT": str(self.state.postgres_port),
            "POSTGRES_HOST": server,
            "POSTGRES_PORT": str(self.state.postgres_port),
            "POSTGRES_DATABASE": f"pachyderm_{key}",
            "POSTGRES_USER": POSTGRES_USER,
            "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
            "IDENTITY_SERVER_DATABASE": f"dex_{key}",
            "STORAGE_BACKEND": "LOCAL",
            "PACH_ROOT": str(storage),
            "PORT": str(pachd.port),
            "PEER_PORT": str(pachd.peer_port),
            "PROMETHEUS_PORT": str(free_port()),
            "S3GATEWAY_PORT": str(free_port()),
            "DOWNLOAD_PORT": str(free_port()),
            "OIDC_PORT": str(free_port()),
            "PACH_NAMESPACE": namespace,
            "PACHD_POD_NAME": "pachd",
            "PACHD_SERVICE_HOST": pachd.host,
            "PACHD_SERVICE_PORT": str(pachd.port),
            "METRICS": "false",
            "KUBERNETES_PORT_443_TCP_ADDR": server,
            "KUBERNETES_PORT": str(self.state.apiserver_port),
            "KUBERNETES_SERVICE_HOST": "",
            "KUBERNETES_BEARER_TOKEN_FILE": str(token_file),
            "WORKER_IMAGE": "pachyderm/worker:2.6.0",
            "WORKER_SIDECAR_IMAGE": "pachyderm/pachd:2.6.0",
        }
        if self.state.node is not None:
            # Upstream's own ports: in its namespace nothing else holds them, and pachd writes
            # `localhost:1653` into every spout's config. Its workers' sidecars get the etcd and
            # pachd addresses from Services (a pod's environment), not from ETCD_PREFIX.
            for key in ("PROMETHEUS_PORT", "S3GATEWAY_PORT", "DOWNLOAD_PORT", "OIDC_PORT", "ETCD_PREFIX"):
                env.pop(key)
            tmp = Path(self.state.pachd_home, "tmp")
            tmp.mkdir()
            os.chown(tmp, PACHD_UID, PACHD_UID)
            env.update({"STORAGE_HOST_PATH": str(storage), "HOME": self.state.pachd_home, "TMPDIR": str(tmp)})
        pachd.env = env
        log = logs / f"pachd-{key}.log"
        command = [str(binary)]
        if self.state.node is not None:
            command = ["setpriv", f"--reuid={PACHD_UID}", f"--regid={PACHD_UID}", "--clear-groups", *command]
        if tls and link is not None:
            files = pachd_tls.make_certs(self.root / "pki" / "pachd-tls", link.pachd_ip)
            self.state.tls_ca = str(files.ca)
            script = self.root / "pachd-tls-root.sh"
            script.write_text(pachd_tls.root_script())
            new_root = self.root / "pachd-tls-root"  # a tmpfs is mounted here, in its namespace only
            new_root.mkdir(exist_ok=True)
            command = pachd_tls.command(link.netns, script, new_root, files, command)
        elif link is not None:
            command = ["ip", "netns", "exec", link.netns, *command]
        else:
            wait_until(
                f"port {PACHD_IDENTITY_PORT} to be free (another pachd holds it; pachd 2.6 cannot move it)",
                lambda: _port_free(PACHD_IDENTITY_PORT),
                float(os.environ.get("DEVSTACK_PORT_WAIT_SECONDS", "900")),
                log,
                None,
            )
        # With SSL_CERT_DIR set, pachd mounts a TLS-cert Secret named by TLS_CERT_SECRET_NAME
        # into every worker RC; unset, that name is empty and the RC is invalid.
        pachd.pid = self._spawn_recorded(name, command, log, env=env, unset=("SSL_CERT_DIR",))
        self._record(name, pachd.pid)
        if tls:
            self.state.tls_pachd = pachd
        else:
            self.state.pachds.append(pachd)
        self.state.save()
        ca = self.state.tls_ca if tls else ""
        wait_until(
            name,
            lambda: _pachd_ready(pachd.host, pachd.port, ca),
            max(deadline_s, 120),
            log,
            pachd.pid,
        )

    def _prepare_pachd_namespace(self, namespace: str) -> None:
        """The objects pachd expects around it in Kubernetes: its own Pod (read for the
        worker RC options), the Secret that Pod references, and a pachw Deployment."""
        assert self.state is not None
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "postgres", "namespace": namespace},
                "stringData": {"postgresql-password": POSTGRES_PASSWORD},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "pachd", "namespace": namespace, "labels": {"app": "pachd"}},
                "spec": {
                    "containers": [
                        {
                            "name": "pachd",
                            "image": "pachyderm/pachd:2.6.0",
                            "env": [
                                {
                                    "name": "POSTGRES_PASSWORD",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "postgres", "key": "postgresql-password"}
                                    },
                                }
                            ],
                        }
                    ]
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "pachw", "namespace": namespace},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "pachw"}},
                    "template": {
                        "metadata": {"labels": {"app": "pachw"}},
                        "spec": {"containers": [{"name": "pachw", "image": "pachyderm/pachd:2.6.0"}]},
                    },
                },
            },
        ]
        if self.state.node is not None:
            objects += self._node_objects(namespace)
            # The Pod object must never run: it stands for the pachd this stack runs itself. (Not
            # bound to a missing node: the pod garbage collector deletes such pods.)
            objects[2]["spec"]["nodeSelector"] = {"devstack.local/never": "true"}  # type: ignore[index]
        manifest = "\n".join(json.dumps(o) for o in objects)
        _run(["kubectl", "--kubeconfig", self.state.kubeconfig, "apply", "-f", "-"], input=manifest)

    def _node_objects(self, namespace: str) -> list[dict[str, Any]]:
        """What pachd's worker pods need: their ServiceAccount (with rights in the namespace),
        and the Services whose environment variables tell their sidecars where etcd and pachd are."""
        assert self.state is not None
        labels = {"app.kubernetes.io/part-of": "devstack"}
        return [
            # Every worker pod mounts it (object-store credentials); the LOCAL backend needs none.
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "pachyderm-storage-secret", "namespace": namespace, "labels": labels},
            },
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "pachyderm-worker", "namespace": namespace, "labels": labels},
            },
            # The worker reads its own Pod (the user container's image ID) and its pipeline's objects.
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "pachyderm-worker", "namespace": namespace, "labels": labels},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["pods", "services", "replicationcontrollers", "secrets", "endpoints"],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "pachyderm-worker", "namespace": namespace, "labels": labels},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pachyderm-worker",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "pachyderm-worker", "namespace": namespace}],
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "etcd", "namespace": namespace, "labels": labels},
                "spec": {
                    "clusterIP": nodes.ETCD_CLUSTER_IP,
                    "ports": [{"name": "client", "port": self.state.etcd_port}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "pachd", "namespace": namespace, "labels": labels},
                "spec": {
                    "clusterIP": nodes.PACHD_CLUSTER_IP,
                    "ports": [{"name": "api-grpc-port", "port": PACHD_PORT}],
                },
            },
        ]

    def _write_pachctl_config(self) -> None:
        assert self.state is not None
        contexts: dict[str, dict[str, Any]] = {
            f"devstack-{p.index}": {"pachd_address": p.address, "source": 2} for p in self.state.pachds
        }
        if self.state.tls_pachd is not None:
            ca = base64.b64encode(Path(self.state.tls_ca).read_bytes()).decode()
            contexts["devstack-tls"] = {
                "pachd_address": self.state.tls_pachd.address,
                "source": 2,
                "server_cas": ca,
            }
        config = {"v2": {"active_context": "devstack-0", "contexts": contexts, "metrics": False}}
        Path(self.state.pachctl_config).write_text(json.dumps(config, indent=2))

    def down(self) -> None:
        """Stop every process this stack started, newest first, and remove what would outlive
        them and mislead the next `up`: Postgres' data (pachd's) and etcd's (Kubernetes'). A
        stack kept only one of them showed resources Ready on a pachd that held nothing."""
        state = self.state
        if state is None:
            if not (self.root / "state.json").exists():
                return
            state = self.state = State.load(self.root)
        if state.node is not None:
            self._node_down(state, state.node)
        for name, pid in reversed(list(state.pids.items())):
            _stop(pid, name)
        if state.postgres_data:
            shutil.rmtree(state.postgres_data, ignore_errors=True)
        if state.pachd_home:
            shutil.rmtree(state.pachd_home, ignore_errors=True)
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
        for link in state.all_links():
            _delete_link(link)
        if state.tls_link is not None:
            # The TLS pachd's root lived in its own mount namespace, gone with it.
            left = pachd_tls.mounts_mentioning(str(self.root), pachd_tls.CERT_DIR)
            if left:
                print(f"[devstack] warning: mounts left behind: {left}", flush=True)
        state.pids.clear()
        state.save()

    def _node_down(self, state: State, node: NodeState) -> None:
        """The kubelet first (it would restart containers), then every container (by the
        stack's cgroups), then containerd and its shims (by the node's mount namespace)."""
        if "kubelet" in state.pids:
            _stop(state.pids.pop("kubelet"), "kubelet")
        nodes.kill_all(nodes.cgroup_pids(node), grace_s=5)
        if "containerd" in state.pids:
            _stop(state.pids.pop("containerd"), "containerd")
        if node.mount_ns:
            nodes.kill_all(nodes.pids_in_mount_ns(node.mount_ns), grace_s=5)
        if "node-holder" in state.pids:
            _stop(state.pids.pop("node-holder"), "node-holder")
        nodes.kill_all(nodes.cgroup_pids(node), grace_s=1)
        left = nodes.remove_cgroup_root(node)
        if left:
            print(f"[devstack] warning: cgroups left behind: {left}", flush=True)
        state.save()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _pachd_ready(host: str, port: int, ca: str = "") -> bool:
    """pachd answers; with `ca` (a PEM file), over TLS trusting that CA only."""
    import python_pachyderm

    if ca:
        client = python_pachyderm.Client(host, port, tls=True, root_certs=Path(ca).read_bytes())
    else:
        client = python_pachyderm.Client(host, port)
    client.inspect_cluster()  # unary: really connects
    return True


def _stop(pid: int, name: str, grace_s: float = 15) -> None:
    # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for clients to leave.
    first = signal.SIGINT if name == "postgres" else signal.SIGTERM
    try:
        os.killpg(pid, first)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@contextlib.contextmanager
def running(root: Path, pachd_count: int = 1, node: bool = False, tls_pachd: bool = False) -> Iterator[State]:
    stack = Stack(root)
    try:
        yield stack.up(pachd_count, node=node, tls_pachd=tls_pachd)
    finally:
        stack.down()
