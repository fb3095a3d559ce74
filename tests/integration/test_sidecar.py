"""A spout's storage sidecar, run locally, lets client code commit to the spout's output branch."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import python_pachyderm
from devstack.sidecar import start_spout_sidecar, stop_spout_sidecar
from devstack.stack import State
from devstack.testing import eventually, kubectl

pytestmark = pytest.mark.integration


def test_sidecar_commits_to_spout_output_branch(stack: State, pachd_client: Any) -> None:
    pipeline = f"sidecar-{uuid.uuid4().hex[:8]}"
    pachd = stack.pachds[0]
    spec = {"pipeline": {"name": pipeline}, "transform": {"cmd": ["true"], "image": "busybox"}, "spout": {}}
    pachd_client.create_pipeline_from_request(python_pachyderm.parse_dict_pipeline_spec(spec))
    try:
        eventually(
            lambda: json.loads(
                kubectl(
                    stack, "get", "rc", "-n", pachd.namespace, "-l", f"pipelineName={pipeline}", "-o", "json"
                )
            )["items"],
            what=f"pachd to create the worker RC of {pipeline}",
        )
        sidecar = start_spout_sidecar(stack, pachd, pipeline)
        try:
            assert stack.pids[sidecar.name] == sidecar.pid  # so Stack.down() would stop it too
            config = json.loads(Path(sidecar.pachctl_config).read_text())
            assert config["v2"]["contexts"]["default"]["pachd_address"] == f"127.0.0.1:{sidecar.port}"

            client = python_pachyderm.Client.new_from_pachd_address(sidecar.address)
            with client.commit(pipeline, "master") as commit:
                client.put_file_bytes(commit, "/a.txt", b"a" * 1024)
                client.put_file_bytes(commit, "/b.txt", b"b" * 2048)

            files = {(f.file.path, f.size_bytes) for f in pachd_client.list_file((pipeline, "master"), "/")}
            assert files == {("/a.txt", 1024), ("/b.txt", 2048)}
            assert len(list(pachd_client.list_commit(pipeline))) >= 1
        finally:
            stop_spout_sidecar(stack, sidecar)
        assert sidecar.name not in stack.pids
    finally:
        pachd_client.delete_pipeline(pipeline, force=True)
