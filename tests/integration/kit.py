"""What the integration tests share besides fixtures (those are in conftest.py): constants,
resource bodies, kubectl and pachd look-ups, and the operator run in-process."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import metrics
from devstack.stack import State, free_port
from devstack.testing import PASSES, counted, eventually, install_crds, kubectl, spout_pipeline
from python_pachyderm.proto.v2.pps import pps_pb2

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
SAMPLE = ROOT / "crds" / "samples" / "spout.yaml"
DRIFT_INTERVAL_S = 2
CONNECTION_CHECK_S = 2
OPERATOR_NAMESPACE = "spout-operator-system"  # where ClusterPachdConnections keep their Secrets
TOKEN_LABEL = {"spout-operator.dev/pachd-auth-token": "true"}
METRICS_PORT = free_port()


def connection(
    stack: State,
    name: str,
    address: str,
    namespace: str | None = None,
    token: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """Create (or replace) a connection as an admin would: a PachdConnection in `namespace`,
    else a ClusterPachdConnection; with `token`, also its labelled Secret (in `namespace`,
    else in the operator's namespace)."""
    # The tests' pipelines live in pachd's default project: a policy must grant it (the safe
    # default is a project per namespace).
    spec.setdefault("policy", {"projects": {"allowDefault": True}})
    body: dict[str, Any] = {
        "apiVersion": "spout-operator.dev/v1alpha1",
        "kind": "PachdConnection" if namespace else "ClusterPachdConnection",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
        "spec": {"address": address, **spec},
    }
    if token is not None:
        secret(stack, namespace or OPERATOR_NAMESPACE, f"{name}-token", {"auth-token": token}, TOKEN_LABEL)
        body["spec"]["authTokenSecretRef"] = {"name": f"{name}-token"}
    kubectl(stack, "apply", "-f", "-", input=json.dumps(body))
    return body


# The session's ClusterPachdConnection `default` grants pachd's default project, and a shared
# project and a Secret pachd does not have (so that pachd's own refusals can be reported).
DEFAULT_POLICY = {
    "projects": {"mode": "Shared", "names": ["no-such-project"], "allowDefault": True},
    "secrets": ["no-such-secret"],
}


def install_default_connection(stack: State, address: str) -> None:
    """The ClusterPachdConnection `default` as the session has it, open to every namespace."""
    connection(stack, "default", address, namespaceSelector={}, policy=DEFAULT_POLICY)


def secret(
    stack: State, namespace: str, name: str, data: dict[str, str], labels: dict[str, str] | None = None
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "stringData": data,
    }
    kubectl(stack, "apply", "-f", "-", input=json.dumps(body))


@contextlib.contextmanager
def running_operator(namespace: str) -> Iterator[Any]:
    import kopf
    from kopf.testing import KopfRunner

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    args = ["run", "--standalone", "--namespace", namespace, "-m", "spout_operator.handlers"]
    with KopfRunner(args, timeout=120, settings=settings) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def resource(name: str, spout: str, processor: str, **spec: Any) -> dict[str, Any]:
    return spout_pipeline(name, spout, processor, **spec)


def apply(stack: State, namespace: str, body: dict[str, Any]) -> str:
    return kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def apply_ready(stack: State, namespace: str, body: dict[str, Any], timeout_s: float = 90) -> dict[str, Any]:
    """Apply the resource and wait until it is Ready; return it then."""
    apply(stack, namespace, body)
    return wait_condition(stack, namespace, str(body["metadata"]["name"]), "Ready", "True", timeout_s)


def get(stack: State, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kubectl(stack, "get", "spoutpipeline", name, "-n", namespace, "-o", "json")))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def wait_condition(
    stack: State, namespace: str, name: str, kind: str, status: str, timeout_s: float = 90
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(stack, namespace, name)
        current = condition(obj, kind)
        return obj if current.get("status") == status else None

    result: dict[str, Any] = eventually(check, timeout_s, what=f"{name} {kind}={status}")
    return result


def ready_message(stack: State, namespace: str, name: str, containing: str, what: str) -> str:
    """Wait until the resource's Ready message says `containing`; return that message."""

    def check() -> str:
        message = str(condition(get(stack, namespace, name), "Ready").get("message", ""))
        return message if containing in message else ""

    found: str = eventually(check, 30, what=what)
    return found


def wait_gone(stack: State, namespace: str, name: str, timeout_s: float, what: str) -> None:
    eventually(
        lambda: "NotFound" in kubectl(stack, "get", "spoutpipeline", name, "-n", namespace, check=False),
        timeout_s,
        what=what,
    )


def pipelines(client: Any, *names: str) -> dict[str, Any]:
    """name -> PipelineInfo for the named pipelines that exist."""
    wanted = set(names)
    return {p.pipeline.name: p for p in client.list_pipeline(details=True) if p.pipeline.name in wanted}


def state_name(info: Any) -> str:
    return str(pps_pb2.PipelineState.Name(info.state)).removeprefix("PIPELINE_")


def versions(client: Any, *names: str) -> dict[str, int]:
    return {name: int(info.version) for name, info in pipelines(client, *names).items()}


def scrape() -> dict[str, float]:
    """The operator's Prometheus counters, by sample name with labels."""
    return metrics.scrape(METRICS_PORT)


def passes(more: int, since: dict[str, float] | None = None, **labels: str) -> dict[str, float]:
    """Wait until the in-process operator has finished `more` passes with `labels` (e.g.
    trigger="drift": its sweeps' passes) since the scrape `since` (default: now); return the
    scrape then. One per resource per sweep: two sweeps over three resources are six."""
    return counted(scrape, PASSES, more, 30 * DRIFT_INTERVAL_S + more * DRIFT_INTERVAL_S, since, **labels)


def release_strays(stack: State, namespace: str) -> None:
    """SpoutPipelines that other tests of the session left in other namespaces: their operator
    is gone, so their finalizers would never go. They are not this test's subject (a cluster's
    own operator is running when it is uninstalled): their finalizers are dropped."""
    listing = json.loads(kubectl(stack, "get", "spoutpipelines", "--all-namespaces", "-o", "json"))
    for item in listing["items"]:
        meta = item["metadata"]
        if meta["namespace"] != namespace:
            patch = ["--type=merge", "-p", '{"metadata":{"finalizers":null}}']
            kubectl(
                stack, "patch", "spoutpipeline", meta["name"], "-n", meta["namespace"], *patch, check=False
            )


def session_crds_back(stack: State) -> None:
    """The session's CRDs, operator namespace and default connection, as its fixtures made them."""
    install_crds(stack)
    kubectl(stack, "create", "namespace", OPERATOR_NAMESPACE, check=False)
    kubectl(stack, "delete", "clusterpachdconnection", "default", "--ignore-not-found", check=False)
    install_default_connection(stack, stack.pachds[0].address)


@dataclass(frozen=True)
class DeleteAndOrphan:
    """Two SpoutPipelines an uninstall must treat as each one's deletionPolicy says: `goes`
    (Delete: its pipelines go with it) and `stays` (Orphan: its pipelines stay in pachd)."""

    deleted: tuple[str, str]  # the spout and processor of `goes`
    orphaned: tuple[str, str]  # those of `stays`

    @classmethod
    def fresh(cls) -> DeleteAndOrphan:
        suffix = uuid.uuid4().hex[:6]
        return cls((f"sp-d-{suffix}", f"pr-d-{suffix}"), (f"sp-o-{suffix}", f"pr-o-{suffix}"))

    def apply_ready(self, stack: State, namespace: str) -> None:
        """Both applied and Ready under the running operator, and the session's strays
        released, so that deleting every SpoutPipeline can finish."""
        apply(stack, namespace, resource("goes", *self.deleted))
        apply(stack, namespace, resource("stays", *self.orphaned, deletionPolicy="Orphan"))
        for name in ("goes", "stays"):
            wait_condition(stack, namespace, name, "Ready", "True")
        release_strays(stack, namespace)

    def assert_as_declared(self, client: Any) -> None:
        assert pipelines(client, *self.deleted) == {}
        assert set(pipelines(client, *self.orphaned)) == set(self.orphaned)

    def remove(self, client: Any) -> None:
        """Whatever the test left in pachd, processors first."""
        for name in (*self.deleted[::-1], *self.orphaned[::-1]):
            with contextlib.suppress(Exception):
                client.delete_pipeline(name, force=True)
