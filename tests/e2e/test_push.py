"""End to end, issue 22: a spout producers push to, and the new pipeline-spec fields in real pods.

The operator runs in-process (this worktree's code) against a stack with a node; pachd makes the
worker pods, the kubelet runs them. Producers reach the spout as a pod of the cluster would:
through the Service pachd makes for `spout.service` (its endpoints, from the node's network,
where the pods' bridge is; the node has no kube-proxy, only stand-ins for the stack's own
Services).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from devstack import images
from devstack.stack import State
from devstack.testing import annotate
from nodefixtures import PACHD_NAMESPACE, ROOT, kubectl, kubectl_json, node_prerequisites, node_stack
from nodefixtures import wait_for as wait_for_in
from spout_operator.render import push_address
from spout_operator.spec import parse

__all__ = ["node_prerequisites", "node_stack"]

pytestmark = pytest.mark.e2e

NAMESPACE = "e2e-push"
OPERATOR_NAMESPACE = "spout-operator-system"
CONNECTION = "push-e2e"
NODE_LABEL = "kubernetes.io/hostname"
TOLERATION = {"key": "e2e-dedicated", "operator": "EXISTS", "effect": "NO_SCHEDULE"}


def wait_for(state: State, what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    return wait_for_in(state, what, check, timeout_s, (NAMESPACE, PACHD_NAMESPACE))


@pytest.fixture(scope="module")
def operator(node_stack: State) -> Iterator[State]:
    """CRDs, a connection granting what these tests declare, and the operator in-process."""
    import kopf
    from kopf.testing import KopfRunner

    state = node_stack
    kubectl(state, "apply", "-k", str(ROOT / "crds"))

    def established(plural: str) -> bool:
        args = ("wait", "--for=condition=Established", f"crd/{plural}.spout-operator.dev")
        return "condition met" in kubectl(state, *args, check=False)

    for plural in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
        wait_for(state, f"CRD {plural} established", functools.partial(established, plural), 60)
    for namespace in (OPERATOR_NAMESPACE, NAMESPACE):
        kubectl(state, "create", "namespace", namespace, check=False)
    connection = {
        "apiVersion": "spout-operator.dev/v1alpha1",
        "kind": "ClusterPachdConnection",
        "metadata": {"name": CONNECTION},
        "spec": {
            "address": state.pachds[0].address,
            "namespaces": [NAMESPACE],
            "policy": {
                "projects": {"allowDefault": True},
                "scheduling": {"nodeSelector": {NODE_LABEL: ["*"]}, "tolerationKeys": ["e2e-dedicated"]},
            },
        },
    }
    kubectl(state, "apply", "-f", "-", input=json.dumps(connection))
    os.environ.update(
        {
            "SPOUT_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
            "SPOUT_OPERATOR_WORKER_NAMESPACES": PACHD_NAMESPACE,
            "SPOUT_OPERATOR_CONNECTION_CHECK_SECONDS": "2",
            "SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS": "2",
            "SPOUT_OPERATOR_RETRY_DELAY_SECONDS": "2",
            "SPOUT_OPERATOR_METRICS_PORT": "0",
        }
    )
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    args = ["run", "--standalone", "--namespace", NAMESPACE, "-m", "spout_operator.handlers"]
    with KopfRunner(args, timeout=120, settings=settings) as runner:
        try:
            yield state
        finally:
            kubectl(state, "delete", "spoutpipeline", "--all", "-n", NAMESPACE, "--timeout=180s", check=False)
    assert runner.exception is None, runner.output[-3000:]


def pachd_client(state: State) -> Any:
    import python_pachyderm

    return python_pachyderm.Client(state.pachds[0].host, state.pachds[0].port)


def push_sample() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "crds" / "samples" / "push.yaml").read_text())
    spec = body["spec"]
    spec["connectionRef"] = {"name": CONNECTION}
    for part in ("spout", "processor"):
        spec[part]["resourceRequests"] = {"cpu": 0.2, "memory": "128Mi"}  # two cores, several pods
    spec["spout"]["schedulingSpec"] = {"nodeSelector": {NODE_LABEL: "devstack-node"}}
    spec["spout"]["tolerations"] = [TOLERATION]
    return body


def ready(state: State, name: str) -> dict[str, Any] | None:
    obj = kubectl_json(state, "get", "spoutpipeline", name, "-n", NAMESPACE)
    conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
    current = conditions.get("Ready", {}).get("observedGeneration") == obj["metadata"]["generation"]
    return obj if current and conditions["Ready"]["status"] == "True" else None


def pods_of(state: State, pipeline: str) -> list[dict[str, Any]]:
    pods = kubectl_json(state, "get", "pods", "-n", PACHD_NAMESPACE, "-l", f"pipelineName={pipeline}")
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def in_node_network(
    state: State, script: str, stdin: bytes, timeout_s: float
) -> subprocess.CompletedProcess[bytes]:
    """`python3 -c script` in the node's network namespace (where pod addresses route)."""
    assert state.node is not None
    return subprocess.run(
        ["ip", "netns", "exec", state.node.netns, "python3", "-c", script],
        input=stdin,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )


def routed(state: State, address: str) -> str | None:
    """What cluster DNS and kube-proxy make of `<service>.<namespace>.svc:<port>`: a ready
    endpoint of that Service's port (None while it has none)."""
    host, _, port = address.rpartition(":")
    service_name, namespace, suffix = host.split(".")
    assert suffix == "svc", address
    service = kubectl_json(state, "get", "service", service_name, "-n", namespace)
    (target_port,) = [p["targetPort"] for p in service["spec"]["ports"] if p["port"] == int(port)]
    found = kubectl_json(state, "get", "endpoints", service_name, "-n", namespace)
    ready_addresses = [
        f"{a['ip']}:{target_port}"
        for subset in found.get("subsets") or []
        if target_port in [p["port"] for p in subset.get("ports") or []]
        for a in subset.get("addresses") or []
    ]
    return ready_addresses[0] if ready_addresses else None


def post_from_the_node(state: State, address: str, body: bytes) -> dict[str, Any]:
    """POST from the node's network namespace (where pod addresses route), as a producer pod would."""
    script = (
        "import sys, urllib.request\n"
        f"url = 'http://{address}/'\n"
        "request = urllib.request.Request(url, data=sys.stdin.buffer.read(), method='POST')\n"
        "with urllib.request.urlopen(request, timeout=30) as response:\n"
        "    print(response.status, response.read().decode())\n"
    )
    result = in_node_network(state, script, body, timeout_s=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    status, _, answer = result.stdout.decode().partition(" ")
    assert status == "201", result.stdout
    parsed: dict[str, Any] = json.loads(answer)
    return parsed


def test_messages_pushed_to_the_spout_service_are_committed_and_processed(operator: State) -> None:
    from python_pachyderm.pfs import Commit
    from python_pachyderm.proto.v2.pps import pps_pb2

    state = operator
    body = push_sample()
    kubectl(state, "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(body))
    obj = wait_for(state, "the push pair Ready with its workers", lambda: ready(state, "push"), 300)

    # The toleration and the node selector reached the spout's worker pod.
    (pod,) = pods_of(state, "push")
    assert pod["spec"]["nodeSelector"] == {NODE_LABEL: "devstack-node"}
    assert {"key": "e2e-dedicated", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]

    # Status says where to push: the Service pachd made for spout.service, of the running version.
    version = obj["status"]["spout"]["version"]
    address = obj["status"]["pushAddress"]
    assert address == push_address(parse(body["spec"], "push"), PACHD_NAMESPACE, version)
    assert address == f"default-push-v{version}-user.{PACHD_NAMESPACE}.svc:8080"
    print(f"\n[e2e] push address {address}")
    # Producers post to that address; the node has no cluster DNS and no kube-proxy, so the
    # test resolves it as they would: name -> Service -> the pod behind its port.
    service = kubectl_json(state, "get", "service", address.split(".", 1)[0], "-n", PACHD_NAMESPACE)
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, 8080)]
    target = wait_for(state, "the pod behind the push address", lambda: routed(state, address), 120)

    def health() -> bool:
        url = f"http://{target}/healthz"
        probe = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).status)"
        return in_node_network(state, probe, b"", timeout_s=30).stdout.decode().strip() == "200"

    wait_for(state, "the receiver answering on its service port", health, 120)

    messages = [os.urandom(1024), os.urandom(2048), os.urandom(1024)]
    answers = [post_from_the_node(state, target, message) for message in messages]
    client = pachd_client(state)
    for message, answer in zip(messages, answers, strict=True):
        # Acknowledged means committed: the commit is finished and holds exactly that message.
        commit = Commit(repo="push", id=answer["commit"], project="default")
        info = next(iter(client.inspect_commit(commit)))
        assert info.finished.seconds > 0
        assert client.get_file(commit, "/" + answer["file"]).read() == message
    assert len({a["commit"] for a in answers}) == len(messages)  # one commit per message

    ended = (pps_pb2.JOB_FAILURE, pps_pb2.JOB_SUCCESS, pps_pb2.JOB_KILLED, pps_pb2.JOB_UNRUNNABLE)
    last = answers[-1]["commit"]

    def job_done() -> Any:
        job = next(iter(client.inspect_job(last, "push-processor")), None)
        return job if job is not None and job.state in ended else None

    job = wait_for(state, f"the processor's job for {last}", job_done, 300)
    assert job.state == pps_pb2.JOB_SUCCESS, (job.state, job.reason)
    processed = {
        f.file.path.rsplit("/", 1)[1]
        for directory in ("/1K.txt/", "/2K.txt/")
        for f in client.list_file(Commit(repo="push-processor", id=last, project="default"), directory)
    }
    assert processed == {a["file"] for a in answers}

    # Nothing was updated since the pair was created, though the operator compared every field
    # with what pachd stores every few seconds all along; and a re-apply writes nothing either.
    before = {
        p.pipeline.name: p.version for p in client.list_pipeline() if p.pipeline.name.startswith("push")
    }
    assert before == {"push": 1, "push-processor": 1}
    kubectl(state, "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(body))
    annotate(state, NAMESPACE, "push", "e2e/nudge=1")
    wait_for(state, "the pair Ready again", lambda: ready(state, "push"), 60)
    after = {p.pipeline.name: p.version for p in client.list_pipeline() if p.pipeline.name.startswith("push")}
    assert after == before


def test_a_job_longer_than_its_job_timeout_is_killed(operator: State) -> None:
    """pachd's worker stops a job once jobTimeout has passed since it started (StopJob, reason
    " jobtimed out" in 2.6): the job ends KILLED."""
    from python_pachyderm.proto.v2.pps import pps_pb2

    state = operator
    image = images.SPOUT101_IMAGE  # the image `make images` loaded into the node (VERSION's tag)
    body = {
        "apiVersion": "spout-operator.dev/v1alpha1",
        "kind": "SpoutPipeline",
        "metadata": {"name": "slow"},
        "spec": {
            "connectionRef": {"name": CONNECTION},
            "spout": {
                "transform": {
                    "image": image,
                    "cmd": ["python", "-m", "spout101.consumer"],
                    "env": {"SPOUT_INTERVAL_MIN": "2", "SPOUT_INTERVAL_MAX": "3"},
                },
                "resourceRequests": {"cpu": 0.2, "memory": "128Mi"},
            },
            "processor": {
                "transform": {"image": image, "cmd": ["python", "-c", "import time; time.sleep(600)"]},
                "jobTimeout": "15s",
                "resourceRequests": {"cpu": 0.2, "memory": "128Mi"},
            },
        },
    }
    kubectl(state, "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(body))
    client = pachd_client(state)

    def killed() -> Any:
        jobs = list(client.list_job("slow-processor"))
        return next((j for j in jobs if j.state == pps_pb2.JOB_KILLED), None)

    job = wait_for(state, "a processor job killed by its jobTimeout", killed, 300)
    stored = next(iter(client.inspect_pipeline("slow-processor", details=True)))
    assert stored.details.job_timeout.seconds == 15
    assert "timed out" in job.reason, job.reason
    started, finished = job.started.ToDatetime(), job.finished.ToDatetime()
    assert (finished - started).total_seconds() < 120, (started, finished)  # not the 600 s of work
    print(f"\n[e2e] job {job.job.id} {pps_pb2.JobState.Name(job.state)}: {job.reason.strip()}")

    # Status says so: the killed job's output commit, which pachd finished with its reason.
    def shown_failure() -> dict[str, Any] | None:
        obj = kubectl_json(state, "get", "spoutpipeline", "slow", "-n", NAMESPACE)
        failure: dict[str, Any] | None = obj.get("status", {}).get("dataFlow", {}).get("lastFailure")
        return failure

    failure = wait_for(state, "status.dataFlow.lastFailure", shown_failure, 120)
    killed_ids = {j.job.id for j in client.list_job("slow-processor") if j.state == pps_pb2.JOB_KILLED}
    assert failure["commit"] in killed_ids, (failure, killed_ids)
    assert "timed out" in failure["reason"], failure
    print(f"[e2e] status.dataFlow.lastFailure {failure}")
