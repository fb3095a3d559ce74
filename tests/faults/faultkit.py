"""Shared by the fault tier (fixtures are registered where a test module imports them).

The fault tier: the operator as a subprocess (so it can be SIGKILLed, SIGSTOPped,
SIGTERMed), against the session's real stack, whose components the tests kill, freeze and
restart by PID (devstack.Stack.kill / signal / restart).

Every test restores what it broke before it ends, so the tests after it find the stack whole.
Figures (recovery times, failover, shutdown) are printed and added to
bench-results/faults.json; bounds asserted are the issue's contracts, with the waits generous.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import python_pachyderm
from devstack import metrics
from devstack.stack import Stack, State, free_port
from devstack.testing import eventually, kubectl

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE_ADDRESS = "grpc://127.0.0.1:9"  # nothing answers there
UNREACHABLE = "unreachable"  # the ClusterPachdConnection on that address
GROUP, VERSION, PLURAL = "spout-operator.dev", "v1alpha1", "spoutpipelines"
IMAGE = "ghcr.io/spout-operator/spout101:0.1.0"
FIGURES_FILE = ROOT / "bench-results" / "faults.json"


def figure(name: str, value: Any) -> None:
    """Print a measured figure and keep it in bench-results/faults.json (latest run wins)."""
    print(f"FIGURE {name} = {value}", flush=True)
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
    figures[name] = value
    FIGURES_FILE.write_text(json.dumps(figures, indent=2))


@pytest.fixture(scope="session")
def control(stack: State) -> Stack:
    """The session's stack, to kill and restart its components by PID."""
    running = Stack(Path(stack.root))
    running.state = stack
    return running


@pytest.fixture(scope="session")
def crd(stack: State) -> None:
    """The CRDs, and the two connections the tier uses: `default` on the stack's pachd and
    `unreachable` on an address nothing answers, both open to every namespace."""
    kubectl(stack, "apply", "-k", str(ROOT / "crds"))
    for kind in (PLURAL, "pachdconnections", "clusterpachdconnections"):
        kubectl(stack, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{kind}.{GROUP}")
    for name, address in (("default", stack.pachds[0].address), ("unreachable", UNREACHABLE_ADDRESS)):
        connection = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterPachdConnection",
            "metadata": {"name": name},
            "spec": {
                "address": address,
                "policy": {"projects": {"allowDefault": True}},
                "namespaceSelector": {},
            },
        }
        kubectl(stack, "apply", "-f", "-", input=json.dumps(connection))


class Api:
    """SpoutPipelines of one namespace through the API (kubectl is too slow for bursts)."""

    def __init__(self, state: State, namespace: str) -> None:
        client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)  # type: ignore[no-untyped-call]
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def items(self) -> list[dict[str, Any]]:
        found: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, _request_timeout=10
        )
        return list(found["items"])

    def get(self, name: str) -> dict[str, Any]:
        found: Any = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=10
        )
        return dict(found)

    def strip_finalizers(self) -> None:
        for obj in self.items():
            with contextlib.suppress(kubernetes.client.ApiException):
                self.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})


def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    current = status.get("observedGeneration") == obj["metadata"].get("generation")
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return current and conditions.get("Ready") == "True"


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def body(
    name: str, prefix: str, address: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "spout": {
            "name": f"{prefix}-{name}-s",
            "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.consumer"]},
        },
        "processor": {
            "name": f"{prefix}-{name}-p",
            "transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.processor"], "env": env or {}},
        },
    }
    if address is not None:  # through the connection of that name
        spec["connectionRef"] = {"kind": "ClusterPachdConnection", "name": address}
        spec["deletionPolicy"] = "Orphan"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SpoutPipeline",
        "metadata": {"name": name},
        "spec": spec,
    }


class Pachd:
    def __init__(self, state: State, index: int = 0) -> None:
        self.host, self.port = state.pachds[index].host, state.pachds[index].port

    def pipelines(self, prefix: str) -> dict[str, Any]:
        client = python_pachyderm.Client(self.host, self.port)
        return {
            p.pipeline.name: p
            for p in client.list_pipeline(details=True)
            if str(p.pipeline.name).startswith(prefix)
        }

    def delete_prefix(self, prefix: str) -> None:
        client = python_pachyderm.Client(self.host, self.port)
        for name in sorted(self.pipelines(prefix), key=lambda n: not n.endswith("-p")):
            with contextlib.suppress(Exception):
                client.delete_pipeline(name, force=True)


@dataclass
class Operator:
    """`python -m spout_operator` as a subprocess watching one namespace."""

    state: State
    namespace: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    liveness_port: int = 0

    def start(self) -> Operator:
        self.metrics_port, self.liveness_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOUT_OPERATOR_")}
        env.update(
            {
                "PYTHONPATH": str(ROOT / "operator"),
                "KUBECONFIG": self.state.kubeconfig,
                "SPOUT_OPERATOR_NAMESPACE": "spout-operator-system",  # no connection keeps a Secret
                "SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS": "2",
                "SPOUT_OPERATOR_RETRY_DELAY_SECONDS": "2",
                "SPOUT_OPERATOR_PACHD_TIMEOUT_SECONDS": "3",
                "SPOUT_OPERATOR_METRICS_PORT": str(self.metrics_port),
                "SPOUT_OPERATOR_LIVENESS": f"http://127.0.0.1:{self.liveness_port}/healthz",
                "SPOUT_OPERATOR_NAMESPACES": self.namespace,
                "SPOUT_OPERATOR_WORKER_NAMESPACES": self.state.pachds[0].namespace,
                # No node on this stack: worker pods never exist, so Ready cannot wait for them.
                "SPOUT_OPERATOR_WORKER_HEALTH": "false",
                **self.env,
            }
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spout_operator"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=3) as r:
                answer: dict[str, Any] = json.loads(r.read() or b"{}")
                return answer
        except OSError:
            return None

    def wait_healthy(self, timeout_s: float = 60) -> None:
        def up() -> bool:
            assert self.alive(), f"operator exited; see {self.log}"
            return self.health() is not None

        eventually(up, timeout_s, 0.2, what="operator liveness endpoint")

    def scrape(self) -> dict[str, float]:
        return metrics.scrape(self.metrics_port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout_s: float = 30) -> float:
        """SIGTERM; seconds until it exited (SIGKILL after timeout_s)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return time.monotonic() - started

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def prefix() -> str:
    return f"f{uuid.uuid4().hex[:5]}"


@pytest.fixture
def ns(stack: State, crd: None) -> Iterator[str]:
    name = f"faults-{uuid.uuid4().hex[:6]}"
    kubectl(stack, "create", "namespace", name)
    yield name
    kubectl(stack, "delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def operators(stack: State, ns: str, prefix: str, tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """Start operators on demand; at the end, delete the namespace's resources through a
    running one, stop them all, and remove whatever this test left in pachd."""
    started: list[Operator] = []

    def start(**env: str) -> Operator:
        log = Path(stack.root) / "logs" / f"faults-operator-{prefix}-{len(started)}.log"
        operator = Operator(stack, ns, log, dict(env)).start()
        started.append(operator)
        return operator

    yield start
    api = Api(stack, ns)
    if any(o.alive() for o in started):  # deleted through the operator: it removes the pipelines
        with contextlib.suppress(Exception):
            for obj in api.items():
                with contextlib.suppress(kubernetes.client.ApiException):
                    api.delete(obj["metadata"]["name"])
            eventually(lambda: not api.items(), 120, 0.5, what="resources deleted")
    for operator in started:
        operator.terminate(20)
    api.strip_finalizers()
    for index in range(len(stack.pachds)):
        with contextlib.suppress(Exception):
            Pachd(stack, index).delete_prefix(prefix)
