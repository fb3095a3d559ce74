"""The integration tier's fixtures for the operator: CRDs, the default connection, its
environment, the operator in-process, unique pipeline names. (The stack itself, the test
namespace and the pachd client are in tests/conftest.py.)"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from devstack.stack import Pachd, State
from devstack.testing import IN_CI, install_crds, kubectl
from kit import (
    CONNECTION_CHECK_S,
    DRIFT_INTERVAL_S,
    METRICS_PORT,
    OPERATOR_NAMESPACE,
    install_default_connection,
    running_operator,
)


@pytest.fixture(scope="session")
def crd(stack: State) -> None:
    install_crds(stack)
    kubectl(stack, "create", "namespace", OPERATOR_NAMESPACE, check=False)  # may exist already


@pytest.fixture(scope="session")
def tls_pachd(stack: State) -> Pachd:
    """The stack's pachd that serves TLS (its CA: `stack.tls_ca`). The session's stack starts it
    when a selected test uses this fixture (tests/conftest.py); it needs root."""
    if stack.tls_pachd is None:
        reason = "this stack has no TLS pachd: it needs root (a network and a private mount namespace)"
        if IN_CI:
            pytest.fail(f"CI must run the TLS tests, but {reason}")
        pytest.skip(reason)
    return stack.tls_pachd


@pytest.fixture(scope="session")
def default_connection(stack: State, crd: None) -> None:
    """The ClusterPachdConnection `default` (what manifests/connection.yaml installs), on the
    stack's pachd, open to every namespace; its policy grants pachd's default project, and a
    shared project pachd does not have (so that pachd's own refusal can be reported)."""
    install_default_connection(stack, stack.pachds[0].address)


@pytest.fixture(scope="session")
def operator_env(stack: State, default_connection: None) -> Iterator[None]:
    # The operator reads these when it starts (its startup handler), so set them before.
    # No pachd address or token: SpoutPipelines reach pachd through connections only.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPOUT_OPERATOR_NAMESPACE", OPERATOR_NAMESPACE)
        patch.setenv("SPOUT_OPERATOR_CONNECTION_CHECK_SECONDS", str(CONNECTION_CHECK_S))
        patch.setenv("SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS", str(DRIFT_INTERVAL_S))
        patch.setenv("SPOUT_OPERATOR_RETRY_DELAY_SECONDS", "2")
        patch.setenv("SPOUT_OPERATOR_METRICS_PORT", str(METRICS_PORT))
        # No node on this stack: worker pods never exist, so Ready cannot wait for them (the
        # e2e tier, with a node, judges workers).
        patch.setenv("SPOUT_OPERATOR_WORKER_HEALTH", "false")
        yield


@pytest.fixture
def operator(crd: None, operator_env: None, namespace: str) -> Iterator[Any]:
    with running_operator(namespace) as runner:
        yield runner


@pytest.fixture
def names(pachd_client: Any) -> Iterator[tuple[str, str]]:
    """Unique pipeline names for one test; whatever is left in pachd is removed after it.

    Request it before `operator`: fixtures end in reverse order, so the operator has stopped
    by then (a running one would restore the pipelines at its next sweep, and they would leak).
    """
    suffix = uuid.uuid4().hex[:6]
    spout, processor = f"sp-{suffix}", f"pr-{suffix}"
    yield spout, processor
    # Every pipeline named after these (tests add suffixes), in any project, processors first:
    # pachd Community Edition holds 16 pipelines in all, so one left behind costs later tests.
    with contextlib.suppress(Exception):
        left = [
            (info.pipeline.name, info.pipeline.project.name or "default")
            for info in pachd_client.list_pipeline()
            if info.pipeline.name.startswith((spout, processor))
        ]
        for name, project in sorted(left, key=lambda found: not found[0].startswith(processor)):
            with contextlib.suppress(Exception):
                pachd_client.delete_pipeline(name, force=True, project_name=project)
