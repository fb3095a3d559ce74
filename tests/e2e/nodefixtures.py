"""Fixtures for the e2e tier: a local stack with a node, so pods really run.

One stack per session (`Stack.up(node=True)`: containerd, kubelet, scheduler,
pachd in a network namespace of its own) with the images of `make images`
imported. Without what the node needs the tier skips locally with a reason; in
CI (CI=true) that is a failure.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack import images, testing
from devstack import node as nodes
from devstack.stack import PACHD_PORT, Stack, State
from devstack.testing import IN_CI, eventually, use_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
PACHD_NAMESPACE = "pachyderm"  # where the operator watches pachd's workers in this tier


@pytest.fixture(scope="session")
def node_prerequisites() -> None:
    reason = nodes.unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI must run the e2e tier, but {reason}")
        pytest.skip(reason)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def node_stack(node_prerequisites: None) -> Iterator[State]:
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="devstack-e2e-"))
    running = Stack(root)
    started = time.monotonic()
    try:
        state = running.up(node=True)
        print(f"\n[e2e] stack with a node up in {time.monotonic() - started:.0f}s", flush=True)
        with use_kubeconfig(state.kubeconfig):
            yield state
    finally:
        running.down()
        shutil.rmtree(root, ignore_errors=True)


def kubectl(
    state: State, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> str:
    """stdout (JSON parses), and stderr as well only where a failure is expected (check=False)."""
    return testing.kubectl(state, *args, input=input, check=check, timeout=timeout, stderr=not check)


def kubectl_json(state: State, *args: str) -> Any:
    return json.loads(kubectl(state, *args, "-o", "json"))


def diagnostics(state: State, namespaces: tuple[str, ...]) -> str:
    """What a failed e2e wait shows: pods, their description, events, node-side log tails."""
    parts = []
    for ns in namespaces:
        parts.append(kubectl(state, "get", "pods", "-n", ns, "-o", "wide", check=False))
        parts.append(kubectl(state, "describe", "pods", "-n", ns, check=False)[-6000:])
        parts.append(
            kubectl(state, "get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False)[-3000:]
        )
    logs = Path(state.root) / "logs"
    for name in ("kubelet.log", "containerd.log", "pachd-0.log", "kube-controller-manager.log"):
        lines = (logs / name).read_text(errors="replace").splitlines()[-25:] if (logs / name).exists() else []
        parts.append(f"--- {name} (last lines)\n" + "\n".join(line[:400] for line in lines))
    if state.node is not None:
        for log in sorted(Path(state.node.dir, "log", "pods").glob("*/*/*.log"))[-12:]:
            tail = log.read_text(errors="replace").splitlines()[-8:]
            parts.append(f"--- {log.relative_to(state.node.dir)}\n" + "\n".join(line[:400] for line in tail))
    return "\n".join(parts)


def wait_for(
    state: State, what: str, check: Callable[[], Any], timeout_s: float, namespaces: tuple[str, ...]
) -> Any:
    """conftest.eventually, once a second; on the deadline fail with the cluster's view too."""
    try:
        return eventually(check, timeout_s, 1.0, what=what)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnostics(state, namespaces)}") from None


def pachd_address_for_pods(state: State) -> str:
    """Where pods reach the stack's pachd: its Service's ClusterIP (the node's iptables lead it
    to pachd)."""
    return f"grpc://{nodes.PACHD_CLUSTER_IP}:{PACHD_PORT}"


def fit_on_small_node(body: dict[str, Any]) -> dict[str, Any]:
    """pachd requests one CPU per worker unless told otherwise: the pair and the operator
    would not fit on a 2-core node (the scheduler says `Insufficient cpu`)."""
    for part in ("spout", "processor"):
        body["spec"][part]["resourceRequests"] = {"cpu": 0.2, "memory": "128Mi"}
    return body


def pachd_client(state: State) -> Any:
    import python_pachyderm

    return python_pachyderm.Client(state.pachds[0].host, state.pachds[0].port)


def sample(interval: tuple[int, int]) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "crds" / "samples" / "spout.yaml").read_text())
    assert body["spec"]["spout"]["transform"]["image"] == images.SPOUT101_IMAGE
    # The consumer waits 10-30 s between batches upstream; a few seconds keep the tier quick.
    body["spec"]["spout"]["transform"]["env"] = {
        "SPOUT_INTERVAL_MIN": str(interval[0]),
        "SPOUT_INTERVAL_MAX": str(interval[1]),
    }
    return fit_on_small_node(body)
