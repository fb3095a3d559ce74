"""End to end, issue 24: upgrading the operator restarts nothing.

The previous release (the CHANGELOG's 0.1.0, built here from its commit) runs as pods on the
node, installed as its users installed it: kustomize in one test, Helm in the other. spout101
runs with messages flowing. The operator is then upgraded to this tree's the same way, following
the CHANGELOG's "Upgrading from 0.1.0". Afterwards no pipeline version moved, no worker pod was
replaced or restarted, messages kept flowing, and every status converged under the new operator.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack import build, images
from devstack.stack import State
from devstack.testing import PREVIOUS_RELEASE, PREVIOUS_VERSION, previous_tree
from nodefixtures import (
    ROOT,
    kubectl,
    kubectl_json,
    node_prerequisites,
    node_stack,
    pachd_address_for_pods,
    pachd_client,
    sample,
    wait_for,
)

__all__ = ["node_prerequisites", "node_stack"]

pytestmark = pytest.mark.e2e

SYSTEM_NAMESPACE = "spout-operator-system"  # 0.1.0's kustomize install names it
HELM_NAMESPACE = "spout-upgrade"
PACHD_NAMESPACE = "pachyderm"
SHIPPED_ADDRESS = "grpc://pachd.default.svc.cluster.local:30650"


def replaced(path: Path, old: str, new: str, count: int) -> None:
    text = path.read_text()
    assert text.count(old) == count, (path, old)
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def previous_image(node_stack: State) -> str:
    """The previous release's operator image, in the node's containerd."""
    image = images.previous_operator(PREVIOUS_RELEASE, PREVIOUS_VERSION)
    images.build_image(image)
    assert node_stack.node is not None
    images.import_all(
        node_stack.node.containerd_socket, [image], Path(node_stack.root) / "logs" / "import.log"
    )
    return image.ref


@dataclass(frozen=True)
class Running:
    """What must not move across an upgrade."""

    versions: dict[str, int]  # pipeline -> pachd's version
    pods: dict[str, tuple[str, int]]  # worker pod -> (uid, restarts)


def running(state: State, client: Any, pipelines: tuple[str, ...]) -> Running:
    versions = {name: int(next(iter(client.inspect_pipeline(name))).version) for name in pipelines}
    pods = kubectl_json(
        state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", f"pipelineName in ({','.join(pipelines)})"
    )
    return Running(
        versions,
        {
            p["metadata"]["name"]: (
                p["metadata"]["uid"],
                sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", [])),
            )
            for p in pods["items"]
        },
    )


def conditions(state: State, namespace: str, name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    obj = kubectl_json(state, "get", "spoutpipeline", name, "-n", namespace)
    return obj, {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def ready(state: State, namespace: str, name: str) -> Callable[[], dict[str, Any] | None]:
    """Ready=True for the resource's current generation."""

    def check() -> dict[str, Any] | None:
        obj, by_type = conditions(state, namespace, name)
        status = obj.get("status", {})
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and by_type.get("Ready", {}).get("status") == "True" else None

    return check


def spout_commits(client: Any, repo: str) -> list[str]:
    """Ids of the finished commits of `repo` that hold files, oldest first."""
    infos = [c for c in client.list_commit(repo) if c.finished.seconds]
    infos.sort(key=lambda c: (c.started.seconds, c.started.nanos))
    return [c.commit.id for c in infos if list(client.list_file((repo, c.commit.id), "/"))]


def processed(client: Any, commit_id: str) -> bool:
    """The processor finished the commit of the spout commit's id (one commit set; pachd made it,
    so its origin is AUTO, which list_commit leaves out unless asked for all)."""
    return any(
        c.commit.id == commit_id and c.finished.seconds for c in client.list_commit("processor", all=True)
    )


def flowing(state: State, client: Any, namespaces: tuple[str, ...], after: set[str], what: str) -> str:
    """A spout commit not in `after`, once the processor has finished it."""

    def new_and_processed() -> str | None:
        fresh = [c for c in spout_commits(client, "spout") if c not in after]
        return fresh[-1] if fresh and processed(client, fresh[-1]) else None

    return str(wait_for(state, what, new_and_processed, 180, namespaces))


def rolled_out(state: State, namespace: str, image: str, spaces: tuple[str, ...]) -> None:
    """Wait until the operator's Deployment in `namespace` runs `image` only."""
    ready = operator_pods_ready(state, namespace, image)
    wait_for(state, f"the operator pods on {image}", ready, 240, spaces)


def operator_pods_ready(state: State, namespace: str, image: str) -> Callable[[], bool]:
    """The operator's Deployment rolled out: every replica runs `image`, none other is left,
    and it is available (a standby replica may be unready while it waits for the Lease)."""
    label = ("-l", "app.kubernetes.io/name=spout-operator")

    def check() -> bool:
        deployments = kubectl_json(state, "get", "deployments", "-n", namespace, *label)["items"]
        pods = kubectl_json(state, "get", "pods", "-n", namespace, *label)["items"]
        if len(deployments) != 1:
            return False
        spec, status = deployments[0]["spec"], deployments[0].get("status", {})
        rolled = status.get("updatedReplicas") == status.get("replicas") == spec["replicas"]
        available = any(
            c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", [])
        )
        return (
            rolled
            and available
            and len(pods) == spec["replicas"]
            and all(p["spec"]["containers"][0]["image"] == image for p in pods)
        )

    return check


def apply_sample(state: State, namespace: str) -> tuple[str, str]:
    kubectl(state, "create", "namespace", namespace, check=False)
    body = sample((3, 5))
    kubectl(state, "apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    return body["spec"]["spout"]["name"], body["spec"]["processor"]["name"]


def flowing_before_upgrade(state: State, namespace: str, spaces: tuple[str, ...]) -> tuple[Any, Running]:
    """spout101 Ready under the previous operator, one message processed; what runs then."""
    client = pachd_client(state)
    wait_for(
        state, "spout101 Ready under the previous release", ready(state, namespace, "spout101"), 240, spaces
    )
    flowing(state, client, spaces, set(), "a message processed under the previous release")
    before = running(state, client, ("spout", "processor"))
    assert len(before.pods) == 2, before
    return client, before


def unchanged_and_flowing(
    state: State, client: Any, before: Running, namespace: str, spaces: tuple[str, ...], upgraded_at: float
) -> None:
    """After the upgrade: the status converged under the new operator (it writes dataFlow, which
    the previous release did not know), the same pipeline versions and pods, and a message
    committed after the upgrade processed."""
    seen = set(spout_commits(client, "spout"))

    def converged() -> dict[str, Any] | None:
        obj = ready(state, namespace, "spout101")()
        return obj if obj is not None and obj["status"].get("dataFlow") else None

    obj = wait_for(state, "spout101 Ready under the upgraded operator", converged, 180, spaces)
    assert obj["status"]["workers"] == "2/2", obj["status"]
    flowing(state, client, spaces, seen, "a message committed after the upgrade processed")
    after = running(state, client, ("spout", "processor"))
    assert after == before, {"before": before, "after": after}
    print(f"\n[e2e] upgraded, converged and flowing in {time.monotonic() - upgraded_at:.0f}s", flush=True)


def delete_sample(state: State, namespace: str) -> None:
    kubectl(state, "delete", "spoutpipeline", "--all", "-n", namespace, "--timeout=120s", check=False)
    kubectl(state, "delete", "namespace", namespace, "--wait=false", check=False)


def no_namespace(state: State, namespace: str) -> None:
    """`namespace` gone (earlier modules ran their operators there)."""
    kubectl(state, "delete", "namespace", namespace, "--ignore-not-found", "--timeout=180s", check=False)
    assert not kubectl(state, "get", "namespace", namespace, "--ignore-not-found", "-o", "name"), namespace


# --- kustomize --------------------------------------------------------------------------------


def previous_kustomize(state: State, workdir: Path, image: str) -> Path:
    """0.1.0's manifests as its users deployed them: pachd's namespace edited in by hand where
    that release's README said (the workers Role, its binding, the Deployment), the image set."""
    previous_tree(("manifests", "crds"), workdir)
    manifests = workdir / "manifests"
    replaced(
        manifests / "workers-rbac.yaml", "  namespace: default\n", f"  namespace: {PACHD_NAMESPACE}\n", 2
    )
    replaced(
        manifests / "deployment.yaml",
        '{name: SPOUT_OPERATOR_WORKER_NAMESPACES, value: "default"}',
        f'{{name: SPOUT_OPERATOR_WORKER_NAMESPACES, value: "{PACHD_NAMESPACE}"}}',
        1,
    )
    replaced(manifests / "connection.yaml", SHIPPED_ADDRESS, pachd_address_for_pods(state), 1)
    assert image.endswith(f":{PREVIOUS_VERSION}")
    assert 'newTag: "0.1.0"' in (manifests / "kustomization.yaml").read_text()
    return manifests


def current_kustomize(workdir: Path) -> Path:
    """This tree's manifests with pachd's namespace set in its one place."""
    for name in ("manifests", "crds"):
        shutil.copytree(ROOT / name, workdir / name)
    overlay = workdir / "overlay"
    overlay.mkdir()
    patch = [{"op": "replace", "path": "/data/namespace", "value": PACHD_NAMESPACE}]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../manifests"],
        "patches": [
            {
                "target": {"kind": "ConfigMap", "name": "spout-operator-pachd-namespace"},
                "patch": json.dumps(patch),
            }
        ],
        "transformers": ["../manifests/pachd-namespace"],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return overlay


def test_a_kustomize_upgrade_from_the_previous_release_restarts_nothing(
    node_stack: State, previous_image: str, tmp_path: Path
) -> None:
    """`kubectl apply -k` of this release over 0.1.0's. The `default` connection 0.1.0 shipped
    admits every namespace but carries no policy, so under the new operator the resource, whose
    pipelines live in pachd's `default` project, is refused (Stalled, PolicyDenied) and left
    running untouched, until the admin allows that project as the CHANGELOG says."""
    state = node_stack
    namespace = "e2e-upgrade-kustomize"
    spaces = (namespace, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    no_namespace(state, SYSTEM_NAMESPACE)
    previous = previous_kustomize(state, tmp_path / "previous", previous_image)
    current = current_kustomize(tmp_path / "current")
    try:
        kubectl(state, "apply", "-k", str(previous))
        for crd in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
            kubectl(state, "wait", "--for=condition=Established", f"crd/{crd}.spout-operator.dev")
        kubectl(state, "apply", "-f", str(previous / "connection.yaml"))
        rolled_out(state, SYSTEM_NAMESPACE, previous_image, spaces)
        apply_sample(state, namespace)
        client, before = flowing_before_upgrade(state, namespace, spaces)

        upgraded_at = time.monotonic()
        kubectl(state, "apply", "-k", str(current))
        rolled_out(state, SYSTEM_NAMESPACE, images.OPERATOR_IMAGE, spaces)

        def denied() -> dict[str, Any] | None:
            _, by_type = conditions(state, namespace, "spout101")
            stalled = by_type.get("Stalled", {})
            return stalled if stalled.get("reason") == "PolicyDenied" else None

        stalled = wait_for(state, "spout101 refused by the connection's policy", denied, 120, spaces)
        assert '"default" is not a project' in stalled["message"], stalled
        assert running(state, client, ("spout", "processor")) == before
        # The CHANGELOG's step for resources in pachd's `default` project.
        kubectl(
            state,
            "patch",
            "clusterpachdconnection",
            "default",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"policy": {"projects": {"allowDefault": True}}}}),
        )
        unchanged_and_flowing(state, client, before, namespace, spaces, upgraded_at)
    finally:
        delete_sample(state, namespace)
        kubectl(state, "delete", "-f", str(previous / "connection.yaml"), "--ignore-not-found", check=False)
        kubectl(state, "delete", "-k", str(current), "--ignore-not-found", "--timeout=180s", check=False)


# --- Helm -------------------------------------------------------------------------------------


def readme_upgrade_flags() -> list[str]:
    """The flags of the chart README's upgrade from 0.1.0, as a user copies them."""
    text = (ROOT / "manifests" / "helm" / "spout-operator" / "README.md").read_text()
    block = text.split("## Upgrade", 1)[1].split("```shell\n", 1)[1].split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "), comments=True)
    assert words[:3] == ["helm", "upgrade", "spout-operator"], words
    flags = words[4:]  # after the chart
    at = flags.index("-n")
    return flags[:at] + flags[at + 2 :]


@pytest.fixture
def helm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node_stack: State) -> list[str]:
    binary = build.program("helm").path
    if not binary.exists():
        build.build(["helm"])
    for key in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(key, str(tmp_path / key.lower()))
    return [str(binary), "--kubeconfig", node_stack.kubeconfig]


def test_a_helm_upgrade_from_the_previous_release_restarts_nothing(
    node_stack: State, previous_image: str, helm: list[str], tmp_path: Path
) -> None:
    """`helm upgrade` of 0.1.0's release to this chart with the chart README's command: values
    given at install reused, the new values' defaults taken, the CRDs taken over, and the
    connection told what 0.1.0 allowed implicitly (every namespace, pachd's `default` project)."""
    state = node_stack
    namespace = "e2e-upgrade-helm"
    spaces = (namespace, PACHD_NAMESPACE, HELM_NAMESPACE)
    release = "spout-operator"
    previous_tree(("manifests/helm/spout-operator",), tmp_path / "previous")
    old_chart = tmp_path / "previous" / "manifests" / "helm" / "spout-operator"
    assert yaml.safe_load((old_chart / "Chart.yaml").read_text())["version"] == PREVIOUS_VERSION

    def run(*args: str) -> str:
        done = subprocess.run([*helm, *args], capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        run(
            "install",
            release,
            str(old_chart),
            "-n",
            HELM_NAMESPACE,
            "--create-namespace",
            "--set",
            f"defaultConnection.address={pachd_address_for_pods(state)}",
            "--set",
            f"pachd.workerNamespaces={{{PACHD_NAMESPACE}}}",
        )
        rolled_out(state, HELM_NAMESPACE, previous_image, spaces)
        apply_sample(state, namespace)
        client, before = flowing_before_upgrade(state, namespace, spaces)

        upgraded_at = time.monotonic()
        run(
            "upgrade",
            release,
            str(ROOT / "manifests" / "helm" / "spout-operator"),
            "-n",
            HELM_NAMESPACE,
            *readme_upgrade_flags(),
        )
        rolled_out(state, HELM_NAMESPACE, images.OPERATOR_IMAGE, spaces)
        unchanged_and_flowing(state, client, before, namespace, spaces, upgraded_at)
    finally:
        delete_sample(state, namespace)
        subprocess.run(
            [*helm, "uninstall", release, "-n", HELM_NAMESPACE, "--wait"], capture_output=True, check=False
        )
        kubectl(state, "delete", "namespace", HELM_NAMESPACE, "--wait=false", check=False)
