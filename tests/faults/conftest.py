"""The fault tier's fixtures: the session's stack to break (`control`), the CRDs and the
tier's two connections, a namespace and a name prefix per test, and operators as
subprocesses started on demand (`operators`). The stack itself is tests/conftest.py's."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest
from devstack.stack import Stack, State
from devstack.testing import OperatorProcess, eventually, install_crds, kubectl
from faults.faultkit import GROUP, UNREACHABLE_ADDRESS, VERSION, Api, Pachd

# What every operator of the tier runs with, on top of OperatorProcess's defaults (a drift
# sweep every 2 s): quick retries, a short pachd deadline, and the operator's namespace
# (where no connection of this tier keeps a Secret).
SETTINGS = {
    "SPOUT_OPERATOR_NAMESPACE": "spout-operator-system",
    "SPOUT_OPERATOR_RETRY_DELAY_SECONDS": "2",
    "SPOUT_OPERATOR_PACHD_TIMEOUT_SECONDS": "3",
}


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
    install_crds(stack)
    for name, address in (("default", stack.pachds[0].address), ("unreachable", UNREACHABLE_ADDRESS)):
        connection = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterPachdConnection",
            "metadata": {"name": name},
            "spec": {
                "address": address,
                "namespaceSelector": {},
                "policy": {"projects": {"allowDefault": True}},
            },
        }
        kubectl(stack, "apply", "-f", "-", input=json.dumps(connection))


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
def operators(stack: State, ns: str, prefix: str) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators on demand; at the end, delete the namespace's resources through a
    running one, stop them all, and remove whatever this test left in pachd."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        log = Path(stack.root) / "logs" / f"faults-operator-{prefix}-{len(started)}.log"
        operator = OperatorProcess(stack, ns, log, **{**SETTINGS, **env}).start()
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
