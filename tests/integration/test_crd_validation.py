"""The real API server refuses what the CRD says cannot be (issue 22's fields): a toleration in
Kubernetes' spelling, a port out of range, a datumSetSpec set two ways, an egress with two
targets. Each one is refused at `kubectl apply` with a message naming the field, before the
operator sees it. Server-side dry runs: nothing is stored."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from devstack.stack import State
from devstack.testing import kubectl
from kit import resource

pytestmark = pytest.mark.integration

TOLERATION = {"key": "dedicated", "operator": "EQUAL", "value": "ingest", "effect": "NO_SCHEDULE"}
SERVICE = {"internalPort": 8080, "externalPort": 8080, "type": "ClusterIP"}


def valid() -> dict[str, Any]:
    body = resource("checked", "sp-checked", "pr-checked")
    body["spec"]["spout"].update(service=dict(SERVICE), tolerations=[dict(TOLERATION)])
    body["spec"]["processor"].update(datumSetSpec={"number": 5}, egress={"URL": "s3://results/out"})
    return body


def dry_run(stack: State, namespace: str, body: dict[str, Any]) -> tuple[bool, str]:
    args = ("apply", "--dry-run=server", "-n", namespace, "-f", "-")
    out = kubectl(stack, *args, input=json.dumps(body), check=False)
    return "created (server dry run)" in out, out


def test_a_resource_using_every_checked_field_rightly_is_accepted(
    stack: State, crd: None, namespace: str
) -> None:
    accepted, out = dry_run(stack, namespace, valid())
    assert accepted, out


# (what is wrong, the change to the valid resource, what the API server's message must say)
REFUSED = [
    (
        "toleration operator in Kubernetes' spelling",
        ("spout", "tolerations", [{**TOLERATION, "operator": "Equal"}]),
        ['spec.spout.tolerations[0].operator: Unsupported value: "Equal"', '"EXISTS", "EQUAL"'],
    ),
    (
        "toleration effect in Kubernetes' spelling",
        ("spout", "tolerations", [{**TOLERATION, "effect": "NoSchedule"}]),
        ['spec.spout.tolerations[0].effect: Unsupported value: "NoSchedule"', '"NO_SCHEDULE"'],
    ),
    (
        "internal port 0",
        ("spout", "service", {**SERVICE, "internalPort": 0}),
        ["spec.spout.service.internalPort: Invalid value: 0", "greater than or equal to 1"],
    ),
    (
        "external port 65536",
        ("spout", "service", {**SERVICE, "externalPort": 65536}),
        ["spec.spout.service.externalPort: Invalid value: 65536", "less than or equal to 65535"],
    ),
    (
        "datumSetSpec set two ways",
        ("processor", "datumSetSpec", {"number": 5, "perWorker": 2}),
        ["spec.processor.datumSetSpec", "datumSetSpec takes one of number, sizeBytes or perWorker"],
    ),
    (
        "egress with two targets",
        ("processor", "egress", {"URL": "s3://a/b", "sqlDatabase": {"url": "postgres://db:5432/x"}}),
        ["spec.processor.egress", "egress takes one target, URL, objectStorage or sqlDatabase"],
    ),
]


@pytest.mark.parametrize(("what", "change", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_api_server_refuses_what_the_crd_rules_out(
    stack: State, crd: None, namespace: str, what: str, change: tuple[str, str, Any], says: list[str]
) -> None:
    body = copy.deepcopy(valid())
    role, field, value = change
    body["spec"][role][field] = value
    accepted, out = dry_run(stack, namespace, body)
    assert not accepted, f"{what}: accepted\n{out}"
    assert 'The SpoutPipeline "checked" is invalid' in out, out
    for text in says:
        assert text in out, f"{what}: {text!r} not in\n{out}"
