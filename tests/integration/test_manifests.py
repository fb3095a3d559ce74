"""manifests/ installs for real, and its RBAC is exactly enough for the operator."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import kubectl, use_kubeconfig
from devstack.stack import State, service_account_kubeconfig
from test_operator import (  # fixtures are registered where they are imported
    condition,
    names,
    operator_env,
    pipelines,
    resource,
    running_operator,
    wait_condition,
)

__all__ = ["names", "operator_env"]

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_NAMESPACE = "spout-operator-system"
ACCOUNT = f"system:serviceaccount:{SYSTEM_NAMESPACE}:spout-operator"


@pytest.fixture(scope="module")
def installed(stack: State) -> None:
    manifests = str(ROOT / "manifests")
    # A server-side dry run cannot place objects in a namespace it only pretends to create.
    kubectl(stack, "apply", "-f", str(ROOT / "manifests" / "namespace.yaml"))
    out = kubectl(stack, "apply", "--dry-run=server", "-k", manifests)
    assert "(server dry run)" in out
    kubectl(stack, "apply", "-k", manifests)
    kubectl(stack, "wait", "--for=condition=Established", "crd/spoutpipelines.spout-operator.dev")


def test_apply_creates_every_object(stack: State, installed: None) -> None:
    for kind, name, namespaced in (
        ("namespace", SYSTEM_NAMESPACE, False),
        ("serviceaccount", "spout-operator", True),
        ("clusterrole", "spout-operator", False),
        ("clusterrolebinding", "spout-operator", False),
        ("deployment", "spout-operator", True),
        ("poddisruptionbudget", "spout-operator", True),
        ("role", "spout-operator-leader-election", True),
        ("crd", "spoutpipelines.spout-operator.dev", False),
    ):
        where = ["-n", SYSTEM_NAMESPACE] if namespaced else []
        assert name in kubectl(stack, "get", kind, name, *where, "-o", "name")
    deployment = json.loads(
        kubectl(stack, "get", "deployment", "spout-operator", "-n", SYSTEM_NAMESPACE, "-o", "json")
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Two replicas, one leader (a Lease); never both away at once.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e for e in container["env"]}
    assert env["SPOUT_OPERATOR_LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdb = json.loads(kubectl(stack, "get", "pdb", "spout-operator", "-n", SYSTEM_NAMESPACE, "-o", "json"))
    assert pdb["spec"]["minAvailable"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(container["resources"])


@pytest.mark.parametrize(
    ("verb", "what", "allowed"),
    [
        ("watch", "spoutpipelines.spout-operator.dev", True),
        ("patch", "spoutpipelines.spout-operator.dev/status", True),
        ("create", "events", True),
        ("get", "secrets", True),
        # Nothing broader than the operator needs:
        ("list", "secrets", False),
        ("watch", "secrets", False),
        ("delete", "spoutpipelines.spout-operator.dev", False),
        ("create", "spoutpipelines.spout-operator.dev", False),
        ("create", "pods", False),
        ("get", "configmaps", False),
        ("update", "customresourcedefinitions.apiextensions.k8s.io", False),
    ],
)
def test_rbac_allows_only_what_the_operator_needs(
    stack: State, installed: None, verb: str, what: str, allowed: bool
) -> None:
    answer = kubectl(stack, "auth", "can-i", verb, what, "--as", ACCOUNT, "-A", check=False).strip()
    assert answer.splitlines()[0] == ("yes" if allowed else "no")


@pytest.mark.parametrize(
    ("verb", "namespace", "allowed"),
    [
        ("get", SYSTEM_NAMESPACE, True),
        ("create", SYSTEM_NAMESPACE, True),
        ("update", SYSTEM_NAMESPACE, True),
        ("delete", SYSTEM_NAMESPACE, False),
        ("list", SYSTEM_NAMESPACE, False),
        ("update", "default", False),  # the operator's namespace only
    ],
)
def test_leases_are_writable_only_in_the_operators_namespace(
    stack: State, installed: None, verb: str, namespace: str, allowed: bool
) -> None:
    answer = kubectl(
        stack,
        "auth",
        "can-i",
        verb,
        "leases.coordination.k8s.io",
        "--as",
        ACCOUNT,
        "-n",
        namespace,
        check=False,
    ).strip()
    assert answer.splitlines()[0] == ("yes" if allowed else "no")


@pytest.mark.parametrize(
    ("verb", "namespace", "allowed"),
    [
        ("watch", "default", True),  # pachd's namespace, as installed
        ("list", "default", True),
        ("get", "default", False),
        ("delete", "default", False),
        ("patch", "default", False),
        ("watch", SYSTEM_NAMESPACE, False),  # nowhere else
        ("list", "kube-system", False),
    ],
)
def test_worker_rcs_are_readable_only_in_pachds_namespace(
    stack: State, installed: None, verb: str, namespace: str, allowed: bool
) -> None:
    answer = kubectl(
        stack, "auth", "can-i", verb, "replicationcontrollers", "--as", ACCOUNT, "-n", namespace, check=False
    ).strip()
    assert answer.splitlines()[0] == ("yes" if allowed else "no")


@pytest.fixture
def workers_rbac_in_stack(stack: State, installed: None) -> Iterator[None]:
    """manifests/workers-rbac.yaml moved to the stack's pachd namespace, as a user would."""
    text = (ROOT / "manifests" / "workers-rbac.yaml").read_text()
    moved = text.replace("namespace: default", f"namespace: {stack.pachds[0].namespace}")
    kubectl(stack, "apply", "-f", "-", input=moved)
    yield
    kubectl(stack, "delete", "-f", "-", "--ignore-not-found", input=moved, check=False)


@contextlib.contextmanager
def as_service_account(stack: State) -> Iterator[None]:
    """Point the in-process operator (kopf and the kubernetes client) at the ServiceAccount."""
    kubeconfig = service_account_kubeconfig(stack, SYSTEM_NAMESPACE, "spout-operator")
    with use_kubeconfig(str(kubeconfig)):
        yield


def test_operator_with_service_account_rights_runs_the_full_lifecycle(
    stack: State,
    installed: None,
    workers_rbac_in_stack: None,
    operator_env: None,
    namespace: str,
    pachd_client: Any,
    names: tuple[str, str],
) -> None:
    spout, processor = names
    kubectl(
        stack, "create", "secret", "generic", "token", "-n", namespace, "--from-literal=auth-token=unused"
    )
    body = resource("rbac", spout, processor, pachd={"authTokenSecretRef": {"name": "token"}})
    body["spec"]["pachd"]["address"] = stack.pachds[0].address
    os.environ["SPOUT_OPERATOR_WORKER_NAMESPACES"] = stack.pachds[0].namespace
    try:
        with as_service_account(stack), running_operator(namespace) as runner:
            kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body))
            obj = wait_condition(stack, namespace, "rbac", "Ready", "True")
            assert condition(obj, "Synced")["status"] == "True"
            pachd_client.stop_pipeline(spout)  # drift repair writes status and an Event
            wait_condition(stack, namespace, "rbac", "Ready", "True")
            kubectl(stack, "delete", "spoutpipeline", "rbac", "-n", namespace, "--timeout=60s")
            assert pipelines(pachd_client, spout, processor) == {}
    finally:
        os.environ.pop("SPOUT_OPERATOR_WORKER_NAMESPACES", None)
    assert "Worker watch" not in runner.output, runner.output  # the watch never had to restart
    assert "Forbidden" not in runner.output and "403" not in runner.output, runner.output
