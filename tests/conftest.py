"""Fixtures for the integration tier: one real local stack per test session.

The stack (etcd, kube-apiserver, kube-controller-manager, PostgreSQL, pachd) is
built on first use and started once per session. Without Go and without cached
binaries the integration tests skip locally with a reason; in CI (CI=true) that
is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack import build, pachd_tls
from devstack.stack import Stack, State
from devstack.testing import IN_CI, kubectl, use_kubeconfig


def _stack_unavailable_reason() -> str | None:
    missing = [p.name for p in build.PROGRAMS if not p.path.exists()]
    if missing and shutil.which("go") is None:
        return (
            f"local stack needs {', '.join(missing)}, and Go is not installed to build them: "
            "install Go (https://go.dev/dl) and run `make stack-build`, or run `make test-unit`"
        )
    for tool, package in (("etcd", "etcd-server"), ("openssl", "openssl"), ("kubectl", "kubectl")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: run `make deps` (installs {package})"
    return None


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def stack_prerequisites() -> None:
    """Skip locally, fail in CI, when the local stack cannot be built or run here."""
    reason = _stack_unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI must run the integration tests, but {reason}")
        pytest.skip(reason)


def _requested(session: pytest.Session, fixture: str) -> bool:
    """Whether a test selected in this session uses `fixture`."""
    return any(fixture in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture(scope="session")
def stack(stack_prerequisites: None, request: pytest.FixtureRequest) -> Iterator[State]:
    # A killed test run (CI time-out, `timeout`) must still stop the servers it started:
    # turn SIGTERM into KeyboardInterrupt so the finalizer below runs.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    root = Path(tempfile.mkdtemp(prefix="devstack-test-"))
    running = Stack(root)
    # The TLS pachd (tests/integration/test_tls_pachd.py) only when a selected test uses it, and
    # only as root (without root its fixture skips locally and fails in CI).
    tls = os.geteuid() == 0 and _requested(request.session, "tls_pachd")
    state = running.up(pachd_count=int(os.environ.get("DEVSTACK_PACHDS", "1")), tls_pachd=tls)
    try:
        with pytest.MonkeyPatch.context() as patch, use_kubeconfig(state.kubeconfig):
            for key, value in state.env().items():
                patch.setenv(key, value)
            yield state
    finally:
        running.down()
        # The TLS pachd's private root (and anything else) must not outlive the stack.
        left = pachd_tls.mounts_mentioning(str(root), pachd_tls.CERT_DIR)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"mounts left on the machine after the stack stopped: {left}"


@pytest.fixture(scope="session")
def pachd_address(stack: State) -> str:
    return stack.pachds[0].address


@pytest.fixture
def pachd_client(stack: State) -> Any:
    import python_pachyderm

    return python_pachyderm.Client(stack.pachds[0].host, stack.pachds[0].port)


@pytest.fixture
def namespace(stack: State) -> Iterator[str]:
    """A fresh Kubernetes namespace for one test, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    kubectl(stack, "create", "namespace", name)
    yield name
    kubectl(stack, "delete", "namespace", name, "--wait=false", check=False)
