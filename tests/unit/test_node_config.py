"""The node's configuration files and the image references, checked without running anything."""

from __future__ import annotations

import json
from pathlib import Path

from devstack import images
from devstack import node as nodes


def plan(tmp_path: Path) -> nodes.NodeState:
    return nodes.plan(tmp_path, "dvsabcd0", "10.231.7.2", "10.231.7.1", "abcd", 7)


def test_references_normalize_as_containerd_names_them() -> None:
    assert images._normalized("pachyderm/worker:2.6.0") == "docker.io/pachyderm/worker:2.6.0"
    assert images._normalized("busybox:1") == "docker.io/library/busybox:1"
    assert images._normalized(images.SPOUT101_IMAGE) == images.SPOUT101_IMAGE
    assert images._normalized("localhost/devstack-pause:1") == "localhost/devstack-pause:1"


def test_image_keys_follow_their_inputs() -> None:
    assert images._digest([b"a", b"b"]) == images._digest([b"a", b"b"])
    assert images._digest([b"a", b"b"]) != images._digest([b"ab"])


def test_cluster_ips_lead_into_the_stack_only(tmp_path: Path) -> None:
    node = plan(tmp_path)
    rules = nodes.iptables_rules(node, apiserver_port=6443, etcd_port=2379, pachd_port=1650)
    targets = {rule[rule.index("-d") + 1]: rule[-1] for rule in rules}
    assert targets == {
        f"{nodes.KUBERNETES_CLUSTER_IP}/32": "10.231.7.1:6443",
        f"{nodes.ETCD_CLUSTER_IP}/32": "10.231.7.1:2379",
        f"{nodes.PACHD_CLUSTER_IP}/32": "10.231.7.2:1650",
    }
    assert all(rule[:4] == ["-t", "nat", "-A", "PREROUTING"] for rule in rules)


def test_configs_keep_the_node_to_itself(tmp_path: Path) -> None:
    node = plan(tmp_path)
    files = nodes.write_configs(node, tmp_path / "pki", {"kind": "Config"}, "localhost/devstack-pause:1")
    kubelet = json.loads(files["kubelet"].read_text())
    assert kubelet["cgroupRoot"] == "/devstack-abcd" and kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["resolvConf"] == ""  # pods get no DNS server to send to
    assert kubelet["oomScoreAdj"] == 0  # lowering it needs a capability this machine withholds
    assert kubelet["imageGCHighThresholdPercent"] == 100  # images cannot be pulled back
    assert kubelet["address"] == "10.231.7.2" and kubelet["readOnlyPort"] == 0
    containerd = files["containerd"].read_text()
    assert 'tcp_address = ""' in containerd and 'sandbox_image = "localhost/devstack-pause:1"' in containerd
    assert "netns_mounts_under_state_dir = true" in containerd and "SystemdCgroup = false" in containerd
    cni = json.loads((Path(node.dir) / "cni/net.d/10-devstack.conflist").read_text())
    bridge = cni["plugins"][0]
    assert bridge["ipam"]["ranges"][0][0]["subnet"] == "10.232.7.0/24" and bridge["ipMasq"] is True
    holder = files["holder"].read_text()
    for name in nodes.KUBELET_SYSCTLS:
        assert f"/proc/sys/{name}" in holder  # a file of the stack's in its place
        assert (Path(node.dir) / "sysctl" / name.replace("/", ".")).read_text().strip().lstrip("-").isdigit()
    assert "mount -t tmpfs -o mode=755 devstack-run /run" in holder
    assert holder.rstrip().endswith("exec sleep infinity")
