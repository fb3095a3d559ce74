"""manifests/ installs for real, and its RBAC is exactly enough for the operator."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack.stack import State, service_account_kubeconfig
from devstack.testing import eventually, install_crds, kubectl, refusals, use_kubeconfig
from kit import (
    OPERATOR_NAMESPACE,
    DeleteAndOrphan,
    condition,
    connection,
    install_default_connection,
    pipelines,
    resource,
    running_operator,
    wait_condition,
)

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
    for plural in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
        kubectl(stack, "wait", "--for=condition=Established", f"crd/{plural}.spout-operator.dev")
    # The default connection is valid as shipped. Only dry-run: the tests' own `default` points
    # at the stack's pachd, not at the Helm chart's address.
    out = kubectl(stack, "apply", "--dry-run=server", "-f", str(ROOT / "manifests" / "connection.yaml"))
    assert "clusterpachdconnection.spout-operator.dev/default" in out


def test_apply_creates_every_object(stack: State, installed: None) -> None:
    for kind, name, namespaced in (
        ("namespace", SYSTEM_NAMESPACE, False),
        ("serviceaccount", "spout-operator", True),
        ("clusterrole", "spout-operator", False),
        ("clusterrolebinding", "spout-operator", False),
        ("role", "spout-operator-connections", True),
        ("rolebinding", "spout-operator-connections", True),
        ("clusterrole", "spout-operator-connection-reader", False),
        ("clusterrole", "spout-operator-edit", False),
        ("clusterrole", "spout-operator-view", False),
        ("crd", "pachdconnections.spout-operator.dev", False),
        ("crd", "clusterpachdconnections.spout-operator.dev", False),
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
    env = {e["name"]: e for e in container["env"]}
    assert not {"SPOUT_OPERATOR_PACHD_ADDRESS", "SPOUT_OPERATOR_PACHD_AUTH_TOKEN"} & set(env)
    assert env["SPOUT_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


@pytest.mark.parametrize(
    ("verb", "what", "where", "allowed"),
    [
        ("watch", "spoutpipelines.spout-operator.dev", None, True),
        ("patch", "spoutpipelines.spout-operator.dev/status", None, True),
        ("create", "events", None, True),
        ("watch", "pachdconnections.spout-operator.dev", None, True),
        ("watch", "clusterpachdconnections.spout-operator.dev", None, True),
        ("patch", "pachdconnections.spout-operator.dev/status", None, True),
        ("patch", "clusterpachdconnections.spout-operator.dev/status", None, True),
        ("get", "namespaces", None, True),
        # Secrets and CA ConfigMaps of ClusterPachdConnections: the operator's namespace only.
        ("get", "secrets", SYSTEM_NAMESPACE, True),
        ("get", "configmaps", SYSTEM_NAMESPACE, True),
        ("get", "secrets", None, False),  # not cluster-wide
        ("get", "secrets", "default", False),  # nor in a namespace no admin opened to it
        ("get", "configmaps", "default", False),
        # Nothing broader than the operator needs:
        ("list", "secrets", SYSTEM_NAMESPACE, False),
        ("watch", "secrets", SYSTEM_NAMESPACE, False),
        ("list", "secrets", None, False),
        ("create", "secrets", SYSTEM_NAMESPACE, False),
        ("create", "pachdconnections.spout-operator.dev", None, False),  # admins own connections
        ("update", "clusterpachdconnections.spout-operator.dev", None, False),
        ("delete", "pachdconnections.spout-operator.dev", None, False),
        ("delete", "spoutpipelines.spout-operator.dev", None, False),
        ("create", "spoutpipelines.spout-operator.dev", None, False),
        ("create", "pods", None, False),
        ("update", "customresourcedefinitions.apiextensions.k8s.io", None, False),
    ],
)
def test_rbac_allows_only_what_the_operator_needs(
    stack: State, installed: None, verb: str, what: str, where: str | None, allowed: bool
) -> None:
    assert can_i(stack, ACCOUNT, verb, what, where) is allowed


def can_i(stack: State, who: str, verb: str, what: str, namespace: str | None) -> bool:
    """`kubectl auth can-i` as `who` in `namespace` (None: in every namespace); `what` may name
    a subresource (pods/log). Its answer must be yes or no (kubectl may add " - <reason>")."""
    resource, _, subresource = what.partition("/")  # `can-i patch x/status` asks about an x named status
    sub = [f"--subresource={subresource}"] if subresource else []
    scope = ["-n", namespace] if namespace else ["-A"]
    answer = kubectl(stack, "auth", "can-i", verb, resource, *sub, "--as", who, *scope, check=False)
    first = answer.strip().splitlines()[0]
    assert first == "yes" or first.split(" - ")[0] == "no", answer
    return first == "yes"


def test_connection_reader_is_granted_one_namespace_at_a_time(
    stack: State, installed: None, namespace: str
) -> None:
    """A PachdConnection's Secrets become readable to the operator only where an admin binds
    the reader ClusterRole, and only there."""
    assert not can_i(stack, ACCOUNT, "get", "secrets", namespace)
    bind_reader(stack, namespace)
    assert can_i(stack, ACCOUNT, "get", "secrets", namespace)
    assert can_i(stack, ACCOUNT, "get", "configmaps", namespace)
    assert not can_i(stack, ACCOUNT, "list", "secrets", namespace)
    assert not can_i(stack, ACCOUNT, "get", "secrets", "default")


def bind_reader(stack: State, namespace: str) -> None:
    kubectl(
        stack,
        "create",
        "rolebinding",
        "spout-operator-connection-reader",
        "-n",
        namespace,
        "--clusterrole=spout-operator-connection-reader",
        f"--serviceaccount={SYSTEM_NAMESPACE}:spout-operator",
    )


def test_tenants_with_edit_manage_spoutpipelines_not_connections(
    stack: State, installed: None, namespace: str
) -> None:
    """spout-operator-edit is what aggregation adds to the built-in edit and admin roles (this
    stack runs no aggregation controller, so the test binds it directly)."""
    tenant = "tenant-with-edit"
    kubectl(
        stack,
        "create",
        "rolebinding",
        "edit",
        "-n",
        namespace,
        "--clusterrole=spout-operator-edit",
        f"--user={tenant}",
    )
    assert can_i(stack, tenant, "create", "spoutpipelines.spout-operator.dev", namespace)
    assert can_i(stack, tenant, "get", "pachdconnections.spout-operator.dev", namespace)
    assert not can_i(stack, tenant, "create", "pachdconnections.spout-operator.dev", namespace)
    assert not can_i(stack, tenant, "update", "pachdconnections.spout-operator.dev", namespace)
    assert not can_i(stack, tenant, "create", "clusterpachdconnections.spout-operator.dev", namespace)
    assert not can_i(stack, tenant, "get", "secrets", namespace)
    labels = json.loads(kubectl(stack, "get", "clusterrole", "spout-operator-edit", "-o", "json"))[
        "metadata"
    ]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"


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
    assert can_i(stack, ACCOUNT, verb, "leases.coordination.k8s.io", namespace) is allowed


@pytest.mark.parametrize("what", ["replicationcontrollers", "services", "pods"])
@pytest.mark.parametrize(
    ("verb", "namespace", "allowed"),
    [
        ("watch", "default", True),  # pachd's namespace, as installed
        ("list", "default", True),
        ("get", "default", False),
        ("delete", "default", False),
        ("patch", "default", False),
        ("create", "default", False),
        ("watch", SYSTEM_NAMESPACE, False),  # nowhere else
        ("list", "kube-system", False),
    ],
)
def test_worker_rcs_services_and_pods_are_readable_only_in_pachds_namespace(
    stack: State, installed: None, what: str, verb: str, namespace: str, allowed: bool
) -> None:
    assert can_i(stack, ACCOUNT, verb, what, namespace) is allowed


@pytest.mark.parametrize(("verb", "what"), [("get", "pods/log"), ("create", "pods/exec"), ("list", "pods")])
def test_worker_pods_give_no_logs_no_shell_and_no_listing_elsewhere(
    stack: State, installed: None, verb: str, what: str
) -> None:
    """Reading pods' status is all workers' health needs: not their logs, not a shell."""
    assert not can_i(stack, ACCOUNT, verb, what, "default" if "/" in what else None)


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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spout, processor = names
    # A PachdConnection whose token Secret the operator may not read yet: said so in status.
    connection(stack, "team", stack.pachds[0].address, namespace=namespace, token="unused-by-pachd")
    body = resource("rbac", spout, processor, connectionRef={"kind": "PachdConnection", "name": "team"})
    monkeypatch.setenv("SPOUT_OPERATOR_WORKER_NAMESPACES", stack.pachds[0].namespace)
    with as_service_account(stack), running_operator(namespace) as runner:
        kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body))
        obj = wait_condition(stack, namespace, "rbac", "Synced", "False")
        assert condition(obj, "Synced")["reason"] == "ConnectionForbidden"
        assert "spout-operator-connection-reader" in condition(obj, "Synced")["message"]
        bind_reader(stack, namespace)
        obj = wait_condition(stack, namespace, "rbac", "Ready", "True")
        assert condition(obj, "Synced")["status"] == "True"
        pachd_client.stop_pipeline(spout)  # drift repair writes status and an Event
        wait_condition(stack, namespace, "rbac", "Ready", "True")
        eventually(  # connection status written with the ServiceAccount's rights
            lambda: (
                condition(
                    json.loads(
                        kubectl(stack, "get", "pachdconnection", "team", "-n", namespace, "-o", "json")
                    ),
                    "Ready",
                ).get("status")
                == "True"
            ),
            30,
        )
        kubectl(stack, "delete", "spoutpipeline", "rbac", "-n", namespace, "--timeout=60s")
        assert pipelines(pachd_client, spout, processor) == {}
    assert "Worker watch" not in runner.output, runner.output  # the watch never had to restart
    forbidden = refusals(runner.output)
    # The only refusal is the one the test provoked, reported in status as ConnectionForbidden.
    assert all("secrets" in line or "Secret" in line for line in forbidden), forbidden


def test_cluster_connection_secret_in_the_operator_namespace(
    stack: State,
    installed: None,
    operator_env: None,
    namespace: str,
    pachd_client: Any,
    names: tuple[str, str],
) -> None:
    spout, processor = names
    name = f"sa-{namespace}"
    connection(stack, name, stack.pachds[0].address, token="unused-by-pachd", namespaces=[namespace])
    body = resource("cluster-conn", spout, processor, connectionRef={"name": name})
    try:
        with as_service_account(stack), running_operator(namespace):
            kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body))
            wait_condition(stack, namespace, "cluster-conn", "Ready", "True")
            kubectl(stack, "delete", "spoutpipeline", "cluster-conn", "-n", namespace, "--timeout=60s")
    finally:
        kubectl(stack, "delete", "clusterpachdconnection", name, check=False)
        kubectl(stack, "delete", "secret", f"{name}-token", "-n", SYSTEM_NAMESPACE, check=False)


def namespace_overlay(workdir: Path, namespace: str, pachd_namespace: str) -> Path:
    """A user's overlay that moves the operator (`namespace:`) and names pachd's namespace in
    the one place manifests/ takes it (pachd-namespace.yaml), with the knob listed last."""
    workdir.mkdir(parents=True, exist_ok=True)
    manifests = os.path.relpath(ROOT / "manifests", workdir)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": [manifests],
        "patches": [
            {
                "target": {"kind": "ConfigMap", "name": "spout-operator-pachd-namespace"},
                "patch": json.dumps([{"op": "replace", "path": "/data/namespace", "value": pachd_namespace}]),
            }
        ],
        "transformers": [f"{manifests}/pachd-namespace"],
    }
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return workdir


def rendered_objects(stack: State, path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kubectl(stack, "kustomize", str(path))) if d]


def test_pachd_namespace_is_set_in_one_place(stack: State) -> None:
    """The default install: pachd's namespace from pachd-namespace.yaml, in the workers Role,
    its binding and the Deployment's setting; the knob's ConfigMap itself is never applied."""
    objects = rendered_objects(stack, ROOT / "manifests")
    assert not [o for o in objects if o["kind"] == "ConfigMap"]
    workers = [o for o in objects if o["metadata"]["name"] == "spout-operator-workers"]
    assert sorted(o["kind"] for o in workers) == ["Role", "RoleBinding"]
    assert {o["metadata"]["namespace"] for o in workers} == {"default"}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPOUT_OPERATOR_WORKER_NAMESPACES"] == "default"


def test_namespace_overlay_keeps_rbac_whole(
    stack: State,
    installed: None,
    operator_env: None,
    namespace: str,
    pachd_client: Any,
    names: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fixtures as in the tests above, kept: a test's signature names what it needs.
    """`namespace: <ops>` over manifests/ with pachd's workers in the stack's pachd namespace
    (not `default`): every binding names the moved ServiceAccount, the workers' RBAC stays in
    pachd's namespace, and the operator, with exactly the installed rights and setting, runs a
    resource to Ready with its worker watch up (no refusal)."""
    ops = f"ops-{uuid.uuid4().hex[:6]}"
    pachd_namespace = stack.pachds[0].namespace
    assert pachd_namespace != "default"
    overlay = namespace_overlay(tmp_path / "overlay", ops, pachd_namespace)
    objects = rendered_objects(stack, overlay)
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            assert meta["name"] == ops
        elif meta["name"] == "spout-operator-workers":
            assert meta["namespace"] == pachd_namespace, obj
        elif obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert meta["namespace"] == ops, obj
        for subject in obj.get("subjects", []):
            assert subject["namespace"] == ops, obj
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    worker_namespaces = {e["name"]: e.get("value") for e in container["env"]}[
        "SPOUT_OPERATOR_WORKER_NAMESPACES"
    ]
    assert worker_namespaces == pachd_namespace
    account = f"system:serviceaccount:{ops}:spout-operator"
    spout, processor = names
    try:
        # Same cluster-scoped names as the module's install: this one takes them over, and the
        # default install is applied again below.
        kubectl(stack, "apply", "-k", str(overlay))
        # A table of rights like the parametrized one above (test_rbac_allows_only_what_the_operator_needs),
        # kept as data: each row one check, of the moved install's ServiceAccount.
        for verb, what, where, allowed in (
            ("watch", "replicationcontrollers", pachd_namespace, True),
            ("list", "pods", pachd_namespace, True),
            ("watch", "pods", ops, False),
            ("get", "secrets", ops, True),
            ("update", "leases.coordination.k8s.io", ops, True),
            ("update", "leases.coordination.k8s.io", SYSTEM_NAMESPACE, False),
            ("watch", "spoutpipelines.spout-operator.dev", namespace, True),
        ):
            assert can_i(stack, account, verb, what, where) is allowed, (verb, what, where)
        monkeypatch.setenv("SPOUT_OPERATOR_WORKER_NAMESPACES", worker_namespaces)
        kubeconfig = service_account_kubeconfig(stack, ops, "spout-operator")
        body = resource("moved", spout, processor)
        with use_kubeconfig(str(kubeconfig)), running_operator(namespace) as runner:
            kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body))
            wait_condition(stack, namespace, "moved", "Ready", "True")
            kubectl(stack, "delete", "spoutpipeline", "moved", "-n", namespace, "--timeout=60s")
            assert pipelines(pachd_client, spout, processor) == {}
        assert "Worker watch" not in runner.output, runner.output
        assert not refusals(runner.output), runner.output
    finally:
        kubectl(stack, "delete", "namespace", ops, "--wait=false", "--ignore-not-found", check=False)
        for kind in ("rolebinding", "role"):
            kubectl(
                stack,
                "delete",
                kind,
                "spout-operator-workers",
                "-n",
                pachd_namespace,
                "--ignore-not-found",
                check=False,
            )
        kubectl(stack, "apply", "-k", str(ROOT / "manifests"))


def test_undeploy_with_live_spoutpipelines_finishes_in_bounded_time(
    stack: State,
    installed: None,
    operator_env: None,
    namespace: str,
    pachd_client: Any,
) -> None:
    """`make undeploy` with SpoutPipelines still there and the operator running: each one's
    pipelines go or stay as its deletionPolicy says, and then the connections, the operator and
    the CRDs go too, within the target's bound, with no CRD left Terminating. (Last in this
    module: it removes what `installed` made, and the session's CRDs, then puts those back.)"""
    both = DeleteAndOrphan.fresh()
    bound_s = 90
    try:
        with as_service_account(stack), running_operator(namespace):
            both.apply_ready(stack, namespace)
            started = time.monotonic()
            result = subprocess.run(
                ["make", "--no-print-directory", "undeploy", f"UNDEPLOY_TIMEOUT={bound_s}s"],
                cwd=ROOT,
                env={**os.environ, "KUBECONFIG": stack.kubeconfig},
                capture_output=True,
                text=True,
                timeout=3 * bound_s + 60,
                check=False,
            )
            elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stdout + result.stderr
        # One bound for the SpoutPipelines, one for the rest (the namespace's deletion).
        assert elapsed < 2 * bound_s, elapsed
        for plural in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
            answer = kubectl(stack, "get", "crd", f"{plural}.spout-operator.dev", check=False)
            assert "NotFound" in answer, answer
        assert "NotFound" in kubectl(stack, "get", "namespace", SYSTEM_NAMESPACE, check=False)
        both.assert_as_declared(pachd_client)
    finally:
        both.remove(pachd_client)
        # The session's CRDs, operator namespace and default connection, as its fixtures made them.
        install_crds(stack)
        eventually(
            lambda: "NotFound" in kubectl(stack, "get", "namespace", OPERATOR_NAMESPACE, check=False), 60
        )
        kubectl(stack, "create", "namespace", OPERATOR_NAMESPACE, check=False)
        install_default_connection(stack, stack.pachds[0].address)
