"""What the integration tests share besides fixtures (those are in conftest.py): constants,
resource bodies, kubectl and pachd look-ups, and the operator run in-process."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devstack import metrics
from devstack.stack import State, free_port
from devstack.testing import eventually, kubectl
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
    image = "ghcr.io/spout-operator/spout101:0.1.0"
    return {
        "apiVersion": "spout-operator.dev/v1alpha1",
        "kind": "SpoutPipeline",
        "metadata": {"name": name},
        "spec": {
            "spout": {
                "name": spout,
                "transform": {"image": image, "cmd": ["python", "-m", "spout101.consumer"]},
            },
            "processor": {
                "name": processor,
                "transform": {"image": image, "cmd": ["python", "-m", "spout101.processor"]},
            },
            **spec,
        },
    }


def apply(stack: State, namespace: str, body: dict[str, Any]) -> str:
    return kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body))


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
