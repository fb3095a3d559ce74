"""TLS to a real pachd (issue 25): the stack's TLS pachd serves a certificate signed by a CA the
stack made (tests/devstack/pachd_tls.py). A connection that trusts that CA, from a ConfigMap or
a Secret, reaches it: its SpoutPipeline becomes Ready and its pipelines exist in that pachd. One
that does not trust it (the system's roots, or another CA) is refused with the verification
failure named in status, and nothing reaches pachd; neither does a plain-text address to the
TLS port, nor a TLS address to a port that would have answered in plain text (no fallback).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import python_pachyderm
from devstack import pachd_tls
from devstack.stack import Pachd, State
from devstack.testing import eventually, kubectl
from kit import (
    apply,
    apply_ready,
    condition,
    connection,
    get,
    pipelines,
    resource,
    running_operator,
    wait_gone,
)

pytestmark = pytest.mark.integration

# What gRPC (1.x, BoringSSL) says: the server's chain leads to no trusted root; a TLS handshake
# with a server that does not speak TLS; a TLS server closing a plain-text connection.
VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"
HANDSHAKE_FAILED = "Tls handshake failed"
SOCKET_CLOSED = "Socket closed"


@pytest.fixture
def tls_client(stack: State, tls_pachd: Pachd) -> Any:
    """A client of the TLS pachd trusting its CA, to look at what the operator did there."""
    return python_pachyderm.Client(
        tls_pachd.host, tls_pachd.port, tls=True, root_certs=Path(stack.tls_ca).read_bytes()
    )


@pytest.fixture
def tls_names(tls_client: Any, names: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """`names`, and whatever is left of them in the TLS pachd removed after the test (16 at most)."""
    yield names
    spout, processor = names
    left = [p.pipeline for p in tls_client.list_pipeline() if p.pipeline.name.startswith((spout, processor))]
    for pipeline in sorted(left, key=lambda p: not p.name.startswith(processor)):
        tls_client.delete_pipeline(pipeline.name, force=True, project_name=pipeline.project.name or "default")


def config_map(stack: State, namespace: str, name: str, data: dict[str, str]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }
    kubectl(stack, "apply", "-f", "-", input=json.dumps(body))


def ca_secret(stack: State, namespace: str, name: str, pem: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"ca.crt": pem},
    }
    kubectl(stack, "apply", "-f", "-", input=json.dumps(body))


def connection_ready(stack: State, namespace: str, name: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = json.loads(kubectl(stack, "get", "pachdconnection", name, "-n", namespace, "-o", "json"))
        ready = condition(obj, "Ready")
        return ready if ready.get("status") == status else None

    found: dict[str, Any] = eventually(check, 60, what=f"connection {name} Ready={status}")
    return found


def synced_false(stack: State, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        synced = condition(get(stack, namespace, name), "Synced")
        return synced if synced.get("status") == "False" else None

    found: dict[str, Any] = eventually(check, 60, what=f"{name} Synced=False")
    return found


def test_the_tls_pachd_serves_tls_only_from_a_root_of_its_own(stack: State, tls_pachd: Pachd) -> None:
    """What the tests below rely on: pachd serves TLS on its port with the stack's certificate,
    read from /pachd-tls-cert in its own mount namespace, which the machine never sees."""
    ca = Path(stack.tls_ca).read_bytes()
    trusted = python_pachyderm.Client(tls_pachd.host, tls_pachd.port, tls=True, root_certs=ca)
    assert trusted.inspect_cluster().id
    plain = python_pachyderm.Client(tls_pachd.host, tls_pachd.port)
    with pytest.raises((grpc.RpcError, ConnectionError)):
        plain.inspect_cluster()
    # Its peer port (what pachd dials itself on) stays plain text: the no-fallback test uses it.
    assert python_pachyderm.Client(tls_pachd.host, tls_pachd.peer_port).inspect_cluster().id

    assert not Path(pachd_tls.CERT_DIR).exists(), "the machine's root filesystem is untouched"
    assert not pachd_tls.mounts_mentioning(stack.root, pachd_tls.CERT_DIR), "no mount on the machine"
    own = Path(f"/proc/{tls_pachd.pid}")
    assert os.readlink(own / "ns" / "mnt") != os.readlink("/proc/self/ns/mnt")
    assert (own / "ns" / "net").stat().st_ino == Path("/run/netns", tls_pachd.netns).stat().st_ino
    served = (own / "root" / pachd_tls.CERT_DIR.lstrip("/") / pachd_tls.CERT_FILE).read_bytes()
    assert served == (Path(stack.tls_ca).parent / pachd_tls.CERT_FILE).read_bytes()


@pytest.mark.parametrize("ca_from", ["caConfigMapRef", "caSecretRef"])
def test_a_connection_trusting_the_ca_reaches_the_tls_pachd(
    stack: State,
    tls_pachd: Pachd,
    tls_client: Any,
    tls_names: tuple[str, str],
    pachd_client: Any,
    operator: Any,
    namespace: str,
    ca_from: str,
) -> None:
    spout, processor = tls_names
    pem = Path(stack.tls_ca).read_text()
    if ca_from == "caConfigMapRef":
        config_map(stack, namespace, "pachd-ca", {"ca.crt": pem})
    else:
        ca_secret(stack, namespace, "pachd-ca", pem)
    assert tls_pachd.address.startswith("grpcs://")
    connection(stack, "tls", tls_pachd.address, namespace=namespace, tls={ca_from: {"name": "pachd-ca"}})
    ready = connection_ready(stack, namespace, "tls", "True")
    assert "auth is off" in ready["message"], ready  # pachd's own answer, over TLS

    ref = {"connectionRef": {"kind": "PachdConnection", "name": "tls"}}
    apply_ready(stack, namespace, resource("over-tls", spout, processor, **ref))
    found = pipelines(tls_client, spout, processor)
    assert set(found) == {spout, processor}
    assert not pipelines(pachd_client, spout, processor), "not in the stack's plain-text pachd"
    assert {p.pipeline.project.name or "default" for p in found.values()} == {"default"}

    kubectl(stack, "delete", "spoutpipeline", "over-tls", "-n", namespace, "--wait=false")
    wait_gone(stack, namespace, "over-tls", 60, "the SpoutPipeline deleted through the TLS connection")
    assert not pipelines(tls_client, spout, processor), "deleted in the TLS pachd too"


def test_without_its_ca_or_over_plain_text_the_tls_pachd_is_refused(
    stack: State,
    tls_pachd: Pachd,
    tls_client: Any,
    tls_names: tuple[str, str],
    crd: None,
    operator_env: None,
    namespace: str,
) -> None:
    """Each connection is refused with its reason in status, and nothing reaches pachd."""
    spout, processor = tls_names
    # Plain text is served on pachd's peer port: a client that fell back to it would succeed.
    assert python_pachyderm.Client(tls_pachd.host, tls_pachd.peer_port).inspect_cluster().id
    plain_text = f"grpc://{tls_pachd.host}:{tls_pachd.port}"
    peer = f"grpcs://{tls_pachd.host}:{tls_pachd.peer_port}"  # plain text would have been served
    kube_ca = Path(stack.root, "pki", "ca.crt").read_text()  # a CA, but not the one that signed pachd's
    config_map(stack, namespace, "other-ca", {"ca.crt": kube_ca})
    config_map(stack, namespace, "pachd-ca", {"ca.crt": Path(stack.tls_ca).read_text()})
    cases = {
        "no-ca": (tls_pachd.address, {}),  # the system's roots
        "other-ca": (tls_pachd.address, {"tls": {"caConfigMapRef": {"name": "other-ca"}}}),
        "plain": (plain_text, {}),
        "no-fallback": (peer, {"tls": {"caConfigMapRef": {"name": "pachd-ca"}}}),
    }
    for name, (address, spec) in cases.items():
        connection(stack, name, address, namespace=namespace, **spec)
    with running_operator(namespace):
        for i, name in enumerate(cases):
            ref = {"connectionRef": {"kind": "PachdConnection", "name": name}}
            apply(stack, namespace, resource(name, f"{spout}-{i}", f"{processor}-{i}", **ref))
        seen = {}
        for name in cases:
            seen[name] = (
                connection_ready(stack, namespace, name, "False"),
                synced_false(stack, namespace, name),
            )
    for name in ("no-ca", "other-ca"):
        ready, synced = seen[name]
        assert ready["reason"] == "Unreachable" and VERIFY_FAILED in ready["message"], ready
        assert synced["reason"] == "PachdUnavailable" and VERIFY_FAILED in synced["message"], synced
    # Plain text to the TLS port: pachd closes the connection (no TLS handshake was attempted).
    ready, synced = seen["plain"]
    assert ready["reason"] == "Unreachable" and SOCKET_CLOSED in ready["message"], ready
    assert synced["reason"] == "PachdUnavailable" and SOCKET_CLOSED in synced["message"], synced
    # TLS to the plain-text port: the handshake fails and the operator does not try plain text.
    ready, synced = seen["no-fallback"]
    assert ready["reason"] == "Unreachable" and HANDSHAKE_FAILED in ready["message"], ready
    assert synced["reason"] == "PachdUnavailable" and HANDSHAKE_FAILED in synced["message"], synced
    assert not [p for p in tls_client.list_pipeline() if p.pipeline.name.startswith((spout, processor))]
