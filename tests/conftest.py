"""Fixtures for the integration tier: one real local stack per test session.

The stack (etcd, kube-apiserver, kube-controller-manager, PostgreSQL, pachd) is
built on first use and started once per session. Without Go and without cached
binaries the integration tests skip locally with a reason; in CI (CI=true) that
is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack import build
from devstack.stack import Stack, State

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


@pytest.fixture(scope="session")
def stack(stack_prerequisites: None) -> Iterator[State]:
    # A killed test run (CI time-out, `timeout`) must still stop the servers it started:
    # turn SIGTERM into KeyboardInterrupt so the finalizer below runs.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    root = Path(tempfile.mkdtemp(prefix="devstack-test-"))
    running = Stack(root)
    state = running.up(pachd_count=int(os.environ.get("DEVSTACK_PACHDS", "1")))
    saved = {key: os.environ.get(key) for key in state.env()}
    os.environ.update(state.env())
    try:
        with use_kubeconfig(state.kubeconfig):
            yield state
    finally:
        running.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def use_kubeconfig(path: str) -> Iterator[None]:
    """Point KUBECONFIG, and the in-process kubernetes client library, at `path`.

    The library reads KUBECONFIG once, when it is imported (here: while tests are
    collected, long before the stack exists), and kopf's default login goes through it.
    Without this the in-process operator would use ~/.kube/config, or find nothing.
    """
    from kubernetes.config import kube_config

    saved = os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path
    try:
        yield
    finally:
        env, kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved
        if env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = env


@pytest.fixture(scope="session")
def pachd_address(stack: State) -> str:
    return stack.pachds[0].address


@pytest.fixture
def pachd_client(stack: State) -> Any:
    import python_pachyderm

    return python_pachyderm.Client(stack.pachds[0].host, stack.pachds[0].port)


def kubectl(stack: State, *args: str, input: str | None = None, check: bool = True) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", stack.kubeconfig, *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


@pytest.fixture
def namespace(stack: State) -> Iterator[str]:
    """A fresh Kubernetes namespace for one test, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    kubectl(stack, "create", "namespace", name)
    yield name
    kubectl(stack, "delete", "namespace", name, "--wait=false", check=False)


def eventually(
    check: Callable[[], Any], timeout_s: float = 60, interval_s: float = 0.3, what: str = ""
) -> Any:
    """Poll `check` until it returns a truthy value; fail with the last value or error."""
    end = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except Exception as err:  # the condition may raise until it holds
            last = err
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}: last saw {last!r}")
