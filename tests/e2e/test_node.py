"""End to end with real pods: the operator as a pod, spout101 from apply to data processed.

The stack runs a node (containerd, kubelet, scheduler); every image is the one
`make images` built here. pachd turns the operator's pipelines into
ReplicationControllers, the controller manager into pods, the kubelet runs them:
the consumer commits from inside its pod, the processor's jobs run in theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack import build, images, metrics, monitoring
from devstack import node as nodes
from devstack.stack import Stack, State
from devstack.status_readers import HEALTH, argocd_health, kstatus
from devstack.testing import PAUSED, annotate
from nodefixtures import (
    PACHD_NAMESPACE,
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

SYSTEM_NAMESPACE = "spout-operator-system"
SAMPLE_NAMESPACE = "e2e-spout101"
WORKERS_NAMESPACE = "e2e-workers"
E2E_RESOLUTION_S = 5
# Upstream's processor line: str(datetime.now().time()) + " " + path + "\n".
LINE = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d{1,6})? /pfs/spout/(?P<name>[0-9a-f]{64}\.txt)\n")


def processor_job_succeeds(state: State, client: Any, head: str, namespaces: tuple[str, ...]) -> None:
    """Wait until the processor's job for spout commit `head` has ended; it must have succeeded."""
    from python_pachyderm.proto.v2.pps import pps_pb2

    ended = (pps_pb2.JOB_FAILURE, pps_pb2.JOB_SUCCESS, pps_pb2.JOB_KILLED, pps_pb2.JOB_UNRUNNABLE)

    def job_done() -> Any:
        job = next(iter(client.inspect_job(head, "processor")))
        return job if job.state in ended else None

    job = wait_for(state, f"the processor's job for {head}", job_done, 300, namespaces)
    assert job.state == pps_pb2.JOB_SUCCESS, f"processor job {head} ended in state {job.state}: {job.reason}"


# --- the machine as the stack found it ----------------------------------------------


@dataclass
class Snapshot:
    mounts: set[str] = field(default_factory=set)
    netns: set[str] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)


def snapshot() -> Snapshot:
    mounts = {" ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    netns_dir = Path("/run/netns")
    netns = {p.name for p in netns_dir.iterdir()} if netns_dir.is_dir() else set()
    cgroups = {str(p) for mount in nodes.cgroup_mounts() for p in mount.iterdir() if p.is_dir()}
    pids = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    return Snapshot(mounts, netns, cgroups, pids)


def test_node_teardown_leaves_the_machine_as_it_found_it(node_prerequisites: None) -> None:
    """Processes, mounts, network namespaces and cgroups: listed before, during and after."""
    root = Path(tempfile.mkdtemp(prefix="devstack-teardown-"))
    before = snapshot()
    stack = Stack(root)
    try:
        state = stack.up(node=True)
        assert state.node is not None
        node = state.node
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper", "namespace": "default"},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "sleeper",
                        "image": images.SPOUT101_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", "import time; time.sleep(3600)"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    }
                ],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        }
        kubectl(state, "apply", "-f", "-", input=json.dumps(pod))
        wait_for(
            state,
            "a pod Running on the node",
            lambda: kubectl_json(state, "get", "pod", "sleeper")["status"].get("phase") == "Running",
            180,
            ("default",),
        )
        during = snapshot()
        ours_netns = {node.netns}
        assert ours_netns <= during.netns
        ours_cgroups = {c for c in during.cgroups if c.endswith(node.cgroup_root)}
        assert ours_cgroups, "the kubelet's cgroup root exists while the node runs"
        running = nodes.cgroup_pids(node) | nodes.pids_in_mount_ns(node.mount_ns) | set(state.pids.values())
        assert len(nodes.cgroup_pids(node)) >= 2, "the pod's sandbox and container run in the stack's cgroups"
        mount_ns = node.mount_ns
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
    after = snapshot()
    assert not (ours_netns & after.netns), "the node's network namespace is gone"
    assert not (ours_cgroups & after.cgroups), "the node's cgroups are gone"
    assert not {c for c in after.cgroups - before.cgroups if "devstack" in c}
    alive = {pid for pid in running if Path(f"/proc/{pid}").exists() and nodes.mount_ns_of(pid) != ""}
    assert not (alive - before.pids), f"processes the stack started still run: {sorted(alive)}"
    assert not nodes.pids_in_mount_ns(mount_ns), "no process is left in the node's mount namespace"
    new_mounts = after.mounts - before.mounts
    assert not {m for m in new_mounts if str(root) in m or "devstack" in m}, new_mounts


# --- the operator as a pod ----------------------------------------------------------


def point_operator_at_pachd(state: State) -> None:
    """The one place the operator pod is told about pachd: manifests/connection.yaml (the
    ClusterPachdConnection `default`), with the address pods reach pachd at."""
    shipped = (ROOT / "manifests" / "connection.yaml").read_text()
    address = pachd_address_for_pods(state)
    connection = shipped.replace("grpc://pachd.default.svc.cluster.local:30650", address)
    assert address in connection
    # It admits no namespace and grants no pachd project until told: exactly what the tier
    # needs (the sample's namespaces, pachd's default project, a pod patch that replaces the
    # worker's command, for the crash-loop test, and one Secret of pachd's namespace).
    assert "  namespaces: []\n" in connection and "  policy: {}\n" in connection
    connection = connection.replace(
        "  namespaces: []\n", f"  namespaces: [{SAMPLE_NAMESPACE}, {WORKERS_NAMESPACE}]\n"
    ).replace(
        "  policy: {}\n",
        "  policy: {projects: {allowDefault: true}, podPatch: {allowed: true}, secrets: [source-creds]}\n",
    )
    for crd in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
        kubectl(state, "wait", "--for=condition=Established", f"crd/{crd}.spout-operator.dev")
    kubectl(state, "apply", "-f", "-", input=connection)


def operator_overlay(state: State, workdir: Path) -> Path:
    """manifests/ as a user would deploy it, through kustomize, with the image of `make images`
    (kustomize's image name), and pachd's namespace set in its one place (the ConfigMap of
    manifests/pachd-namespace.yaml, through the knob manifests/pachd-namespace/)."""
    for name in ("manifests", "crds"):
        shutil.copytree(ROOT / name, workdir / name)
    deployment = workdir / "manifests" / "deployment.yaml"
    # A short resolution, so the status's last commit time follows the spout's few-second rhythm
    # in this tier (the shipped 60 s keeps a status write from every minute of every spout).
    resolution = '{name: SPOUT_OPERATOR_DATAFLOW_RESOLUTION_SECONDS, value: "60"}'
    assert resolution in deployment.read_text()
    deployment.write_text(
        deployment.read_text().replace(resolution, resolution.replace('"60"', f'"{E2E_RESOLUTION_S}"'))
    )
    overlay = workdir / "overlay"
    overlay.mkdir()
    name, _, tag = images.OPERATOR_IMAGE.rpartition(":")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../manifests"],
        "images": [{"name": "ghcr.io/spout-operator/spout-operator", "newName": name, "newTag": tag}],
        # pachd's namespace, in the one place a user sets it (manifests/pachd-namespace.yaml).
        "patches": [
            {
                "target": {"kind": "ConfigMap", "name": "spout-operator-pachd-namespace"},
                "patch": json.dumps([{"op": "replace", "path": "/data/namespace", "value": PACHD_NAMESPACE}]),
            }
        ],
        "transformers": ["../manifests/pachd-namespace"],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return overlay


def operator_pods(state: State) -> list[dict[str, Any]]:
    """The Deployment's pods (its replicas elect a leader), by name."""
    pods = kubectl_json(
        state, "get", "pods", "-n", SYSTEM_NAMESPACE, "-l", "app.kubernetes.io/name=spout-operator"
    )
    items = [dict(p) for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
    assert items, "no operator pod"
    return sorted(items, key=lambda p: str(p["metadata"]["name"]))


def operator_pod(state: State) -> dict[str, Any]:
    return operator_pods(state)[0]


@pytest.fixture(scope="module")
def deployed_operator(node_stack: State) -> Iterator[dict[str, Any]]:
    state = node_stack
    workdir = Path(tempfile.mkdtemp(prefix="e2e-kustomize-"))
    try:
        overlay = operator_overlay(state, workdir)
        rendered = kubectl(state, "kustomize", str(overlay))
        assert f"image: {images.OPERATOR_IMAGE}" in rendered
        kubectl(state, "apply", "-k", str(overlay))
        point_operator_at_pachd(state)
        wait_for(
            state,
            "the operator Deployment to be available",
            lambda: any(
                c["type"] == "Available" and c["status"] == "True"
                for c in kubectl_json(state, "get", "deployment", "spout-operator", "-n", SYSTEM_NAMESPACE)
                .get("status", {})
                .get("conditions", [])
            ),
            240,
            (SYSTEM_NAMESPACE,),
        )
        yield operator_pod(state)
    finally:
        kubectl(
            state, "delete", "-k", str(workdir / "overlay"), "--ignore-not-found", "--wait=false", check=False
        )
        shutil.rmtree(workdir, ignore_errors=True)


def test_operator_pod_runs_hardened_and_stays_live(
    node_stack: State, deployed_operator: dict[str, Any]
) -> None:
    state = node_stack
    pod = deployed_operator
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["image"] == images.OPERATOR_IMAGE
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # What the hardening means inside the running container.
    probe = (
        "import os, urllib.request\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/probe', 'w')\nexcept OSError as e:\n    print('rootfs', e.errno)\n"
        "print(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=5).status)\n"
        "print(os.environ['KUBERNETES_SERVICE_HOST'], os.path.exists("
        "'/var/run/secrets/kubernetes.io/serviceaccount/token'))\n"
    )
    # Ready (its readiness probe passed) means /healthz answers; exec until that holds anyway.
    out = wait_for(
        state,
        "an exec into the operator",
        lambda: kubectl(
            state, "exec", "-n", SYSTEM_NAMESPACE, name, "-c", "operator", "--", "python", "-c", probe
        ),
        60,
        (SYSTEM_NAMESPACE,),
    )
    assert out.split("\n")[:4] == ["1000 1000", "rootfs 30", "200", f"{nodes.KUBERNETES_CLUSTER_IP} True"], (
        out
    )
    # The liveness probe has run (its first period passed) and never failed: no restart.
    liveness = container["livenessProbe"]
    first_probe_s = liveness.get("initialDelaySeconds", 0) + liveness.get("periodSeconds", 10) + 5

    def probed() -> bool:
        for replica in operator_pods(state):
            for each in replica["status"].get("containerStatuses", []):
                assert each["restartCount"] == 0, each
        status = operator_pod(state)["status"]["containerStatuses"][0]
        started = datetime.fromisoformat(status["state"]["running"]["startedAt"].replace("Z", "+00:00"))
        return bool((datetime.now(UTC) - started).total_seconds() > first_probe_s)

    wait_for(state, "the liveness probe's first period", probed, first_probe_s + 120, (SYSTEM_NAMESPACE,))
    events = kubectl(state, "get", "events", "-n", SYSTEM_NAMESPACE)
    # (A readiness failure in the first second, before kopf serves, is expected.)
    assert "Liveness probe failed" not in events, events
    # In-cluster configuration: no kubeconfig in the pod, and it watches through the API server.
    logs = kubectl(
        state, "logs", "-n", SYSTEM_NAMESPACE, "-l", "app.kubernetes.io/name=spout-operator", "--tail=-1"
    )
    assert "Watching all namespaces" in logs, logs[-2000:]
    assert "kubeconfig" not in logs.lower(), logs[-2000:]


# --- spout101 with real pods --------------------------------------------------------


def worker_pods_running(state: State, pipeline: str, version: int | None = None) -> bool:
    selector = f"pipelineName={pipeline}" + (f",pipelineVersion={version}" if version is not None else "")
    pods = kubectl_json(state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", selector)
    running = [
        p["status"].get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        for p in pods["items"]
    ]
    return any(bool(r) for r in running)


def files_at(client: Any, repo: str, commit_id: str, path: str = "/") -> dict[str, int]:
    return {f.file.path: f.size_bytes for f in client.list_file((repo, commit_id), path)}


@pytest.fixture(scope="module")
def applied_sample(node_stack: State, deployed_operator: dict[str, Any]) -> Iterator[dict[str, Any]]:
    state = node_stack
    kubectl(state, "create", "namespace", SAMPLE_NAMESPACE)
    body = sample((3, 5))
    kubectl(state, "apply", "-n", SAMPLE_NAMESPACE, "-f", "-", input=json.dumps(body))
    try:
        yield body
    finally:
        kubectl(
            state, "delete", "spoutpipeline", "--all", "-n", SAMPLE_NAMESPACE, "--timeout=120s", check=False
        )


def test_sample_runs_in_pods_and_every_message_is_processed(
    node_stack: State, applied_sample: dict[str, Any]
) -> None:
    state = node_stack
    spaces = (SAMPLE_NAMESPACE, PACHD_NAMESPACE, SYSTEM_NAMESPACE)

    def ready() -> bool:
        obj = kubectl_json(state, "get", "spoutpipeline", "spout101", "-n", SAMPLE_NAMESPACE)
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in obj.get("status", {}).get("conditions", [])
        )

    wait_for(state, "SpoutPipeline spout101 Ready", ready, 180, spaces)
    # Ready now means the workers are up too: the operator saw their pods ready.
    obj = kubectl_json(state, "get", "spoutpipeline", "spout101", "-n", SAMPLE_NAMESPACE)
    assert obj["status"]["spout"]["workers"] == {"ready": 1, "total": 1}, obj["status"]
    assert obj["status"]["processor"]["workers"] == {"ready": 1, "total": 1}, obj["status"]
    assert obj["status"]["workers"] == "2/2"
    assert condition(obj, "Ready")["message"] == (
        "both pipelines are running, workers ready: spout 1/1, processor 1/1"
    )
    for pipeline in ("spout", "processor"):
        assert worker_pods_running(state, pipeline)
    print("\n$ kubectl get spp\n" + kubectl(state, "get", "spp", "-n", SAMPLE_NAMESPACE), flush=True)
    print("$ kubectl get spp -o wide\n" + kubectl(state, "get", "spp", "-o", "wide", "-n", SAMPLE_NAMESPACE))

    client = pachd_client(state)

    def commits_with_messages() -> list[Any]:
        infos = [c for c in client.list_commit("spout") if c.finished.seconds]
        infos.sort(key=lambda c: (c.started.seconds, c.started.nanos))
        with_files = [c for c in infos if files_at(client, "spout", c.commit.id)]
        return with_files if len(with_files) >= 2 else []

    commits = wait_for(state, "2 commits from the consumer's pod", commits_with_messages, 180, spaces)
    # Each commit adds exactly one 1024-byte and one 2048-byte message, named by its sha256.
    previous: dict[str, int] = {}
    for info in commits:
        current = files_at(client, "spout", info.commit.id)
        added = {path: size for path, size in current.items() if path not in previous}
        assert sorted(added.values()) == [1024, 2048], (info.commit.id, added)
        for path in added:
            content = client.get_file(("spout", info.commit.id), path).read()
            assert path == "/" + hashlib.sha256(content).hexdigest() + ".txt"
        previous = current
    logs = kubectl(
        state, "logs", "-n", PACHD_NAMESPACE, "-l", "pipelineName=spout", "-c", "user", "--tail=200"
    )
    assert "Committed" in logs, logs[-2000:]

    # Nothing lost: once the processor's job for the newest of these commits is done, its
    # output holds exactly one entry per message the spout's repo holds at that commit.
    head = commits[-1].commit.id

    from python_pachyderm.proto.v2.pps import pps_pb2

    processor_job_succeeds(state, client, head, spaces)
    ended = (pps_pb2.JOB_FAILURE, pps_pb2.JOB_SUCCESS, pps_pb2.JOB_KILLED, pps_pb2.JOB_UNRUNNABLE)
    failed = [
        j.job.id for j in client.list_job("processor") if j.state in ended and j.state != pps_pb2.JOB_SUCCESS
    ]
    assert not failed, f"processor jobs that did not succeed: {failed}"
    messages = files_at(client, "spout", head)
    outputs = {
        **{("1K", p.rsplit("/", 1)[1]): p for p in files_at(client, "processor", head, "/1K.txt/")},
        **{("2K", p.rsplit("/", 1)[1]): p for p in files_at(client, "processor", head, "/2K.txt/")},
    }
    expected = {("1K" if size == 1024 else "2K", path.lstrip("/")) for path, size in messages.items()}
    assert set(outputs) == expected, {"missing": expected - set(outputs), "extra": set(outputs) - expected}
    for (label, name), path in sorted(outputs.items())[:4]:
        line = client.get_file(("processor", head), path).read().decode()
        match = LINE.fullmatch(line)
        assert match and match["name"] == name, (label, line)


# --- the data flow: last commit, lag, expectations --------------------------------------

# The consumer's rhythm in this tier (applied_sample): 3-5 s rather than the sample's 10-30 s,
# so that the lag grows past the alerts' thresholds within minutes.
SAMPLE_INTERVAL = (3, 5)
SCRAPES = ROOT / "bench-results" / "e2e-dataflow-scrapes.jsonl"
ALERTS_TEST = SCRAPES.with_name("e2e-dataflow-alerts_test.yaml")  # promtool's input, kept beside them
REPLICAS = 2  # manifests/deployment.yaml
STEP_S = 5  # promtool's sample and evaluation interval over the scrapes
LAG_POD = re.compile(r'spout_operator_processor_lag_commits\{.*pod="([^"]+)"')
HELD_BACK_S = 150  # the processor held back at least this long: beyond LagGrowing's 2m window


def pod_metrics(state: State, pod: str) -> str:
    """/metrics of one operator replica, from inside its pod."""
    read = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/metrics').read().decode())"
    return str(
        kubectl(state, "exec", "-n", SYSTEM_NAMESPACE, pod, "-c", "operator", "--", "python", "-c", read)
    )


def replicas_metrics(state: State) -> dict[str, dict[str, float]]:
    """Every replica's /metrics (both serve them), by pod; each scrape kept in SCRAPES (one JSON
    line per pod and scrape, with its Unix time), the input of the alert rules' tests."""
    scraped = {}
    SCRAPES.parent.mkdir(parents=True, exist_ok=True)
    with SCRAPES.open("a") as out:
        for pod in operator_pods(state):
            name = str(pod["metadata"]["name"])
            text = pod_metrics(state, name)
            out.write(json.dumps({"time": time.time(), "pod": name, "metrics": text}) + "\n")
            scraped[name] = metrics.samples(text)
    return scraped


def leader_metrics(state: State) -> dict[str, float]:
    scraped = replicas_metrics(state)
    assert len(scraped) == REPLICAS, sorted(scraped)  # every replica serves /metrics
    leaders = [m for m in scraped.values() if m.get("spout_operator_leader") == 1]
    assert len(leaders) == 1, {pod: m.get("spout_operator_leader") for pod, m in scraped.items()}
    return leaders[0]


def flow_sample(metrics: dict[str, float], name: str) -> float | None:
    return metrics.get(f'{name}{{name="spout101",namespace="{SAMPLE_NAMESPACE}"}}')


def age_s(stamp: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def alerts_fire_on_this_run(cases: list[dict[str, Any]]) -> None:
    """`promtool test rules` on this run's own scrapes (monitoring.input_series): the shipped
    rules, their annotations left out (the frozen capture's test checks their text)."""
    promtool = build.cached("promtool")
    rules = ALERTS_TEST.with_name("e2e-dataflow-alerts.yaml")
    rules.write_text(monitoring.rules_without_annotations())
    test = monitoring.rule_test(SCRAPES, STEP_S, rules.name, "this e2e run's scrapes", cases)
    ALERTS_TEST.write_text(yaml.safe_dump(test, sort_keys=False, width=100000))
    result = subprocess.run(
        [str(promtool), "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_data_flow_shows_in_status_and_metrics_and_a_held_back_processor_is_judged(
    node_stack: State, applied_sample: dict[str, Any]
) -> None:
    """Both replicas serve /metrics, one leads; spout101's last commit is as recent as its rhythm
    (3-5 s in this tier, SAMPLE_INTERVAL, rather than the sample's 10-30 s: the test takes
    minutes, not a quarter of an hour), sampled at every scrape, and the lag small while both
    run; with the processor stopped (the resource paused, so the operator leaves pachd alone)
    the lag grows in status and metrics, DataFlowing=False with its Event (Ready keeps its own
    reason: pachd's); resumed, it catches up. promtool then evaluates the shipped alert rules on
    this run's own scrapes: nothing fires while both run, ProcessorBehind and LagGrowing fire
    for the leader's series while the processor is held back."""
    state = node_stack
    spaces = (SAMPLE_NAMESPACE, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    SCRAPES.unlink(missing_ok=True)
    max_lag = 3
    kubectl(
        state,
        "patch",
        "spoutpipeline",
        "spout101",
        "-n",
        SAMPLE_NAMESPACE,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"expectations": {"commitWithinSeconds": 60, "maxLag": max_lag}}}),
    )

    def current() -> dict[str, Any]:
        return dict(kubectl_json(state, "get", "spoutpipeline", "spout101", "-n", SAMPLE_NAMESPACE))

    def flowing() -> dict[str, Any] | None:
        obj = current()
        shown = obj.get("status", {}).get("dataFlow", {})
        ok = condition(obj, "DataFlowing").get("status") == "True" and shown.get("lastCommitTime")
        return (
            obj
            if ok and condition(obj, "DataFlowing")["observedGeneration"] == obj["metadata"]["generation"]
            else None
        )

    obj = wait_for(state, "spout101's data flow in status, DataFlowing=True", flowing, 180, spaces)
    # The status follows at the sweep (30 s) and the resolution; the metrics at each commit.
    sweep_s = 30
    assert (
        age_s(obj["status"]["dataFlow"]["lastCommitTime"])
        <= sweep_s + E2E_RESOLUTION_S + SAMPLE_INTERVAL[1] + 10
    )
    assert obj["status"]["dataFlow"]["lag"] <= 2, obj["status"]["dataFlow"]
    metrics = leader_metrics(state)
    last_commit = flow_sample(metrics, "spout_operator_spout_last_commit_timestamp_seconds")
    assert last_commit is not None and time.time() - last_commit <= SAMPLE_INTERVAL[1] + 5, metrics
    lag = flow_sample(metrics, "spout_operator_processor_lag_commits")
    assert lag is not None and lag <= 2
    assert flow_sample(metrics, "spout_operator_data_flowing") == 1
    assert flow_sample(metrics, "spout_operator_expected_max_lag_commits") == max_lag
    print("\n$ kubectl get spp\n" + kubectl(state, "get", "spp", "-n", SAMPLE_NAMESPACE), flush=True)
    # Scrapes while both run, for the alert tests (nothing may fire on them): five more commits,
    # the last commit's age in the metrics and in status sampled at each scrape.
    commits: set[float | None] = {last_commit}
    ages: list[float] = []
    status_ages: list[float] = []

    def five_more_commits() -> bool:
        leader = leader_metrics(state)
        last = flow_sample(leader, "spout_operator_spout_last_commit_timestamp_seconds")
        assert last is not None, leader
        commits.add(last)
        ages.append(time.time() - last)
        status_ages.append(age_s(current()["status"]["dataFlow"]["lastCommitTime"]))
        assert (flow_sample(leader, "spout_operator_processor_lag_commits") or 0) <= 2, leader
        return len(commits) > 5

    wait_for(state, "five more commits, the lag small", five_more_commits, 120, spaces)
    assert len(ages) >= 5 and max(ages) <= SAMPLE_INTERVAL[1] + 5, ages
    assert max(status_ages) <= sweep_s + E2E_RESOLUTION_S + SAMPLE_INTERVAL[1] + 10, status_ages
    flowing_until = time.time()

    # Hold the processor back: pause the resource (the operator writes nothing to pachd), stop it.
    annotate(state, SAMPLE_NAMESPACE, "spout101", f"{PAUSED}=true")
    wait_for(state, "the pause acknowledged", lambda: current().get("status", {}).get("paused"), 120, spaces)
    client = pachd_client(state)
    client.stop_pipeline("processor")
    stopped_at = time.time()
    try:
        lags: list[float] = []

        def behind() -> dict[str, Any] | None:
            leader = leader_metrics(state)  # scraped along the way: the alert tests' input
            lags.append(flow_sample(leader, "spout_operator_processor_lag_commits") or 0)
            obj = current()
            return obj if condition(obj, "DataFlowing").get("reason") == "ProcessorBehind" else None

        obj = wait_for(state, "DataFlowing=False, ProcessorBehind", behind, 240, spaces)
        assert lags[-1] > max_lag and lags == sorted(lags), lags  # grows, commit by commit
        assert obj["status"]["dataFlow"]["lag"] > max_lag
        # Ready says what pachd says (the processor is stopped), not the data flow's verdict.
        assert condition(obj, "Ready")["reason"] == "PipelineNotRunning", condition(obj, "Ready")
        events = kubectl_json(
            state, "get", "events", "-n", SAMPLE_NAMESPACE, "--field-selector", "reason=ProcessorBehind"
        )["items"]
        assert len(events) == 1, events
        assert events[0]["type"] == "Warning"
        assert events[0]["reportingComponent"] == "spout-operator"
        assert events[0]["reportingInstance"] in {p["metadata"]["name"] for p in operator_pods(state)}
        # Still behind a while later: the lag keeps growing in the metrics, no second Event. Held
        # back this long (two minutes or more at 3-5 s a commit), the scrapes cover the alerts'
        # `for` durations (SpoutPipelineProcessorBehind, SpoutPipelineLagGrowing).
        grown = wait_for(
            state,
            "the lag growing further",
            lambda: (
                (m := flow_sample(leader_metrics(state), "spout_operator_processor_lag_commits") or 0)
                >= lags[-1] + 25
                and m
            ),
            240,
            spaces,
        )
        assert grown >= lags[-1] + 25
        again = kubectl_json(
            state, "get", "events", "-n", SAMPLE_NAMESPACE, "--field-selector", "reason=ProcessorBehind"
        )["items"]
        assert len(again) == 1 and again[0].get("count", 1) == 1, again
        assert flow_sample(leader_metrics(state), "spout_operator_data_flowing") == 0
        # Scraped on until the hold outlasts the alerts' windows and `for` (2m + 1m at most).
        wait_for(
            state,
            f"the processor held back {HELD_BACK_S} s, scraped",
            lambda: bool(leader_metrics(state)) and time.time() - stopped_at >= HELD_BACK_S,
            HELD_BACK_S + 60,
            spaces,
        )
        held_until = time.time()
    finally:
        annotate(state, SAMPLE_NAMESPACE, "spout101", f"{PAUSED}-")
    # Resumed: the operator starts the processor again (drift repair); it catches up.
    obj = wait_for(state, "DataFlowing=True again", flowing, 300, spaces)
    assert obj["status"]["dataFlow"]["lag"] <= max_lag
    leader_metrics(state)
    print(f"scrapes kept in {SCRAPES}", flush=True)

    # The alerts on this run's scrapes. Only the leader serves the per-resource series, so an
    # alert on them fires once, labelled with the leader's pod.
    lag_pods = {
        found[1] for s in monitoring.input_series(SCRAPES, STEP_S) if (found := LAG_POD.match(s["series"]))
    }
    assert len(lag_pods) == 1, lag_pods
    labels = {
        "name": "spout101",
        "namespace": SAMPLE_NAMESPACE,
        "job": "spout-operator-metrics",
        "pod": lag_pods.pop(),
        "severity": "warning",
    }
    running, held = (monitoring.eval_time(SCRAPES, at, STEP_S) for at in (flowing_until, held_until))
    alerts_fire_on_this_run(
        [
            {"eval_time": at, "alertname": alert, "exp_alerts": expected}
            for at, expected in ((running, []), (held, [{"exp_labels": labels}]))
            for alert in ("SpoutPipelineProcessorBehind", "SpoutPipelineLagGrowing")
        ]
        + [
            {"eval_time": at, "alertname": alert, "exp_alerts": []}
            for at in (running, held)
            for alert in ("SpoutOperatorAbsent", "SpoutOperatorWithoutLeader", "SpoutPipelineSpoutQuiet")
        ]
    )
    print(f"promtool test rules passed on this run: {ALERTS_TEST}", flush=True)


def tag_image(state: State, source: str, target: str) -> None:
    """A second name for an image the node holds: a new image, as far as pachd can tell."""
    assert state.node is not None
    ctr = shutil.which("ctr")
    assert ctr is not None
    address = state.node.containerd_socket
    subprocess.run([ctr, "--address", address, "-n", "k8s.io", "images", "rm", target], capture_output=True)
    subprocess.run(
        [ctr, "--address", address, "-n", "k8s.io", "images", "tag", source, target],
        capture_output=True,
        check=True,
        timeout=60,
    )


def test_a_spout_image_change_keeps_messages_flowing(
    node_stack: State, applied_sample: dict[str, Any]
) -> None:
    """pachd 2.6 cannot update a spout while its processor reads it: the operator pauses the
    processor around the update. Afterwards the new spout pod's messages reach the processor."""

    state = node_stack
    spaces = (SAMPLE_NAMESPACE, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    client = pachd_client(state)
    before = {p.pipeline.name: p for p in client.list_pipeline(details=True)}
    assert {"spout", "processor"} <= set(before)
    history = {c.commit.id for c in client.list_commit("spout")}
    new_image = images.SPOUT101_IMAGE.rsplit(":", 1)[0] + ":e2e-next"
    tag_image(state, images.SPOUT101_IMAGE, new_image)
    body = json.loads(json.dumps(applied_sample))
    body["spec"]["spout"]["transform"]["image"] = new_image
    kubectl(state, "apply", "-n", SAMPLE_NAMESPACE, "-f", "-", input=json.dumps(body))

    def updated() -> bool:
        found = {p.pipeline.name: p for p in client.list_pipeline(details=True)}
        return (
            found["spout"].version == before["spout"].version + 1
            and found["spout"].details.transform.image == new_image
            and found["processor"].version == before["processor"].version
            and not found["processor"].stopped
        )

    wait_for(state, "the spout at its new image, the processor running", updated, 180, spaces)
    version = before["spout"].version + 1
    wait_for(
        state,
        "the new spout's worker pod Running",
        lambda: worker_pods_running(state, "spout", version),
        240,
        spaces,
    )
    # Commits so far may come from the old pod, made just before the pause: the processor's
    # job for such a commit is killed by the pause (its messages go to the next job).
    old_pod = {c.commit.id for c in client.list_commit("spout")}
    assert history <= old_pod  # nothing lost
    new_pod_messages_processed(state, client, old_pod, spaces)


def new_pod_messages_processed(state: State, client: Any, old_pod: set[str], spaces: tuple[str, ...]) -> None:
    """A commit the new spout pod made (none of `old_pod`) is processed by the processor,
    every one of its messages once."""

    def new_messages() -> Any:
        fresh = [
            c
            for c in client.list_commit("spout")
            if c.commit.id not in old_pod and c.finished.seconds and files_at(client, "spout", c.commit.id)
        ]
        return max(fresh, key=lambda c: (c.started.seconds, c.started.nanos)) if fresh else None

    head = wait_for(state, "a commit from the new spout pod", new_messages, 180, spaces).commit.id
    processor_job_succeeds(state, client, head, spaces)
    messages = {path.lstrip("/") for path in files_at(client, "spout", head)}
    processed = {
        p.rsplit("/", 1)[1]
        for directory in ("/1K.txt/", "/2K.txt/")
        for p in files_at(client, "processor", head, directory)
    }
    assert processed == messages  # every message, the new pod's included, processed once


def test_a_restart_token_brings_a_new_spout_pod_whose_messages_are_processed(
    node_stack: State, applied_sample: dict[str, Any]
) -> None:
    """Restart now (issue 21): the spout's workers restart once, its version stays, and the
    new pod's messages flow through the processor."""
    state = node_stack
    spaces = (SAMPLE_NAMESPACE, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    client = pachd_client(state)
    version = {p.pipeline.name: p.version for p in client.list_pipeline()}["spout"]
    wait_for(
        state, "the spout's worker pod Running", lambda: worker_pods_running(state, "spout"), 240, spaces
    )
    pods_before = {
        p["metadata"]["name"]
        for p in kubectl_json(state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", "pipelineName=spout")[
            "items"
        ]
    }
    old_pod = {c.commit.id for c in client.list_commit("spout")}
    token = f"e2e-{int(time.time())}"
    annotate(state, SAMPLE_NAMESPACE, "spout101", f"spout-operator.dev/restart-spout={token}")

    def acknowledged() -> Any:
        obj = kubectl_json(state, "get", "spoutpipeline", "spout101", "-n", SAMPLE_NAMESPACE)
        ack = (obj["status"].get("restarts") or {}).get("spout") or {}
        return ack if ack.get("token") == token else None

    assert wait_for(state, "the restart acknowledged", acknowledged, 60, spaces)["outcome"] == "Restarted"

    def new_pod_running() -> bool:
        pods = kubectl_json(state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", "pipelineName=spout")["items"]
        return any(
            p["metadata"]["name"] not in pods_before
            and p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            for p in pods
        )

    wait_for(state, "a new spout pod Running", new_pod_running, 240, spaces)
    assert {p.pipeline.name: p.version for p in client.list_pipeline()}["spout"] == version
    new_pod_messages_processed(state, client, old_pod, spaces)


def test_a_crash_looping_spout_is_restarted_on_the_predicted_schedule_up_to_its_limit(
    node_stack: State, workers_namespace: str
) -> None:
    """Automatic restarts (issue 21): each comes at or after the time status predicted, within
    a sweep of it (the deployed operator sweeps every 30 s), and they stop at the maximum."""
    state = node_stack
    spaces = (workers_namespace, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    body = pair("restarting")
    command = ["sh", "-c", "echo the source is gone > /dev/termination-log; exit 3"]
    body["spec"]["spout"]["podPatch"] = json.dumps(
        [{"op": "replace", "path": "/containers/0/command", "value": command}]
    )
    body["spec"]["autoRestart"] = {"enabled": True, "afterSeconds": 5, "backoffSeconds": 10, "maxRestarts": 2}
    kubectl(state, "apply", "-n", workers_namespace, "-f", "-", input=json.dumps(body))

    def record(restarts: int) -> Callable[[], Any]:
        def check() -> Any:
            obj = kubectl_json(state, "get", "spoutpipeline", "restarting", "-n", workers_namespace)
            auto = obj["status"].get("autoRestart") or {}
            return auto if auto.get("restarts", 0) >= restarts else None

        return check

    first = wait_for(state, "the first automatic restart", record(1), 240, spaces)
    predictions = [first["nextRestartAt"]]  # each pass's word on the earliest next restart

    def second_restart() -> Any:
        auto = record(1)() or {}
        if auto.get("restarts") == 1 and auto.get("nextRestartAt"):
            predictions.append(auto["nextRestartAt"])
        return auto if auto.get("restarts", 0) >= 2 else None

    second = wait_for(state, "the second automatic restart", second_restart, 240, spaces)
    made = datetime.fromisoformat(second["lastRestartAt"].replace("Z", "+00:00"))
    predicted = datetime.fromisoformat(predictions[-1].replace("Z", "+00:00"))
    # Not before the status said; within a sweep (30 s) of it, and of the failure showing again.
    assert predicted <= made <= predicted + timedelta(seconds=60), (predictions, second)

    def stalled() -> Any:
        obj = kubectl_json(state, "get", "spoutpipeline", "restarting", "-n", workers_namespace)
        return obj if condition(obj, "Stalled").get("reason") == "AutoRestartLimit" else None

    obj = wait_for(state, "Stalled: AutoRestartLimit", stalled, 240, spaces)
    assert obj["status"]["autoRestart"]["restarts"] == 2
    reasons = kubectl(
        state, "get", "events", "-n", workers_namespace, "-o", "jsonpath={.items[*].reason}"
    ).split()
    assert reasons.count("AutoRestarted") == 2 and reasons.count("AutoRestartLimit") == 1


# --- workers that do not come up, although pachd says RUNNING -------------------------

PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull")
MISSING_IMAGE = "ghcr.io/spout-operator/no-such-image:0.1.0"  # no registry answers here


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def pair(name: str) -> dict[str, Any]:
    """The sample under other names (pipelines are cluster-wide in pachd)."""
    body: dict[str, Any] = sample((3, 5))
    body["metadata"]["name"] = name
    body["spec"]["spout"]["name"] = name
    body["spec"]["processor"]["name"] = f"{name}-processor"
    return body


@pytest.fixture
def workers_namespace(node_stack: State, deployed_operator: dict[str, Any]) -> Iterator[str]:
    kubectl(node_stack, "create", "namespace", WORKERS_NAMESPACE)
    try:
        yield WORKERS_NAMESPACE
    finally:
        kubectl(
            node_stack,
            "delete",
            "spoutpipeline",
            "--all",
            "-n",
            WORKERS_NAMESPACE,
            "--timeout=120s",
            check=False,
        )
        kubectl(node_stack, "delete", "namespace", WORKERS_NAMESPACE, "--timeout=120s", check=False)


def readers(obj: dict[str, Any]) -> tuple[str, str]:
    """(kstatus, Argo CD health) of the status as the operator wrote it."""
    return kstatus([obj])[0]["status"], argocd_health(obj)["status"]


def test_a_missing_image_is_ready_false_with_the_pull_error(
    node_stack: State, workers_namespace: str
) -> None:
    """pachd says RUNNING (a few seconds later CRASHING) while the kubelet cannot pull the
    spout's image: Ready=False with the kubelet's reason and message, not Reconciling (Argo CD:
    Degraded). Then the image is fixed and the pair becomes Ready with both workers up."""
    state = node_stack
    spaces = (workers_namespace, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    body = pair("noimage")
    body["spec"]["spout"]["transform"]["image"] = MISSING_IMAGE
    applied = time.monotonic()
    kubectl(state, "apply", "-n", workers_namespace, "-f", "-", input=json.dumps(body))

    def pull_error() -> dict[str, Any] | None:
        obj = kubectl_json(state, "get", "spoutpipeline", "noimage", "-n", workers_namespace)
        return obj if condition(obj, "Ready").get("reason") in PULL_ERRORS else None

    obj = wait_for(state, "Ready=False with a pull error", pull_error, 120, spaces)
    seen_s = time.monotonic() - applied
    ready, status = condition(obj, "Ready"), obj["status"]
    pods = kubectl_json(state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", "pipelineName=noimage")["items"]
    pod_age_s = (datetime.now(UTC) - min(_created(p) for p in pods)).total_seconds()
    print(
        f"\n[e2e] pull error in status {seen_s:.1f} s after apply, {pod_age_s:.0f} s after pachd made the "
        f"worker pod; pachd said {status['spout']['state']}: {ready['reason']}: {ready['message'][:160]}"
    )
    assert pod_age_s < 30, "the status follows the pod within seconds (pod events wake the resource)"
    assert status["spout"]["state"] in ("RUNNING", "CRASHING"), status["spout"]  # pachd's own verdict
    assert ready["status"] == "False"
    assert ready["message"].startswith(
        f"pipeline noimage is {status['spout']['state']} in pachd, 0/1 workers ready: {ready['reason']}: pod "
    )
    assert MISSING_IMAGE in ready["message"] and "container user" in ready["message"]
    assert status["spout"]["workers"]["reason"] == ready["reason"]
    assert (status["spout"]["workers"]["ready"], status["spout"]["workers"]["total"]) == (0, 1)
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Synced"}  # nothing under way
    assert condition(obj, "Synced")["status"] == "True"  # pachd holds what was declared
    assert readers(obj) == ("InProgress", "Degraded")
    capture("image-pull-error", obj)

    body["spec"]["spout"]["transform"]["image"] = images.SPOUT101_IMAGE
    kubectl(state, "apply", "-n", workers_namespace, "-f", "-", input=json.dumps(body))

    def ready_again() -> dict[str, Any] | None:
        obj = kubectl_json(state, "get", "spoutpipeline", "noimage", "-n", workers_namespace)
        current = condition(obj, "Ready").get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and condition(obj, "Ready").get("status") == "True" else None

    obj = wait_for(state, "Ready with the image fixed", ready_again, 180, spaces)
    assert obj["status"]["workers"] == "2/2"
    assert obj["status"]["spout"]["workers"] == {"ready": 1, "total": 1}
    assert readers(obj) == ("Current", "Healthy")


def _created(pod: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))


def test_a_crashing_worker_shows_crash_loop_back_off_and_its_last_words(
    node_stack: State, workers_namespace: str
) -> None:
    """A worker container that exits (here the user container's command, replaced through
    podPatch, writes why to /dev/termination-log and exits 3): CrashLoopBackOff, with the
    container's message. (A transform.cmd that exits does not do this in pachd 2.6: the worker
    runs it as a child process and retries it inside a running container.)"""
    state = node_stack
    spaces = (workers_namespace, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    said = "cannot reach the message source"
    body = pair("crashing")
    command = ["sh", "-c", f"echo {said} > /dev/termination-log; echo boom >&2; exit 3"]
    body["spec"]["spout"]["podPatch"] = json.dumps(
        [{"op": "replace", "path": "/containers/0/command", "value": command}]
    )
    kubectl(state, "apply", "-n", workers_namespace, "-f", "-", input=json.dumps(body))

    def crash_loop() -> dict[str, Any] | None:
        obj = kubectl_json(state, "get", "spoutpipeline", "crashing", "-n", workers_namespace)
        return obj if condition(obj, "Ready").get("reason") == "CrashLoopBackOff" else None

    obj = wait_for(state, "Ready=False, CrashLoopBackOff", crash_loop, 180, spaces)
    ready, status = condition(obj, "Ready"), obj["status"]
    print(f"\n[e2e] pachd said {status['spout']['state']}; Ready: {ready['reason']}: {ready['message']}")
    assert ready["message"].endswith(
        f"CrashLoopBackOff: pod {_pod_of(state, 'crashing')}: container user: {said}"
    )
    assert status["spout"]["workers"] == {
        "ready": 0,
        "total": 1,
        "reason": "CrashLoopBackOff",
        "message": f"pod {_pod_of(state, 'crashing')}: container user: {said}",
    }
    assert status["processor"]["workers"] == {"ready": 1, "total": 1}
    assert status["workers"] == "1/2"
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Synced"}
    assert readers(obj) == ("InProgress", "Degraded")
    capture("crash-loop", obj)
    print("$ kubectl get spp\n" + kubectl(state, "get", "spp", "-n", workers_namespace))


def _pod_of(state: State, pipeline: str) -> str:
    pods = kubectl_json(state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", f"pipelineName={pipeline}")[
        "items"
    ]
    names = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(names) == 1, names
    return str(names[0])


def capture(case: str, obj: dict[str, Any]) -> None:
    """SPOUT_OPERATOR_CAPTURE_ARGOCD=1: keep this real status as a case of the health script."""
    if os.environ.get("SPOUT_OPERATOR_CAPTURE_ARGOCD", "") in ("", "0"):
        return
    saved = json.loads(json.dumps(obj))
    saved["metadata"].pop("managedFields", None)
    saved["metadata"].get("annotations", {}).pop("kubectl.kubernetes.io/last-applied-configuration", None)
    (HEALTH / "testdata" / f"{case}.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))


def test_sample_delete_removes_pipelines_and_pods(node_stack: State, applied_sample: dict[str, Any]) -> None:
    state = node_stack
    kubectl(state, "delete", "spoutpipeline", "spout101", "-n", SAMPLE_NAMESPACE, "--timeout=120s")
    client = pachd_client(state)

    def gone() -> bool:
        pods = kubectl_json(state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", "app=pipeline")["items"]
        names = {p.pipeline.name for p in client.list_pipeline()}
        return not pods and not ({"spout", "processor"} & names)

    wait_for(state, "the pipelines and their pods to be gone", gone, 180, (PACHD_NAMESPACE,))


def test_an_allowed_secret_is_mounted_in_the_worker_and_a_refused_one_never_reaches_pachd(
    node_stack: State, workers_namespace: str
) -> None:
    """The connection's policy (issue 25): the Secret it grants is really mounted in the worker
    pod pachd starts; a Secret it does not grant stops the resource before pachd hears of it."""
    state = node_stack
    spaces = (workers_namespace, PACHD_NAMESPACE, SYSTEM_NAMESPACE)
    kubectl(
        state,
        "create",
        "secret",
        "generic",
        "source-creds",
        "-n",
        PACHD_NAMESPACE,
        "--from-literal=user=reader",
    )
    mounting = pair("mounting")
    mounting["spec"]["processor"]["transform"]["secrets"] = [{"name": "source-creds", "mountPath": "/creds"}]
    leaking = pair("leaking")
    leaking["spec"]["processor"]["transform"]["secrets"] = [
        {"name": "pachyderm-storage-secret", "mountPath": "/s"}
    ]
    for body in (mounting, leaking):
        kubectl(state, "apply", "-n", workers_namespace, "-f", "-", input=json.dumps(body))

    def stalled() -> Any:
        obj = kubectl_json(state, "get", "spoutpipeline", "leaking", "-n", workers_namespace)
        return obj if condition(obj, "Stalled").get("reason") == "PolicyDenied" else None

    refused = condition(wait_for(state, "leaking: Stalled, PolicyDenied", stalled, 120, spaces), "Stalled")
    assert "policy.secrets" in refused["message"] and "pachyderm-storage-secret" in refused["message"]

    def mounted() -> Any:
        pods = kubectl_json(
            state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", "pipelineName=mounting-processor"
        )
        for pod in pods["items"]:
            secrets = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
            user = next(c for c in pod["spec"]["containers"] if c["name"] == "user")
            mounts = {m["name"]: m["mountPath"] for m in user.get("volumeMounts", [])}
            found = [mounts.get(name) for name, secret in secrets.items() if secret == "source-creds"]
            if "/creds" in found and pod["status"].get("phase") == "Running":
                return pod
        return None

    pod = wait_for(state, "the granted Secret mounted in the processor's worker", mounted, 240, spaces)
    listing = kubectl(
        state,
        "exec",
        "-n",
        PACHD_NAMESPACE,
        pod["metadata"]["name"],
        "-c",
        "user",
        "--",
        "cat",
        "/creds/user",
    )
    assert listing.strip() == "reader"
    names = {p.pipeline.name for p in pachd_client(state).list_pipeline()}
    assert "mounting" in names and not {"leaking", "leaking-processor"} & names
