"""The Helm chart (manifests/helm/spout-operator), with the real helm built from its Go
module: it lints, renders what the kustomize install holds, and installs into the local
stack, where the operator, with the installed ServiceAccount's rights and the installed
Deployment's settings, brings the sample to Ready."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack import build
from devstack.stack import State, service_account_kubeconfig
from devstack.testing import PREVIOUS_VERSION, kubectl, previous_tree, refusals, use_kubeconfig
from kit import (
    SAMPLE,
    DeleteAndOrphan,
    install_default_connection,
    pipelines,
    running_operator,
    session_crds_back,
    state_name,
    wait_condition,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "helm" / "spout-operator"
SYSTEM_NAMESPACE = "spout-operator-system"
# What both installs must agree on; the kustomize install also makes its Namespace. Its
# default connection is manifests/connection.yaml (applied once the CRDs are established).
SHARED_KINDS = {
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Deployment",
    "PodDisruptionBudget",
    "CustomResourceDefinition",
    "ClusterPachdConnection",
}
CLUSTER_KINDS = ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterPachdConnection")


@pytest.fixture(scope="session")
def helm(stack: State, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    binary = build.program("helm").path
    if not binary.exists():
        build.build(["helm"])
    home = tmp_path_factory.mktemp("helm")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            patch.setenv(key, str(home / key.lower()))  # nothing of the user's helm setup, nothing left there
        yield [str(binary), "--kubeconfig", stack.kubeconfig]


def run(args: list[str], stderr: bool = False) -> str:
    """helm's stdout, and its stderr after it unless `stderr=False` (where stdout is YAML)."""
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    # stdout only by default: helm warns on stderr for each link it follows (files/crds/).
    return result.stdout + (result.stderr if stderr else "")


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def template(helm: list[str], *args: str) -> list[dict[str, Any]]:
    args = ("template", "spout-operator", str(CHART), "-n", SYSTEM_NAMESPACE, *args)
    return documents(run([*helm, *args], stderr=False))


def essence(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what may differ between installers: labels (Helm adds its own, and
    selects by release), annotations. What selects the operator's pods is checked apart
    (`pod_selectors`): each installer's selectors must select its own pods."""
    obj = json.loads(json.dumps(obj))
    obj["metadata"].pop("labels", None)
    obj["metadata"].pop("annotations", None)
    if obj["kind"] == "Deployment":
        obj["spec"].pop("selector")
        obj["spec"]["template"]["metadata"].pop("labels")
        for constraint in obj["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            constraint.pop("labelSelector")
    if obj["kind"] == "PodDisruptionBudget":
        obj["spec"].pop("selector")
    return obj


def pod_selectors(objects: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    """The Deployment selects its pods' labels, and the PodDisruptionBudget and the spread
    constraints select exactly what the Deployment does."""
    deployment = objects[("Deployment", SYSTEM_NAMESPACE, "spout-operator")]
    selector = deployment["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector["matchLabels"] and selector["matchLabels"].items() <= labels.items()
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraints and all(c["labelSelector"] == selector for c in constraints)
    assert (
        objects[("PodDisruptionBudget", SYSTEM_NAMESPACE, "spout-operator")]["spec"]["selector"] == selector
    )


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}


def test_chart_lints(helm: list[str]) -> None:
    run([*helm, "lint", "--strict", str(CHART)])
    run([*helm, "lint", "--strict", str(CHART), "--set", "metrics.serviceMonitor.enabled=true"])
    run([*helm, "lint", "--strict", str(CHART), "--set", "crds.enabled=false,tests.enabled=false"])


def refused(helm: list[str], *args: str) -> str:
    result = subprocess.run([*helm, *args], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode != 0, result.stdout
    return result.stderr


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("replica=3", "Additional property replica is not allowed"),
        ("crds.kep=false", "Additional property kep is not allowed"),
        ("pachd.workerNamespace=pachyderm", "Additional property workerNamespace is not allowed"),
        ("crds.keep=yes", "crds.keep: Invalid type"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
    ],
)
def test_a_misspelt_or_wrong_value_fails(stack: State, helm: list[str], value: str, complaint: str) -> None:
    """values.schema.json: `helm template` and `helm install` refuse before anything is made."""
    assert complaint in refused(helm, "template", "x", str(CHART), "--set", value)
    assert complaint in refused(helm, "install", "typo", str(CHART), "-n", "default", "--set", value)
    assert "not found" in kubectl(
        stack, "get", "deployment", "typo-spout-operator", "-n", "default", check=False
    )


def test_crds_come_from_crds_and_are_kept(helm: list[str]) -> None:
    crds = {}
    for path in (ROOT / "crds").glob("*.yaml"):
        for doc in documents(path.read_text()):
            if doc.get("kind") == "CustomResourceDefinition":
                crds[doc["metadata"]["name"]] = doc
    rendered = [o for o in template(helm) if o["kind"] == "CustomResourceDefinition"]
    assert {o["metadata"]["name"] for o in rendered} == set(crds)
    for obj in rendered:
        assert obj["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert essence(obj) == essence(crds[obj["metadata"]["name"]])
    for obj in template(helm, "--set", "crds.keep=false"):
        if obj["kind"] == "CustomResourceDefinition":
            assert "annotations" not in obj["metadata"]
    assert not [
        o for o in template(helm, "--set", "crds.enabled=false") if o["kind"] == "CustomResourceDefinition"
    ]


def test_packaged_chart_holds_the_crds(helm: list[str], tmp_path: Path) -> None:
    """`helm package` follows files/crds/'s links: the archive holds the CRDs themselves, and
    renders what the chart's directory renders."""
    run([*helm, "package", str(CHART), "-d", str(tmp_path)])
    (archive,) = tmp_path.glob("spout-operator-*.tgz")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
            member = members[f"spout-operator/files/crds/{name}.yaml"]
            assert member.isfile()
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read().decode() == (ROOT / "crds" / f"{name}.yaml").read_text()
        assert not [n for n in members if n.startswith("spout-operator/crds/")]
    packaged = documents(run([*helm, "template", "spout-operator", str(archive), "-n", SYSTEM_NAMESPACE]))
    assert packaged == template(helm)


def test_helm_test_and_notes(helm: list[str]) -> None:
    objects = by_key(template(helm))
    pod = objects[("Pod", "", "spout-operator-test-healthz")]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        "spout-operator-health.spout-operator-system.svc:8080/healthz"
        in pod["spec"]["containers"][0]["command"][2]
    )
    service = objects[("Service", "", "spout-operator-health")]
    assert service["spec"]["ports"][0]["targetPort"] == "health"
    assert not [
        k for k in by_key(template(helm, "--set", "tests.enabled=false")) if k[0] in ("Pod", "Service")
    ]


def test_chart_renders_what_kustomize_installs(stack: State, helm: list[str]) -> None:
    # Not the `helm test` Pod and its Service (`helm template` renders test hooks too).
    rendered = [o for o in template(helm) if o["kind"] not in ("Pod", "Service")]
    kustomized = documents(kubectl(stack, "kustomize", str(ROOT / "manifests")))
    kustomized += documents((ROOT / "manifests" / "connection.yaml").read_text())
    for obj in rendered:  # the namespace is Helm's own (--namespace, --create-namespace)
        if obj["kind"] not in CLUSTER_KINDS:
            obj["metadata"].setdefault("namespace", SYSTEM_NAMESPACE)
    helm_objects = by_key(rendered)
    kustomize_objects = {k: v for k, v in by_key(kustomized).items() if k[0] in SHARED_KINDS}
    assert {k[0] for k in helm_objects} == SHARED_KINDS
    assert set(helm_objects) == set(kustomize_objects)
    for key, obj in kustomize_objects.items():
        assert essence(helm_objects[key]) == essence(obj), key
    pod_selectors(helm_objects)
    pod_selectors(kustomize_objects)
    deployment = helm_objects[("Deployment", SYSTEM_NAMESPACE, "spout-operator")]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
    }


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def pod_env(deployment: dict[str, Any], namespace: str, pod: str) -> dict[str, str]:
    """The environment the kubelet would give the Deployment's pod `pod` in `namespace`:
    the values, and the downward API fields the chart uses."""
    fields = {"metadata.namespace": namespace, "metadata.name": pod}
    env = env_of(deployment)
    for entry in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in entry:
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_chart_values(helm: list[str]) -> None:
    default = by_key(template(helm))
    assert not [k for k in default if k[0] == "ServiceMonitor" or k[2].endswith("-metrics")]
    objects = by_key(
        template(
            helm,
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.port=9300,replicas=1",
            "--set",
            "image.repository=registry.example/op,image.tag=1.2.3,watchNamespaces={team-a,team-b}",
            "--set",
            "defaultConnection.address=grpcs://pachd.pach.svc:30650,pachd.workerNamespaces={pach,pach-2}",
            "--set",
            "defaultConnection.namespaces={team-a},defaultConnection.namespaceSelector=null",
            "--set",
            "defaultConnection.authTokenSecretRef.name=pachd-token,defaultConnection.tls.caConfigMapRef.name=ca",
            "--set",
            "resources.requests.memory=128Mi,connectionCheckSeconds=5",
        )
    )
    monitor = objects[("ServiceMonitor", "", "spout-operator")]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = objects[("Service", "", "spout-operator-metrics")]
    assert service["spec"]["ports"][0]["port"] == 9300
    deployment = objects[("Deployment", "", "spout-operator")]
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/op:1.2.3"
    assert container["resources"]["requests"]["memory"] == "128Mi"
    assert env_of(deployment) | {} == {
        **env_of(default[("Deployment", "", "spout-operator")]),
        "SPOUT_OPERATOR_WORKER_NAMESPACES": "pach,pach-2",
        "SPOUT_OPERATOR_NAMESPACES": "team-a,team-b",
        "SPOUT_OPERATOR_METRICS_PORT": "9300",
        "SPOUT_OPERATOR_CONNECTION_CHECK_SECONDS": "5",
    }
    assert not {"SPOUT_OPERATOR_PACHD_ADDRESS", "SPOUT_OPERATOR_PACHD_AUTH_TOKEN"} & {
        e["name"] for e in container["env"]
    }
    assert objects[("ClusterPachdConnection", "", "default")]["spec"] == {
        "address": "grpcs://pachd.pach.svc:30650",
        "namespaces": ["team-a"],
        "policy": {},
        "authTokenSecretRef": {"name": "pachd-token"},
        "tls": {"caConfigMapRef": {"name": "ca"}},
    }
    assert {k for k in objects if k[0] == "Role"} == {
        ("Role", "pach", "spout-operator-workers"),
        ("Role", "pach-2", "spout-operator-workers"),
        ("Role", SYSTEM_NAMESPACE, "spout-operator-connections"),
        ("Role", SYSTEM_NAMESPACE, "spout-operator-leader-election"),
    }
    # One replica: nothing to spread, and a budget of one available pod would block every drain.
    assert not [k for k in objects if k[0] == "PodDisruptionBudget"]
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]
    off = by_key(template(helm, "--set", "metrics.enabled=false"))[("Deployment", "", "spout-operator")]
    assert env_of(off)["SPOUT_OPERATOR_METRICS_PORT"] == "0"
    assert "annotations" not in off["spec"]["template"]["metadata"]
    single = by_key(
        template(helm, "--set", "replicas=1,leaderElection.enabled=false,defaultConnection.create=false")
    )
    assert not [k for k in single if k[0] in ("ClusterPachdConnection", "PodDisruptionBudget")]
    assert ("Role", SYSTEM_NAMESPACE, "spout-operator-leader-election") not in single
    lone = single[("Deployment", "", "spout-operator")]
    assert lone["spec"]["strategy"] == {"type": "Recreate"}
    assert not {"SPOUT_OPERATOR_LEADER_ELECTION", "POD_NAME"} & {
        e["name"] for e in lone["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    # Two operators that do not elect a leader would both write: the chart refuses.
    refused = subprocess.run(
        [*helm, "template", "x", str(CHART), "--set", "replicas=2,leaderElection.enabled=false"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert refused.returncode != 0 and "leaderElection.enabled=true" in refused.stderr


def test_helm_install_runs_the_sample(
    stack: State,
    helm: list[str],
    crd: None,
    operator_env: None,
    namespace: str,
    pachd_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pachd = stack.pachds[0]
    release = "sot"
    # The chart installs the connection `default`: the session's one makes way for it (Helm
    # would neither take over an object it did not make nor, adopting it, apply its spec).
    kubectl(stack, "delete", "clusterpachdconnection", "default", "--ignore-not-found")
    sample = yaml.safe_load(SAMPLE.read_text())
    spout, processor = sample["spec"]["spout"]["name"], sample["spec"]["processor"]["name"]
    try:
        on_stack(helm, "install", stack, release, namespace)
        assert "STATUS: deployed" in run([*helm, "status", release, "-n", namespace])
        default = json.loads(kubectl(stack, "get", "clusterpachdconnection", "default", "-o", "json"))
        assert default["spec"] == {
            "address": pachd.address,
            "namespaces": [namespace],
            "policy": {"projects": {"allowDefault": True}},
        }
        manifest = documents(run([*helm, "get", "manifest", release, "-n", namespace]))
        assert ("ClusterPachdConnection", "", "default") in by_key(manifest)
        deployment = json.loads(
            kubectl(stack, "get", "deployment", f"{release}-spout-operator", "-n", namespace, "-o", "json")
        )
        # No kubelet on the local stack: run the operator in-process as the installed pod would,
        # with its ServiceAccount's rights and its Deployment's settings (kopf itself, without
        # the Lease: KopfRunner runs the handlers, not the elected entry point).
        account = service_account_kubeconfig(stack, namespace, f"{release}-spout-operator")
        settings = pod_env(deployment, namespace, f"{release}-spout-operator-0")
        assert settings["SPOUT_OPERATOR_NAMESPACE"] == namespace  # where its connections' Secrets are
        assert settings["SPOUT_OPERATOR_WORKER_NAMESPACES"] == pachd.namespace
        assert settings["SPOUT_OPERATOR_WORKER_HEALTH"] == "false"
        # The pod's own port, not one this machine shares: the session's free one stays.
        assert settings.pop("SPOUT_OPERATOR_METRICS_PORT") == "9090"
        for key, value in settings.items():
            monkeypatch.setenv(key, value)
        with use_kubeconfig(str(account)), running_operator(namespace) as runner:
            kubectl(stack, "apply", "-n", namespace, "-f", str(SAMPLE))
            wait_condition(stack, namespace, "spout101", "Ready", "True")
            assert {n: state_name(i) for n, i in pipelines(pachd_client, spout, processor).items()} == {
                spout: "RUNNING",
                processor: "RUNNING",
            }
            kubectl(stack, "delete", "-n", namespace, "-f", str(SAMPLE), "--timeout=60s")
            assert pipelines(pachd_client, spout, processor) == {}
        assert not refusals(runner.output), runner.output
    finally:
        for name in (processor, spout):
            with contextlib.suppress(Exception):
                pachd_client.delete_pipeline(name, force=True)
        uninstalled = subprocess.run(
            [*helm, "uninstall", release, "-n", namespace], capture_output=True, text=True, check=False
        )
        # The session's default connection again, as the fixture made it (uninstall deleted it).
        kubectl(stack, "delete", "clusterpachdconnection", "default", "--ignore-not-found", check=False)
        install_default_connection(stack, pachd.address)
    assert uninstalled.returncode == 0, uninstalled.stdout + uninstalled.stderr
    assert "NotFound" in kubectl(stack, "get", "clusterrole", f"{release}-spout-operator", check=False)


def stack_values(stack: State, namespace: str) -> list[str]:
    pachd = stack.pachds[0]
    return [
        "--set",
        f"defaultConnection.address={pachd.address},pachd.workerNamespaces={{{pachd.namespace}}}",
        "--set",  # no node on this stack: worker pods never exist (README, Configuration)
        "pachd.workerHealth=false,driftIntervalSeconds=2,connectionCheckSeconds=2",
        "--set",  # the chart's connection admits no namespace and no shared project by itself
        f"defaultConnection.namespaces={{{namespace}}},defaultConnection.policy.projects.allowDefault=true",
    ]


def on_stack(helm: list[str], verb: str, stack: State, release: str, namespace: str, *values: str) -> str:
    """`helm install` or `upgrade` of this chart with the stack's values, taking over the
    session's CRDs (the chart installs and upgrades them)."""
    chart = [verb, release, str(CHART), "-n", namespace, "--take-ownership"]
    return run([*helm, *chart, *values, *stack_values(stack, namespace)])


@contextlib.contextmanager
def installed_operator(stack: State, namespace: str, release: str) -> Iterator[Any]:
    """The release's operator in-process, as its pod would run: its ServiceAccount's rights, its
    Deployment's settings (no kubelet on this stack)."""
    deployment = json.loads(
        kubectl(stack, "get", "deployment", f"{release}-spout-operator", "-n", namespace, "-o", "json")
    )
    settings = pod_env(deployment, namespace, f"{release}-spout-operator-0")
    settings.pop("SPOUT_OPERATOR_METRICS_PORT")  # the pod's own port, not one this machine shares
    account = service_account_kubeconfig(stack, namespace, f"{release}-spout-operator")
    with pytest.MonkeyPatch.context() as patch, use_kubeconfig(str(account)):
        for key, value in settings.items():
            patch.setenv(key, value)
        with running_operator(namespace) as runner:
            yield runner


def test_two_releases_side_by_side(stack: State, helm: list[str], crd: None) -> None:
    """Two releases in two namespaces: the first owns the CRDs and the connection `default`, the
    second says so (crds.enabled=false, defaultConnection.create=false); nothing collides, and
    each keeps its own when the other goes."""
    first, second = (f"side-{uuid.uuid4().hex[:6]}" for _ in range(2))
    kubectl(stack, "delete", "clusterpachdconnection", "default", "--ignore-not-found")
    try:
        run([*helm, "install", "one", str(CHART), "-n", first, "--create-namespace", "--take-ownership"])
        run(
            [
                *helm,
                "install",
                "two",
                str(CHART),
                "-n",
                second,
                "--create-namespace",
                "--set",
                "crds.enabled=false,defaultConnection.create=false",
            ]
        )
        for release, namespace in (("one", first), ("two", second)):
            assert "STATUS: deployed" in run([*helm, "status", release, "-n", namespace])
            for kind in ("clusterrole", "clusterrolebinding"):
                assert kubectl(stack, "get", kind, f"{release}-spout-operator", "-o", "name")
        binding = json.loads(kubectl(stack, "get", "clusterrolebinding", "two-spout-operator", "-o", "json"))
        assert binding["subjects"][0]["namespace"] == second
        run([*helm, "uninstall", "two", "-n", second, "--wait"])
        assert kubectl(stack, "get", "clusterpachdconnection", "default", "-o", "name")
        assert kubectl(stack, "get", "clusterrolebinding", "one-spout-operator", "-o", "name")
        run([*helm, "uninstall", "one", "-n", first, "--wait"])
        # crds.keep (the default): the CRDs stay, so every SpoutPipeline does.
        assert kubectl(stack, "get", "crd", "spoutpipelines.spout-operator.dev", "-o", "name")
    finally:
        for release, namespace in (("two", second), ("one", first)):
            subprocess.run([*helm, "uninstall", release, "-n", namespace], capture_output=True, check=False)
            kubectl(stack, "delete", "namespace", namespace, "--wait=false", check=False)
        session_crds_back(stack)


def test_helm_upgrade_from_the_previous_release(
    stack: State,
    helm: list[str],
    crd: None,
    operator_env: None,
    namespace: str,
    pachd_client: Any,
    tmp_path: Path,
) -> None:
    # The same fixtures as test_helm_install_runs_the_sample, kept: a test's signature names
    # what it needs.
    """The chart of 0.1.0 (commit 2c0822d; its CRDs in crds/, installed once by Helm) upgraded to
    this one, as the chart's README says (`--take-ownership` of the CRDs, which this chart
    manages): the resource made before the upgrade is still there and Ready under the upgraded
    operator, and the CRDs are the release's now, kept on uninstall."""
    chart_path = "manifests/helm/spout-operator"
    old_chart = previous_tree((chart_path,), tmp_path) / chart_path
    assert yaml.safe_load((old_chart / "Chart.yaml").read_text())["version"] == PREVIOUS_VERSION
    release = "upg"
    kubectl(stack, "delete", "clusterpachdconnection", "default", "--ignore-not-found")
    sample = yaml.safe_load(SAMPLE.read_text())
    spout, processor = sample["spec"]["spout"]["name"], sample["spec"]["processor"]["name"]
    try:
        run([*helm, "install", release, str(old_chart), "-n", namespace, *stack_values(stack, namespace)])
        kubectl(stack, "apply", "-n", namespace, "-f", str(SAMPLE))
        before = json.loads(kubectl(stack, "get", "spoutpipeline", "spout101", "-n", namespace, "-o", "json"))
        # Helm refuses to adopt CRDs it did not make without being told to.
        assert "invalid ownership metadata" in refused(
            helm, "upgrade", release, str(CHART), "-n", namespace, *stack_values(stack, namespace)
        )
        on_stack(helm, "upgrade", stack, release, namespace)
        assert "REVISION: 2" in run([*helm, "status", release, "-n", namespace])
        crd_meta = json.loads(
            kubectl(stack, "get", "crd", "spoutpipelines.spout-operator.dev", "-o", "json")
        )["metadata"]
        assert crd_meta["annotations"]["meta.helm.sh/release-name"] == release
        assert crd_meta["annotations"]["helm.sh/resource-policy"] == "keep"
        deployment = json.loads(
            kubectl(stack, "get", "deployment", f"{release}-spout-operator", "-n", namespace, "-o", "json")
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        version = (ROOT / "VERSION").read_text().strip()
        assert container["image"].endswith(f":{version}")
        assert container["resources"]["requests"]["memory"] == "160Mi"
        with installed_operator(stack, namespace, release) as runner:
            wait_condition(stack, namespace, "spout101", "Ready", "True")
            after = json.loads(
                kubectl(stack, "get", "spoutpipeline", "spout101", "-n", namespace, "-o", "json")
            )
            assert after["metadata"]["uid"] == before["metadata"]["uid"]
            kubectl(stack, "delete", "-n", namespace, "-f", str(SAMPLE), "--timeout=60s")
            assert pipelines(pachd_client, spout, processor) == {}
        assert not refusals(runner.output), runner.output
        run([*helm, "uninstall", release, "-n", namespace, "--wait"])
        assert kubectl(stack, "get", "crd", "spoutpipelines.spout-operator.dev", "-o", "name")
    finally:
        for name in (processor, spout):
            with contextlib.suppress(Exception):
                pachd_client.delete_pipeline(name, force=True)
        subprocess.run([*helm, "uninstall", release, "-n", namespace], capture_output=True, check=False)
        session_crds_back(stack)


def test_helm_uninstall_with_live_spoutpipelines(
    stack: State, helm: list[str], crd: None, operator_env: None, namespace: str, pachd_client: Any
) -> None:
    """What the chart's README and NOTES say: SpoutPipelines first, while the operator runs (each
    one's pipelines deleted or orphaned as its deletionPolicy says), then `helm uninstall`, which
    with crds.keep=false deletes the CRDs too, none left Terminating. Bounded throughout."""
    release = "gone"
    both = DeleteAndOrphan.fresh()
    kubectl(stack, "delete", "clusterpachdconnection", "default", "--ignore-not-found")
    try:
        on_stack(helm, "install", stack, release, namespace, "--set", "crds.keep=false")
        with installed_operator(stack, namespace, release):
            both.apply_ready(stack, namespace)
            started = time.monotonic()
            # The chart's NOTES: every namespace; this session's other namespaces hold none of
            # this release's, so only this test's namespace is asked here.
            kubectl(stack, "delete", "spoutpipelines", "--all", "-n", namespace, "--timeout=90s")
        run([*helm, "uninstall", release, "-n", namespace, "--wait", "--timeout=90s"])
        assert time.monotonic() - started < 180
        for plural in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
            assert "NotFound" in kubectl(stack, "get", "crd", f"{plural}.spout-operator.dev", check=False)
        both.assert_as_declared(pachd_client)
    finally:
        both.remove(pachd_client)
        subprocess.run([*helm, "uninstall", release, "-n", namespace], capture_output=True, check=False)
        session_crds_back(stack)
