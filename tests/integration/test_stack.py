"""Smoke tier: the local stack is a real Kubernetes API server and a real pachd."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

import pytest
import python_pachyderm
from devstack import build
from devstack.stack import State
from devstack.testing import eventually, kubectl
from python_pachyderm.proto.v2.pps import pps_pb2

pytestmark = pytest.mark.integration

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.example.com}
spec:
  group: smoke.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer}}}
"""

# Upstream spout101's pipelines/spout.json and pipelines/processor.json (2.1+).
SPOUT_JSON = {
    "pipeline": {"name": "spout"},
    "description": "A spout pipeline that emulates the reception of data from an external source",
    "transform": {"cmd": ["python", "consumer/main.py"], "image": "pachyderm/example-spout101:2.0.1"},
    "spout": {},
}
PROCESSOR_JSON = {
    "pipeline": {"name": "processor"},
    "description": "A pipeline that sorts 1KB vs 2KB files",
    "input": {"pfs": {"repo": "spout", "branch": "master", "glob": "/*"}},
    "transform": {"cmd": ["python", "processor/main.py"], "image": "pachyderm/example-spout101:2.0.1"},
}


def test_kubectl_manages_custom_resources(stack: State, namespace: str) -> None:
    kubectl(stack, "apply", "-f", "-", input=WIDGET_CRD)
    eventually(
        lambda: (
            "Established"
            in kubectl(
                stack,
                "get",
                "crd",
                "widgets.smoke.example.com",
                "-o",
                "jsonpath={.status.conditions[*].type}",
            )
        ),
        what="CRD established",
    )
    widget = {
        "apiVersion": "smoke.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(widget))
    listed = json.loads(kubectl(stack, "get", "widgets", "-n", namespace, "-o", "json"))
    assert [(w["metadata"]["name"], w["spec"]["size"]) for w in listed["items"]] == [("w1", 3)]
    kubectl(stack, "delete", "widget", "w1", "-n", namespace)
    assert "No resources found" in kubectl(stack, "get", "widgets", "-n", namespace)


def test_deleted_namespace_disappears(stack: State) -> None:
    kubectl(stack, "create", "namespace", "smoke-doomed")
    kubectl(stack, "create", "configmap", "c", "-n", "smoke-doomed")
    kubectl(stack, "delete", "namespace", "smoke-doomed", "--wait=false")
    # Only the namespace controller of kube-controller-manager can finish this.
    eventually(
        lambda: "NotFound" in kubectl(stack, "get", "namespace", "smoke-doomed", check=False),
        timeout_s=90,
        what="namespace smoke-doomed to be gone",
    )


def _states(client: Any) -> dict[str, str]:
    return {p.pipeline.name: pps_pb2.PipelineState.Name(p.state) for p in client.list_pipeline()}


def test_spout101_pipelines_run_in_pachd(stack: State, pachd_client: Any) -> None:
    namespace = stack.pachds[0].namespace
    try:
        for spec in (SPOUT_JSON, PROCESSOR_JSON):
            pachd_client.create_pipeline_from_request(python_pachyderm.parse_dict_pipeline_spec(spec))
        eventually(
            lambda: _states(pachd_client) == {"spout": "PIPELINE_RUNNING", "processor": "PIPELINE_RUNNING"},
            timeout_s=90,
            what="both pipelines RUNNING",
        )

        # pachd's pipeline controller created real objects through the API server.
        objects = kubectl(stack, "get", "secret,service,replicationcontroller", "-n", namespace, "-o", "name")
        assert "replicationcontroller/default-spout-v1" in objects
        assert "replicationcontroller/default-processor-v1" in objects
        assert "service/default-processor-v1" in objects
        assert "secret/spout-pachctl-secret-default-spout" in objects  # the spout's pachctl config

        pachctl = subprocess.run(
            [str(build.program("pachctl").path), "list", "pipeline"],
            env={"PACH_CONFIG": stack.pachctl_config, "PATH": "/usr/bin:/bin", "HOME": stack.root},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        names = {line.split()[1] for line in pachctl.stdout.splitlines()[1:]}
        assert names == {"spout", "processor"}

        # pachd 2.x lets only the spout's own worker sidecar commit to its output branch.
        with pytest.raises(Exception, match="cannot start a commit on an output branch"):
            pachd_client.start_commit("spout", "master")
    finally:
        for name in ("processor", "spout"):
            pachd_client.delete_pipeline(name, force=True)


def test_client_commit_of_two_files_is_listed(pachd_client: Any) -> None:
    repo = f"smoke_{uuid.uuid4().hex[:8]}"
    pachd_client.create_repo(repo)
    try:
        with pachd_client.commit(repo, "master") as commit:
            pachd_client.put_file_bytes(commit, "/a.txt", b"a" * 1024)
            pachd_client.put_file_bytes(commit, "/b.txt", b"b" * 2048)
        files = {(f.file.path, f.size_bytes) for f in pachd_client.list_file((repo, "master"), "/")}
        assert files == {("/a.txt", 1024), ("/b.txt", 2048)}
    finally:
        pachd_client.delete_repo(repo, force=True)


def test_several_pachd_instances_each_in_a_network_namespace(
    stack_prerequisites: None, tmp_path: Any
) -> None:
    """K pachds on one machine (pachd 2.6 pins port 1658, so each gets a namespace)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    from devstack.stack import Stack

    second = Stack(tmp_path / "k2")
    try:
        state = second.up(pachd_count=2)
        assert len({p.address for p in state.pachds}) == 2
        for pachd in state.pachds:
            client = python_pachyderm.Client(pachd.host, pachd.port)
            client.create_pipeline_from_request(
                python_pachyderm.parse_dict_pipeline_spec(
                    {"pipeline": {"name": "s"}, "transform": {"image": "a", "cmd": ["x"]}, "spout": {}}
                )
            )
            eventually(lambda c=client: _states(c) == {"s": "PIPELINE_RUNNING"}, 60, what=f"{pachd.address}")
        netns = [p.netns for p in state.pachds]
    finally:
        second.down()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in netns)
