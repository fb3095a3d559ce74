"""Connections against the real stack: where tokens go, what tenants can get out, rotation,
and deletion that never wedges (issue 12).

Fake pachds (tests/integration/fake_pachd.py) are gRPC servers on 127.0.0.1 that record the
metadata of every call: they show which token reached which address.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack.stack import State
from devstack.testing import counted, eventually, kubectl
from fake_pachd import FakePachd
from kit import (
    CONNECTION_CHECK_S,
    DRIFT_INTERVAL_S,
    OPERATOR_NAMESPACE,
    apply,
    condition,
    connection,
    passes,
    pipelines,
    ready_message,
    resource,
    running_operator,
    scrape,
    secret,
    wait_condition,
    wait_gone,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PPS = "/pps_v2.API/"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def cluster_connections(stack: State) -> Iterator[list[str]]:
    """Names of ClusterPachdConnections a test creates; deleted after it (they outlive namespaces)."""
    created: list[str] = []
    try:
        yield created
    finally:
        for name in created:
            kubectl(stack, "delete", "clusterpachdconnection", name, "--ignore-not-found", check=False)
            kubectl(stack, "delete", "secret", f"{name}-token", "-n", OPERATOR_NAMESPACE, check=False)


def get_connection(stack: State, name: str, namespace: str | None = None) -> dict[str, Any]:
    kind = "pachdconnection" if namespace else "clusterpachdconnection"
    where = ["-n", namespace] if namespace else []
    return dict(json.loads(kubectl(stack, "get", kind, name, *where, "-o", "json")))


def wait_connection(
    stack: State, name: str, status: str, namespace: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_connection(stack, name, namespace)
        ready = condition(obj, "Ready")
        if ready.get("status") == status and (reason is None or ready.get("reason") == reason):
            return obj
        return None

    found: dict[str, Any] = eventually(check, 60, what=f"connection {name} Ready={status} {reason or ''}")
    return found


def ref(name: str, kind: str = "ClusterPachdConnection") -> dict[str, Any]:
    return {"connectionRef": {"kind": kind, "name": name}}


def everything_visible(stack: State, namespace: str) -> str:
    """What anyone who may read the namespace's objects (not its Secrets) can see."""
    return "\n".join(
        kubectl(stack, *args, "-o", "json")
        for args in (
            ("get", "spoutpipelines,pachdconnections,events", "-n", namespace),
            ("get", "clusterpachdconnections"),
        )
    )


def test_connections_report_ready_with_version_and_auth(
    stack: State, namespace: str, operator_env: None, crd: None
) -> None:
    token = unique("tok-ready")
    with FakePachd(accepted_token=token) as fake, cluster_connections(stack) as created:
        good, bad = unique("good"), unique("bad")
        created += [good, bad]
        connection(stack, good, fake.address, token=token, namespaces=[namespace])
        connection(stack, bad, fake.address, token="not-" + token, namespaces=[namespace])
        with running_operator(namespace):
            obj = wait_connection(stack, good, "True")
            assert obj["status"]["pachdVersion"] == "2.6.0"
            assert "token accepted as robot:fake" in condition(obj, "Ready")["message"]
            wait_connection(stack, bad, "False", reason="AuthRejected")
            real = wait_connection(stack, "default", "True")  # the stack's pachd, auth off
            # (pachd built from source without release flags calls itself 0.0.0)
            assert real["status"]["pachdVersion"]
            assert "auth is off" in condition(real, "Ready")["message"]
            table = kubectl(stack, "get", "clusterpachdconnections", good)
            assert table.split("\n")[0].split() == [
                "NAME",
                "ADDRESS",
                "NAMESPACES",
                "READY",
                "VERSION",
                "AGE",
            ]
    # kubectl explain teaches the new kinds and the reference that replaced spec.pachd.
    assert "operator's own namespace only" in kubectl(stack, "explain", "clusterpachdconnection")
    assert "pachd-auth-token=true" in kubectl(stack, "explain", "pachdconnection.spec.authTokenSecretRef")
    assert "ClusterPachdConnection named" in kubectl(stack, "explain", "spoutpipeline.spec.connectionRef")


def test_connection_ready_follows_its_secret_on_the_schedule(
    stack: State, namespace: str, operator_env: None, crd: None
) -> None:
    """Checked on a schedule, not only when the connection changes: a Secret created, or a
    token rotated, after the connection shows in its Ready within a check or two."""
    token = unique("tok-schedule")
    with FakePachd(accepted_token=token) as fake:
        body = connection(stack, "later", fake.address, namespace=namespace)
        body["spec"]["authTokenSecretRef"] = {"name": "later-token"}
        kubectl(stack, "apply", "-f", "-", input=json.dumps(body))
        with running_operator(namespace):
            obj = wait_connection(stack, "later", "False", namespace, reason="ConnectionSecretNotFound")
            assert "Secret later-token (key auth-token)" in condition(obj, "Ready")["message"]
            label = {"spout-operator.dev/pachd-auth-token": "true"}
            secret(stack, namespace, "later-token", {"auth-token": token}, label)
            wait_connection(stack, "later", "True", namespace)
            secret(stack, namespace, "later-token", {"auth-token": "revoked-" + token}, label)
            obj = wait_connection(stack, "later", "False", namespace, reason="AuthRejected")
            assert token not in json.dumps(obj)


def test_token_reaches_only_its_connections_address(
    stack: State, namespace: str, operator_env: None, crd: None, names: tuple[str, str], pachd_client: Any
) -> None:
    """Each token reaches its own connection's address and no other; a namespace a cluster
    connection does not allow gets a clear status and nothing goes to that pachd; no token
    shows in statuses, Events, metrics or the operator's log."""
    spout, processor = names
    tokens = {key: unique(f"secret-token-{key}") for key in ("a", "b", "c")}
    with (
        FakePachd(tokens["a"]) as a,
        FakePachd(tokens["b"]) as b,
        FakePachd(tokens["c"]) as c,
        cluster_connections(stack) as created,
    ):
        conn_a, conn_c = unique("conn-a"), unique("conn-c")
        created += [conn_a, conn_c]
        connection(stack, conn_a, a.address, token=tokens["a"], namespaces=[namespace])
        connection(stack, "conn-b", b.address, namespace=namespace, token=tokens["b"])
        connection(stack, conn_c, c.address, token=tokens["c"], namespaces=["some-other-namespace"])
        with running_operator(namespace) as runner:
            apply(stack, namespace, resource("pa", "pa-s", "pa-p", **ref(conn_a)))
            apply(stack, namespace, resource("pb", "pb-s", "pb-p", **ref("conn-b", "PachdConnection")))
            apply(stack, namespace, resource("pc", "pc-s", "pc-p", **ref(conn_c)))
            apply(stack, namespace, resource("pd", spout, processor))  # the default connection
            for name in ("pa", "pb"):  # the fakes serve no pipelines
                obj = wait_condition(stack, namespace, name, "Synced", "False")
                assert condition(obj, "Synced")["reason"] == "PachdUnavailable"
            obj = wait_condition(stack, namespace, "pc", "Synced", "False")
            assert condition(obj, "Synced")["reason"] == "ConnectionNotAllowed"
            assert f"does not allow namespace {namespace}" in condition(obj, "Synced")["message"]
            wait_condition(stack, namespace, "pd", "Ready", "True")
            eventually(
                lambda: (
                    any(call.method.startswith(PPS) for call in a.calls + b.calls)
                    and len({call.method for call in a.calls + b.calls if call.method.startswith(PPS)}) > 0
                ),
                30,
                what="pipeline calls at both fakes",
            )
            passes(2 * 4, trigger="drift")  # two sweeps over the four: calls to look at
            assert a.tokens() == {tokens["a"]}
            assert b.tokens() == {tokens["b"]}
            assert c.tokens() <= {tokens["c"]}  # its own connection check, nothing else
            assert not [call for call in c.calls if call.method.startswith(PPS)]
            visible = everything_visible(stack, namespace) + json.dumps(scrape())
            kubectl(stack, "delete", "spoutpipelines", "--all", "-n", namespace, "--timeout=60s")
        output = runner.output
    for token in tokens.values():
        assert token not in visible
        assert token not in output
    assert pipelines(pachd_client, spout, processor) == {}


def test_rotated_token_is_used_from_the_next_pass(
    stack: State, namespace: str, operator_env: None, crd: None
) -> None:
    old, new = unique("tok-old"), unique("tok-new")
    with FakePachd(old) as fake, cluster_connections(stack) as created:
        name = unique("rotating")
        created.append(name)
        connection(stack, name, fake.address, token=old, namespaces=[namespace])
        with running_operator(namespace):
            apply(stack, namespace, resource("rot", "rot-s", "rot-p", **ref(name)))
            wait_connection(stack, name, "True")
            eventually(lambda: any(c.method.startswith(PPS) for c in fake.calls), 30, what="pipeline calls")
            fake.accepted_token = new
            secret(
                stack,
                OPERATOR_NAMESPACE,
                f"{name}-token",
                {"auth-token": new},
                {"spout-operator.dev/pachd-auth-token": "true"},
            )
            rotated_at = len(fake.calls)
            eventually(
                lambda: any(c.token == new and c.method.startswith(PPS) for c in fake.calls[rotated_at:]),
                3 * DRIFT_INTERVAL_S + 5,
                what="the new token on pipeline calls",
            )
            first_new = next(i for i, c in enumerate(fake.calls) if c.token == new)
            passes(2, trigger="drift")  # two more sweeps
            # From the pass that read the new Secret on, only the new token is sent.
            assert {c.token for c in fake.calls[first_new:]} == {new}
            obj = wait_connection(stack, name, "True")  # and the check accepts it
            assert "robot:fake" in condition(obj, "Ready")["message"]
            kubectl(stack, "delete", "spoutpipelines", "--all", "-n", namespace, "--timeout=60s")


def test_tenant_cannot_get_a_secret_value_out(
    stack: State, namespace: str, operator_env: None, crd: None, names: tuple[str, str], pachd_client: Any
) -> None:
    """A tenant who may manage SpoutPipelines but not read Secrets cannot make the operator
    send a Secret of the namespace anywhere: SpoutPipelines carry no address or Secret, tenants
    cannot create connections, and a connection (even one an admin got wrong) sends only a
    Secret marked as a pachd token."""
    spout, processor = names
    value = unique("db-password-value")
    tenant = unique("tenant")
    kubectl(stack, "apply", "-n", OPERATOR_NAMESPACE, "-f", str(ROOT / "manifests" / "rbac.yaml"))
    kubectl(
        stack,
        "create",
        "rolebinding",
        "tenant-edit",
        "-n",
        namespace,
        "--clusterrole=spout-operator-edit",
        f"--user={tenant}",
    )
    secret(stack, namespace, "db-password", {"auth-token": value, "password": value})

    def as_tenant(*args: str, input: str | None = None) -> str:
        return kubectl(stack, "--as", tenant, *args, input=input, check=False)

    with FakePachd() as fake, running_operator(namespace):
        assert "Forbidden" in as_tenant("get", "secret", "db-password", "-n", namespace)
        assert "yes" in as_tenant("auth", "can-i", "create", "spoutpipelines", "-n", namespace)
        # No connection of the tenant's own:
        leaky = {
            "apiVersion": "spout-operator.dev/v1alpha1",
            "kind": "PachdConnection",
            "metadata": {"name": "mine", "namespace": namespace},
            "spec": {
                "address": fake.address,
                "authTokenSecretRef": {"name": "db-password"},
                "policy": {"projects": {"allowDefault": True}},
            },
        }
        assert "Forbidden" in as_tenant("apply", "-f", "-", input=json.dumps(leaky))
        # No address or Secret on a SpoutPipeline: refused, and pruned if forced through.
        old_style = resource("sneaky", spout, processor)
        old_style["spec"]["pachd"] = {"address": fake.address, "authTokenSecretRef": {"name": "db-password"}}
        refused = as_tenant("apply", "-n", namespace, "-f", "-", input=json.dumps(old_style))
        assert 'unknown field "spec.pachd"' in refused
        as_tenant("apply", "-n", namespace, "--validate=false", "-f", "-", input=json.dumps(old_style))
        obj = wait_condition(stack, namespace, "sneaky", "Ready", "True")  # on the default connection
        assert "pachd" not in obj["spec"]
        # An admin's mistake: a connection that names a Secret not marked as a pachd token.
        leaky["metadata"]["name"] = "admin-made"
        kubectl(stack, "apply", "-f", "-", input=json.dumps(leaky))
        as_tenant(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps(resource("via-admin", "va-s", "va-p", **ref("admin-made", "PachdConnection"))),
        )
        obj = wait_condition(stack, namespace, "via-admin", "Synced", "False")
        assert condition(obj, "Synced")["reason"] == "ConnectionSecretNotLabeled"
        wait_connection(stack, "admin-made", "False", namespace, reason="ConnectionSecretNotLabeled")
        # Checks and sweeps that might dial: a whole round of connection checks (each round
        # asks the session's pachd, `default`, its version: two more calls span one) and two
        # sweeps over the two resources.
        counted(scrape, "spout_operator_pachd_calls_total", 2, 30 * CONNECTION_CHECK_S, method="GetVersion")
        passes(2 * 2, trigger="drift")
        visible = as_tenant("get", "spoutpipelines,pachdconnections,events", "-n", namespace, "-o", "json")
        assert "spoutpipeline" in visible.lower()
        kubectl(stack, "delete", "spoutpipelines", "--all", "-n", namespace, "--timeout=60s")
    assert fake.calls == []  # nothing at all reached the tenant's chosen address
    assert value not in visible
    assert pipelines(pachd_client, spout, processor) == {}


def test_nothing_created_means_deletion_at_once(
    stack: State, namespace: str, operator_env: None, crd: None
) -> None:
    """Never reachable, not allowed, connection missing: nothing was created, so nothing
    holds the deletion (the finalizer used to retry forever)."""
    with cluster_connections(stack) as created:
        closed = unique("closed")
        created.append(closed)
        connection(stack, closed, "grpc://127.0.0.1:9", namespaces=["some-other-namespace"])
        connection(stack, "dead", "grpc://127.0.0.1:9", namespace=namespace)
        with running_operator(namespace):
            cases = {
                "unreachable": (ref("dead", "PachdConnection"), "PachdUnavailable"),
                "not-allowed": (ref(closed), "ConnectionNotAllowed"),
                "no-connection": (ref("missing", "PachdConnection"), "ConnectionNotFound"),
            }
            for name, (connection_ref, _) in cases.items():
                apply(stack, namespace, resource(name, f"{name}-s", f"{name}-p", **connection_ref))
            for name, (_, reason) in cases.items():
                obj = wait_condition(stack, namespace, name, "Synced", "False")
                assert condition(obj, "Synced")["reason"] == reason
                assert "managed" not in obj["status"]
            started = time.monotonic()
            kubectl(stack, "delete", "spoutpipelines", *cases, "-n", namespace, "--timeout=30s")
            assert time.monotonic() - started < 20


def test_gone_token_secret_reports_and_orphan_lets_go(
    stack: State, namespace: str, operator_env: None, crd: None, names: tuple[str, str], pachd_client: Any
) -> None:
    spout, processor = names
    connection(stack, "with-secret", stack.pachds[0].address, namespace=namespace, token="unused-by-pachd")
    with running_operator(namespace):
        apply(stack, namespace, resource("kept", spout, processor, **ref("with-secret", "PachdConnection")))
        assert wait_condition(stack, namespace, "kept", "Ready", "True")["status"]["managed"]
        kubectl(stack, "delete", "secret", "with-secret-token", "-n", namespace)
        kubectl(stack, "delete", "spoutpipeline", "kept", "-n", namespace, "--wait=false")
        message = ready_message(
            stack, namespace, "kept", "not found", what="deletion reports the missing Secret"
        )
        assert "Secret with-secret-token" in message and "deletionPolicy: Orphan" in message
        kubectl(
            stack,
            "patch",
            "spoutpipeline",
            "kept",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"deletionPolicy": "Orphan"}}),
        )
        wait_gone(stack, namespace, "kept", 30, what="resource gone with Orphan")
    assert set(pipelines(pachd_client, spout, processor)) == {spout, processor}  # left, as declared


def test_namespace_with_pipelines_connections_and_secrets_deletes_cleanly(
    stack: State, operator_env: None, crd: None, names: tuple[str, str], pachd_client: Any
) -> None:
    spout, processor = names
    namespace = unique("doomed")
    kubectl(stack, "create", "namespace", namespace)
    try:
        connection(stack, "local", stack.pachds[0].address, namespace=namespace, token="unused-by-pachd")
        connection(stack, "dead", "grpc://127.0.0.1:9", namespace=namespace)
        secret(stack, namespace, "unrelated", {"x": "y"})
        with running_operator(namespace):
            apply(stack, namespace, resource("live", spout, processor, **ref("local", "PachdConnection")))
            apply(stack, namespace, resource("never", "nv-s", "nv-p", **ref("dead", "PachdConnection")))
            wait_condition(stack, namespace, "live", "Ready", "True")
            wait_condition(stack, namespace, "never", "Synced", "False")
            started = time.monotonic()
            kubectl(stack, "delete", "namespace", namespace, "--timeout=120s")
            assert "NotFound" in kubectl(stack, "get", "namespace", namespace, check=False)
            assert time.monotonic() - started < 90
    finally:
        kubectl(stack, "delete", "namespace", namespace, "--wait=false", check=False)
