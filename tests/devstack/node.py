"""A Kubernetes node inside the local stack: containerd + runc + CNI and a kubelet.

Everything runs in a network namespace the stack made (the link of its pachd)
and a mount namespace of its own, so the machine is left as it was:

- containerd and kubelet join one mount namespace, held by a small holder
  process; there /run, /var/lib and /var/log are private tmpfs mounts, and the
  /proc/sys files the kubelet would tune (kernel.panic, vm.overcommit_memory, ...)
  are files of the stack's, bind-mounted over the real ones. Every mount a pod
  needs lives and dies with that namespace.
- cgroups go below one cgroup root per stack (`/devstack-<tag>` in every hierarchy),
  removed at teardown.
- Pods get addresses on a bridge in the node's network namespace. A few iptables
  rules in that namespace stand in for kube-proxy: the ClusterIPs of
  `kubernetes`, and of the `etcd` and `pachd` Services the stack creates, lead to
  the kube-apiserver, etcd and pachd; pod traffic to the machine's end of the link
  is masqueraded to the link's address. The namespace has no default route:
  nothing from a pod reaches anything else.

Teardown stops the kubelet, every container (found through the stack's cgroups),
containerd and its shims (found through the node's mount namespace), then the
holder; the namespaces and their mounts go with their last process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "devstack-node"
# ClusterIPs in the API server's --service-cluster-ip-range (10.0.0.0/24).
KUBERNETES_CLUSTER_IP = "10.0.0.1"
ETCD_CLUSTER_IP = "10.0.0.10"
PACHD_CLUSTER_IP = "10.0.0.11"
# The sysctls the kubelet sets at start (pkg/kubelet/cm setupKernelTunables). It gets
# files of its own in their place, holding the machine's current values.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


@dataclass
class NodeState:
    dir: str  # everything of the node: configs, containerd's root and state, kubelet's root
    netns: str  # the network namespace (the pachd link's)
    node_ip: str  # the node's address (the link's inner end)
    host_ip: str  # the machine's end of the link
    pod_subnet: str  # e.g. 10.232.7.0/24
    bridge: str
    cgroup_root: str  # "/devstack-<tag>"
    holder_pid: int = 0
    mount_ns: str = ""  # "mnt:[inode]" of the node's mount namespace

    @property
    def containerd_socket(self) -> str:
        return str(Path(self.dir) / "containerd.sock")


def plan(root: Path, netns: str, node_ip: str, host_ip: str, tag: str, octet: int) -> NodeState:
    return NodeState(
        dir=str(root / "node"),
        netns=netns,
        node_ip=node_ip,
        host_ip=host_ip,
        pod_subnet=f"10.232.{octet}.0/24",
        bridge=f"dvb{tag}",
        cgroup_root=f"/devstack-{tag}",
    )


NODE_TOOLS = (
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("podman", "podman"),
    ("mmdebstrap", "mmdebstrap"),
    ("catatonit", "catatonit"),
    ("iptables", "iptables"),
    ("nsenter", "util-linux"),
    ("gcc", "gcc"),
    ("kubectl", "kubectl"),
    ("etcd", "etcd-server"),
)


def unavailable_reason() -> str | None:
    """Why a node cannot run here (a sentence), or None."""
    if os.geteuid() != 0:
        return "the node needs root (network and mount namespaces, cgroups)"
    from devstack import build

    missing = [p.name for p in build.PROGRAMS if not p.path.exists()]
    if missing and shutil.which("go") is None:
        return f"the node needs {', '.join(missing)} and Go is not installed to build them"
    for tool, package in NODE_TOOLS:
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"`{tool}` not found: run `make deps` (installs Debian's {package})"
    if not Path("/usr/lib/cni/bridge").exists():
        return "CNI plugins not found: run `make deps` (installs containernetworking-plugins)"
    return None


# --- cgroups ------------------------------------------------------------------------


def cgroup_mounts() -> list[Path]:
    """Every cgroup (v1 and v2) hierarchy mounted on this machine."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            mounts.append(Path(left.split()[4]))
    return mounts


def create_cgroup_root(node: NodeState) -> None:
    for mount in cgroup_mounts():
        path = mount / node.cgroup_root.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset takes no task
            own, parent = path / name, mount / name
            if own.exists() and parent.exists() and not own.read_text().strip():
                own.write_text(parent.read_text())


def cgroup_pids(node: NodeState) -> set[int]:
    pids: set[int] = set()
    for mount in cgroup_mounts():
        base = mount / node.cgroup_root.lstrip("/")
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroup_root(node: NodeState, deadline_s: float = 20) -> list[str]:
    """rmdir every cgroup below the root, deepest first; returns those that stayed.

    A cgroup whose last task just died may refuse for a moment (a zombie not yet reaped):
    retried until the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        left = _remove_cgroup_root_once(node)
        if not left or time.monotonic() > end:
            return left
        kill_all(cgroup_pids(node), grace_s=0.5)
        time.sleep(0.5)


def _remove_cgroup_root_once(node: NodeState) -> list[str]:
    left = []
    for mount in cgroup_mounts():
        base = mount / node.cgroup_root.lstrip("/")
        if not base.is_dir():
            continue
        for path in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        try:
            base.rmdir()
        except OSError:
            left.append(str(base))
    return left


# --- processes ----------------------------------------------------------------------


def mount_ns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def pids_in_mount_ns(ns: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_ns_of(int(entry.name)) == ns:
            found.add(int(entry.name))
    return found


def kill_all(pids: set[int], grace_s: float) -> None:
    """SIGTERM, wait up to grace_s, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(_exists(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while time.monotonic() < end and any(_exists(p) for p in pids):
        time.sleep(0.05)


def _exists(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- configuration files ------------------------------------------------------------


def holder_script(node: NodeState) -> str:
    """Run by the holder in the node's fresh mount namespace, before it sleeps."""
    d = Path(node.dir)
    lines = [
        "set -e",
        # Pod volumes mounted by the kubelet must propagate to containers (within this namespace).
        "mount --make-rshared /",
        "mount -t tmpfs -o mode=755 devstack-run /run",
        "mount -t tmpfs -o mode=755 devstack-varlib /var/lib",
        f"mount --bind {d / 'log'} /var/log",
    ]
    for name in KUBELET_SYSCTLS:
        lines.append(f"mount --bind {d / 'sysctl' / name.replace('/', '.')} /proc/sys/{name}")
    lines.append("exec sleep infinity")
    return "\n".join(lines) + "\n"


def write_configs(
    node: NodeState, pki: Path, kubeconfig: dict[str, object], pause_image: str
) -> dict[str, Path]:
    d = Path(node.dir)
    for sub in ("log", "sysctl", "containerd/root", "containerd/state", "cni/net.d", "cni/ipam", "kubelet"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for name in KUBELET_SYSCTLS:
        (d / "sysctl" / name.replace("/", ".")).write_text(Path(f"/proc/sys/{name}").read_text())
    containerd = d / "containerd.toml"
    containerd.write_text(
        f"""version = 2
root = "{d / "containerd/root"}"
state = "{d / "containerd/state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{node.containerd_socket}"
  tcp_address = ""
[ttrpc]
  address = "{d / "containerd-ttrpc.sock"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "containerd/opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d / "cni/net.d"}"
"""
    )
    gateway = node.pod_subnet.rsplit(".", 1)[0] + ".1"
    cni = {
        "cniVersion": "0.4.0",
        "name": "devstack",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_subnet, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(d / "cni/ipam"),
                },
            }
        ],
    }
    (d / "cni/net.d/10-devstack.conflist").write_text(json.dumps(cni, indent=2))
    kubelet_config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        # Lowering oom_score_adj needs cap_sys_resource, which this machine withholds.
        "oomScoreAdj": 0,
        # No DNS for pods: nothing of theirs may leave the node's namespaces.
        "resolvConf": "",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        # Images come from `make images`, never from a registry: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "makeIPTablesUtilChains": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "imageServiceEndpoint": f"unix://{node.containerd_socket}",
        "maxPods": 40,
        "syncFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "kernelMemcgNotification": False,
        "localStorageCapacityIsolation": True,
    }
    kubelet = d / "kubelet-config.json"
    kubelet.write_text(json.dumps(kubelet_config, indent=2))
    kubelet_kubeconfig = d / "kubelet.kubeconfig"
    kubelet_kubeconfig.write_text(json.dumps(kubeconfig, indent=2))
    holder = d / "holder.sh"
    holder.write_text(holder_script(node))
    return {"containerd": containerd, "kubelet": kubelet, "kubeconfig": kubelet_kubeconfig, "holder": holder}


def iptables_rules(node: NodeState, apiserver_port: int, etcd_port: int, pachd_port: int) -> list[list[str]]:
    """Stand-ins for kube-proxy, inside the node's namespace only."""
    rules = []
    for cluster_ip, port, target in (
        (KUBERNETES_CLUSTER_IP, 443, f"{node.host_ip}:{apiserver_port}"),
        (ETCD_CLUSTER_IP, etcd_port, f"{node.host_ip}:{etcd_port}"),
        (PACHD_CLUSTER_IP, pachd_port, f"{node.node_ip}:{pachd_port}"),
    ):
        rules.append(
            [
                *("-t", "nat", "-A", "PREROUTING", "-d", f"{cluster_ip}/32", "-p", "tcp"),
                *("--dport", str(port), "-j", "DNAT", "--to-destination", target),
            ]
        )
    return rules


@contextlib.contextmanager
def _ignored() -> Iterator[None]:
    with contextlib.suppress(Exception):
        yield


def netns_exec(node: NodeState, *args: str) -> list[str]:
    return ["ip", "netns", "exec", node.netns, *args]


def nsenter(node: NodeState, *args: str) -> list[str]:
    return ["nsenter", "-t", str(node.holder_pid), "-m", "-n", "--", *args]


def run(args: list[str], **kwargs: object) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return str(result.stdout)
