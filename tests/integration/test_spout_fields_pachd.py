"""The pipeline-spec fields of real spouts on the real pachd (issue 22): each one rendered
as pachd stores it, and a re-apply of the same resource writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from devstack.stack import State
from devstack.testing import PACHD_WRITES, counted
from kit import apply, connection, get, pipelines, resource, scrape, versions, wait_condition
from python_pachyderm.proto.v2.pps import pps_pb2

pytestmark = pytest.mark.integration

POLICY = {
    "projects": {"allowDefault": True},
    "scheduling": {
        "nodeSelector": {"disktype": ["ssd"]},
        "priorityClassNames": ["ingest"],
        "tolerationKeys": ["dedicated"],
    },
    "egress": {"allowed": True, "urls": ["s3://results/*"]},
    "s3Out": {"allowed": True},
}
TOLERATION = {"key": "dedicated", "operator": "EQUAL", "value": "ingest", "effect": "NO_SCHEDULE"}


def test_each_field_reaches_pachd_as_declared_and_a_reapply_writes_nothing(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    connection(stack, "fields", stack.pachds[0].address, namespace=namespace, policy=POLICY)
    spout, processor = names
    body = resource("fields", spout, processor)
    body["spec"]["connectionRef"] = {"kind": "PachdConnection", "name": "fields"}
    body["spec"]["spout"].update(
        service={"internalPort": 8080, "externalPort": 8081, "type": "ClusterIP"},
        schedulingSpec={"nodeSelector": {"disktype": "ssd"}, "priorityClassName": "ingest"},
        tolerations=[TOLERATION],
        sidecarResourceLimits={"cpu": 0.5, "memory": "256Mi"},
    )
    body["spec"]["processor"].update(
        datumTimeout="1m30s",
        jobTimeout="1h",
        datumSetSpec={"number": 5},
        reprocessSpec="every_job",
        sidecarResourceRequests={"cpu": 0.1, "memory": "64Mi"},
        egress={"URL": "s3://results/fields"},
        s3Out=True,
    )
    apply(stack, namespace, body)
    wait_condition(stack, namespace, "fields", "Ready", "True")
    found = pipelines(pachd_client, spout, processor)
    s, p = found[spout].details, found[processor].details
    assert (s.spout.service.internal_port, s.spout.service.external_port, s.spout.service.type) == (
        8080,
        8081,
        "ClusterIP",
    )
    assert dict(s.scheduling_spec.node_selector) == {"disktype": "ssd"}
    assert s.scheduling_spec.priority_class_name == "ingest"
    assert [(t.key, t.value) for t in s.tolerations] == [("dedicated", "ingest")]
    operator_, effect = s.tolerations[0].operator, s.tolerations[0].effect
    assert (pps_pb2.TolerationOperator.Name(operator_), pps_pb2.TaintEffect.Name(effect)) == (
        "EQUAL",
        "NO_SCHEDULE",
    )
    assert (s.sidecar_resource_limits.cpu, s.sidecar_resource_limits.memory) == (0.5, "256Mi")  # float32
    assert (p.datum_timeout.seconds, p.job_timeout.seconds) == (90, 3600)
    assert p.datum_set_spec.number == 5 and p.reprocess_spec == "every_job"
    # pachd keeps cpu as a float32: 0.1 comes back as 0.10000000149011612
    assert p.sidecar_resource_requests.cpu == pytest.approx(0.1)
    assert p.sidecar_resource_requests.memory == "64Mi"
    assert p.egress.URL == "s3://results/fields" and p.s3_out is True
    before, seen = scrape(), versions(pachd_client, spout, processor)
    apply(stack, namespace, body)  # the same resource again, then sweeps
    counted(scrape, "spout_operator_reconciles_total", 2, 60, trigger="drift")
    assert scrape().get(PACHD_WRITES, 0) == before.get(PACHD_WRITES, 0)
    assert versions(pachd_client, spout, processor) == seen == {spout: 1, processor: 1}
    assert get(stack, namespace, "fields")["status"]["driftRepairs"] == 0
