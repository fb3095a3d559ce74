"""Shared by the fault tier (its fixtures are in conftest.py).

The fault tier: the operator as a subprocess (devstack.testing.OperatorProcess: it can be
SIGKILLed, SIGSTOPped, SIGTERMed), against the session's real stack, whose components the
tests kill, freeze and restart by PID (devstack.Stack.kill / signal / restart).

Every test restores what it broke before it ends, so the tests after it find the stack whole.
Figures (recovery times, failover, shutdown) are printed and added to
bench-results/faults.json; bounds asserted are the issue's contracts, with the waits generous.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import kubernetes
import python_pachyderm
from devstack.stack import State
from devstack.testing import spout_pipeline

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE_ADDRESS = "grpc://127.0.0.1:9"  # nothing answers there
UNREACHABLE = "unreachable"  # the ClusterPachdConnection on that address
GROUP, VERSION, PLURAL = "spout-operator.dev", "v1alpha1", "spoutpipelines"
FIGURES_FILE = ROOT / "bench-results" / "faults.json"


def figure(name: str, value: Any) -> None:
    """Print a measured figure and keep it in bench-results/faults.json (latest run wins)."""
    print(f"FIGURE {name} = {value}", flush=True)
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
    figures[name] = value
    FIGURES_FILE.write_text(json.dumps(figures, indent=2))


class Api:
    """SpoutPipelines of one namespace through the API (kubectl is too slow for bursts)."""

    def __init__(self, state: State, namespace: str) -> None:
        client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)  # type: ignore[no-untyped-call]
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def items(self) -> list[dict[str, Any]]:
        found: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, _request_timeout=10
        )
        return list(found["items"])

    def get(self, name: str) -> dict[str, Any]:
        found: Any = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=10
        )
        return dict(found)

    def strip_finalizers(self) -> None:
        for obj in self.items():
            with contextlib.suppress(kubernetes.client.ApiException):
                self.patch(obj["metadata"]["name"], {"metadata": {"finalizers": None}})


def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    current = status.get("observedGeneration") == obj["metadata"].get("generation")
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return current and conditions.get("Ready") == "True"


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def body(
    name: str, prefix: str, address: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if address is not None:  # through the connection of that name
        spec = {
            "connectionRef": {"kind": "ClusterPachdConnection", "name": address},
            "deletionPolicy": "Orphan",
        }
    return spout_pipeline(name, f"{prefix}-{name}-s", f"{prefix}-{name}-p", processor_env=env or {}, **spec)


class Pachd:
    def __init__(self, state: State, index: int = 0) -> None:
        self.host, self.port = state.pachds[index].host, state.pachds[index].port

    def pipelines(self, prefix: str) -> dict[str, Any]:
        client = python_pachyderm.Client(self.host, self.port)
        return {
            p.pipeline.name: p
            for p in client.list_pipeline(details=True)
            if str(p.pipeline.name).startswith(prefix)
        }

    def delete_prefix(self, prefix: str) -> None:
        client = python_pachyderm.Client(self.host, self.port)
        for name in sorted(self.pipelines(prefix), key=lambda n: not n.endswith("-p")):
            with contextlib.suppress(Exception):
                client.delete_pipeline(name, force=True)
