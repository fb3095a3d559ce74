"""Two replicas, one leader: failover within a Lease's time, and a leader that lost its Lease
writes nothing (it would undo what the new leader applied)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from devstack import metrics
from devstack.stack import State
from devstack.testing import PACHD_WRITES, PASSES, STATUS_WRITES, OperatorProcess, counted, eventually
from faults.faultkit import Api, Pachd, body, figure, ready

pytestmark = pytest.mark.faults


def lease(stack: State, namespace: str) -> tuple[str, str]:
    """The Lease's holder and its last renewal ("" and "" while there is none)."""
    client = kubernetes.config.new_client_from_config(config_file=stack.kubeconfig)  # type: ignore[no-untyped-call]
    try:
        found: Any = kubernetes.client.CoordinationV1Api(client).read_namespaced_lease(
            "spout-operator", namespace
        )
    except kubernetes.client.ApiException:
        return "", ""
    return str(found.spec.holder_identity or ""), str(found.spec.renew_time or "")


def holder(stack: State, namespace: str) -> str:
    return lease(stack, namespace)[0]


def writes(operator: OperatorProcess) -> float:
    found = operator.scrape()
    return metrics.total(found, PACHD_WRITES) + metrics.total(found, STATUS_WRITES)


def leader(operator: OperatorProcess) -> float:
    """What the replica's own /metrics says: 1 leading, 0 standby (every replica serves them)."""
    return operator.scrape()["spout_operator_leader"]


# The per-resource data-flow series: only the replica that follows the resource's streams serves them.
FLOW_SERIES = ("spout_operator_processor_lag_commits", "spout_operator_data_flowing")


def flow_series(operator: OperatorProcess, name: str) -> set[str]:
    """Which of FLOW_SERIES the replica serves for the resource `name`."""
    return {
        key.partition("{")[0]
        for key in operator.scrape()
        if key.partition("{")[0] in FLOW_SERIES and f'name="{name}"' in key
    }


def test_the_standby_takes_over_and_a_leader_that_lost_its_lease_writes_nothing(
    stack: State, ns: str, prefix: str, operators: Callable[..., OperatorProcess]
) -> None:
    api, pachd = Api(stack, ns), Pachd(stack)
    election = {"SPOUT_OPERATOR_LEADER_ELECTION": "true", "SPOUT_OPERATOR_LEASE_NAMESPACE": ns}
    a = operators(POD_NAME="replica-a", **election)
    a.wait_healthy()
    eventually(lambda: holder(stack, ns) == "replica-a", 30, what="replica-a leads")
    b = operators(POD_NAME="replica-b", **election)
    b.wait_healthy()
    assert b.health() == {"standby": True}
    # Both replicas serve /metrics (a ServiceMonitor over both pods has no target down), and
    # exactly one says it leads.
    assert (leader(a), leader(b)) == (1, 0)

    one = body("one", prefix)
    one["spec"]["expectations"] = {"maxLag": 100}  # judged: the leader serves data_flowing too
    api.create(one)
    eventually(lambda: ready(api.get("one")), 120, what="one Ready")
    both = set(FLOW_SERIES)
    eventually(lambda: flow_series(a, "one") == both, 60, what="replica-a serving one's data flow")
    assert flow_series(b, "one") == set()  # the standby follows no stream
    spout, processor = f"{prefix}-one-s", f"{prefix}-one-p"
    assert writes(a) > 0
    # A few of b's campaign rounds (b tries as often as a renews, every 2 s): while a renews
    # twice, b stays the standby, and it runs no kopf at all.
    renewals = {lease(stack, ns)[1]}

    def renewed_twice() -> bool:
        renewals.add(lease(stack, ns)[1])
        return len(renewals) >= 3

    eventually(renewed_twice, 30, 0.2, what="replica-a renewing its Lease twice")
    assert holder(stack, ns) == "replica-a" and b.health() == {"standby": True}

    # The leader freezes (a long GC pause, a stalled node): the standby takes over.
    written_by_a = writes(a)
    frozen_at = time.monotonic()
    with a.paused():
        eventually(lambda: holder(stack, ns) == "replica-b", 60, 0.2, what="replica-b leads")
        failover_s = time.monotonic() - frozen_at
        assert leader(b) == 1
        api.patch("one", {"spec": {"processor": {"transform": {"env": {"BY": "b"}}}}})
        eventually(
            lambda: dict(pachd.pipelines(prefix)[processor].details.transform.env) == {"BY": "b"},
            120,
            what="replica-b applied the edit",
        )
        eventually(lambda: ready(api.get("one")), 120, what="one Ready under replica-b")
        versions = {n: p.version for n, p in pachd.pipelines(prefix).items()}
    thawed_at = time.monotonic()
    # Thawed, a still runs kopf with the old spec in memory; its Lease is 20 s stale. It
    # must write nothing: not revert the processor, not rewrite the status.
    eventually(lambda: a.health() == {"standby": True}, 60, 0.2, what="replica-a back to standby")
    figure("stale_leader_stepped_down_s", round(time.monotonic() - thawed_at, 2))
    # The stepped-down replica still serves /metrics, says it does not lead, and answers for no
    # resource (no frozen gauges); the new leader counts the resource.
    stale, current = a.scrape(), b.scrape()
    assert (stale["spout_operator_leader"], current["spout_operator_leader"]) == (0, 1)
    assert stale.get('spout_operator_resources{ready="True"}', 0) == 0
    assert current['spout_operator_resources_by_condition{condition="Ready",status="True"}'] == 1
    # Nor any per-resource data-flow series (runtime.stop closes the flow streams, which
    # removes their gauges): one resource's lag is served by the leader only, never twice.
    assert flow_series(a, "one") == set()
    eventually(lambda: flow_series(b, "one") == both, 60, what="replica-b serving one's data flow")
    counted(b.scrape, PASSES, 3, 60, trigger="drift")  # three sweeps of b
    assert writes(a) == written_by_a  # not one pachd or status write since it froze
    assert {n: p.version for n, p in pachd.pipelines(prefix).items()} == versions
    assert dict(pachd.pipelines(prefix)[processor].details.transform.env) == {"BY": "b"}
    assert spout in pachd.pipelines(prefix)
    assert "Lease lost by replica-a" in a.output()
    assert holder(stack, ns) == "replica-b"

    # The new leader dies without a word (SIGKILL): a takes over within a Lease's time.
    killed_at = time.monotonic()
    b.kill()
    eventually(lambda: holder(stack, ns) == "replica-a", 60, 0.2, what="replica-a leads again")
    kill_failover_s = time.monotonic() - killed_at
    api.patch("one", {"spec": {"processor": {"transform": {"env": {"BY": "a"}}}}})
    eventually(
        lambda: dict(pachd.pipelines(prefix)[processor].details.transform.env) == {"BY": "a"},
        120,
        what="replica-a applied the edit",
    )
    # A clean stop releases the Lease: the other replica leads at its next try.
    c = operators(POD_NAME="replica-c", **election)
    c.wait_healthy()
    stopped_at = time.monotonic()
    a.terminate()
    eventually(lambda: holder(stack, ns) == "replica-c", 30, 0.2, what="replica-c leads")
    release_failover_s = time.monotonic() - stopped_at
    figure("failover_after_freeze_s", round(failover_s, 1))
    figure("failover_after_sigkill_s", round(kill_failover_s, 1))
    figure("failover_after_sigterm_s", round(release_failover_s, 1))
    # Within the 15 s Lease (the contract), plus slack for a loaded machine's API server.
    assert kill_failover_s < 15 + 5, kill_failover_s
