"""A tenant's namespace deleted with its SpoutPipeline, PachdConnection and token Secret
leaves no pipeline in pachd, and finishes in bounded time (issue 25)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from devstack.stack import State
from devstack.testing import kubectl
from kit import apply, connection, pipelines, resource, wait_condition

pytestmark = pytest.mark.integration


def test_a_namespace_deleted_with_its_connection_deletes_its_pipelines(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    connection(stack, "team-pachd", stack.pachds[0].address, namespace=namespace, token="robot-token")
    body = resource("tenant", spout, processor)
    body["spec"]["connectionRef"] = {"kind": "PachdConnection", "name": "team-pachd"}
    apply(stack, namespace, body)
    wait_condition(stack, namespace, "tenant", "Ready", "True")
    assert set(pipelines(pachd_client, spout, processor)) == {spout, processor}
    started = time.monotonic()
    kubectl(stack, "delete", "namespace", namespace, "--timeout=120s")  # returns once it is gone
    assert time.monotonic() - started < 120
    assert pipelines(pachd_client, spout, processor) == {}
