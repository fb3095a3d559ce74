"""The operating handles on the real stack (issue 21): pause (and still delete), reconcile
now, restart now; automatic restarts of a quiet spout. Annotations: no generation change, no
pachd call of the user's own."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from devstack.stack import State
from devstack.testing import PAUSED, annotate, eventually, kubectl
from kit import apply, apply_ready, condition, get, pipelines, resource, scrape, versions, wait_condition

pytestmark = pytest.mark.integration


def drift_passes() -> float:
    return sum(
        v
        for k, v in scrape().items()
        if k.startswith("spout_operator_reconciles_total{") and 'trigger="drift"' in k
    )


def after_sweeps(count: int) -> None:
    """Until the operator has run `count` more sweep passes (its own counter, not a sleep)."""
    start = drift_passes()
    eventually(lambda: drift_passes() >= start + count, 60, what=f"{count} more sweep passes")


def test_a_paused_resource_is_observed_not_repaired_and_one_pass_repairs_it_after(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    apply_ready(stack, namespace, resource("held", spout, processor))
    annotate(stack, namespace, "held", f"{PAUSED}=true")
    eventually(lambda: get(stack, namespace, "held")["status"].get("paused"), 10, what="paused in status")
    pachd_client.delete_pipeline(processor)
    pachd_client.stop_pipeline(spout)
    obj = wait_condition(stack, namespace, "held", "Ready", "False")
    eventually(
        lambda: get(stack, namespace, "held")["status"]["processor"]["state"] == "Missing",
        30,
        what="reported",
    )
    after_sweeps(2)
    assert processor not in pipelines(pachd_client, processor)  # nothing repaired while paused
    assert pipelines(pachd_client, spout)[spout].stopped
    synced = {c["type"]: c for c in get(stack, namespace, "held")["status"]["conditions"]}["Synced"]
    assert synced["reason"] == "ReconcilePaused" and f"create {processor}" in synced["message"]
    assert obj["metadata"]["generation"] == 1  # no generation trick
    annotate(stack, namespace, "held", f"{PAUSED}-")
    resumed_at = time.monotonic()
    wait_condition(stack, namespace, "held", "Ready", "True", timeout_s=30)
    assert time.monotonic() - resumed_at < 20  # one pass, not a wait for some later sweep
    assert not pipelines(pachd_client, spout)[spout].stopped
    events = kubectl(stack, "get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}")
    assert events.split().count("ReconcilePaused") == 1 and "ReconcileResumed" in events


def test_a_paused_resource_deletes_alone_and_with_its_namespace(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    for name, suffix in (("alone", "a"), ("with-ns", "b")):
        apply_ready(stack, namespace, resource(name, f"{spout}{suffix}", f"{processor}{suffix}"))
        annotate(stack, namespace, name, f"{PAUSED}=true")
    eventually(lambda: get(stack, namespace, "with-ns")["status"].get("paused"), 10, what="paused")
    kubectl(stack, "delete", "spoutpipeline", "alone", "-n", namespace, "--timeout=60s")
    assert pipelines(pachd_client, f"{spout}a", f"{processor}a") == {}
    kubectl(stack, "delete", "namespace", namespace, "--timeout=90s")
    assert pipelines(pachd_client, f"{spout}b", f"{processor}b") == {}


def test_a_reconcile_token_is_acknowledged_within_a_second(
    stack: State, namespace: str, names: tuple[str, str], operator: Any
) -> None:
    spout, processor = names
    apply_ready(stack, namespace, resource("asked", spout, processor))
    token = f"now-{time.time_ns()}"
    annotate(stack, namespace, "asked", f"spout-operator.dev/reconcile-requested-at={token}")
    asked = time.monotonic()
    eventually(
        lambda: get(stack, namespace, "asked")["status"].get("lastHandledReconcileAt") == token,
        10,
        0.05,
        what="ack",
    )
    assert time.monotonic() - asked < 1.0


def test_a_restart_token_restarts_once_with_the_version_unchanged_and_no_repair(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    apply_ready(stack, namespace, resource("kicked", spout, processor))
    versions = {name: pipelines(pachd_client, name)[name].version for name in (spout, processor)}
    before = scrape()
    annotate(stack, namespace, "kicked", "spout-operator.dev/restart-spout=1")
    eventually(
        lambda: (
            (get(stack, namespace, "kicked")["status"].get("restarts") or {}).get("spout", {}).get("token")
            == "1"
        ),
        30,
        what="restart acknowledged",
    )
    obj = wait_condition(stack, namespace, "kicked", "Ready", "True")
    assert obj["status"]["restarts"]["spout"]["outcome"] == "Restarted"
    assert {name: pipelines(pachd_client, name)[name].version for name in (spout, processor)} == versions
    after_sweeps(1)
    after = scrape()
    assert obj["status"]["driftRepairs"] == 0
    assert after.get("spout_operator_drift_repairs_total", 0) == before.get(
        "spout_operator_drift_repairs_total", 0
    )
    assert (
        after['spout_operator_pipeline_restarts_total{kind="requested"}']
        - before.get('spout_operator_pipeline_restarts_total{kind="requested"}', 0)
        == 1
    )
    # Refused while paused, and said so
    annotate(stack, namespace, "kicked", f"{PAUSED}=true", "spout-operator.dev/restart-processor=2")
    eventually(
        lambda: (
            (get(stack, namespace, "kicked")["status"].get("restarts") or {})
            .get("processor", {})
            .get("outcome")
            == "Refused"
        ),
        30,
        what="restart refused",
    )


def test_a_spout_quiet_beyond_its_expectation_is_restarted_automatically_up_to_the_limit(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    """No node on this stack: the spout never commits, so with commitWithinSeconds 1 it is
    quiet as soon as its streams answered. autoRestart restarts the spout (only) once, its
    maximum, then says Stalled=True, AutoRestartLimit; the versions stay."""
    spout, processor = names
    before = scrape()
    policy = {"enabled": True, "afterSeconds": 0, "maxRestarts": 1, "backoffSeconds": 0}
    apply(
        stack,
        namespace,
        resource("quiet", spout, processor, expectations={"commitWithinSeconds": 1}, autoRestart=policy),
    )
    obj = wait_condition(stack, namespace, "quiet", "Stalled", "True", timeout_s=60)
    assert condition(obj, "Stalled")["reason"] == "AutoRestartLimit"
    assert condition(obj, "DataFlowing")["reason"] == "SpoutQuiet"
    assert obj["status"]["autoRestart"]["restarts"] == 1
    assert versions(pachd_client, spout, processor) == {spout: 1, processor: 1}
    after_sweeps(3)  # and no more: pachd's own commit at the restart is no health that resets it
    after = scrape()
    kind = 'spout_operator_pipeline_restarts_total{kind="automatic"}'
    assert after[kind] - before.get(kind, 0) == 1
    events = json.loads(kubectl(stack, "get", "events", "-n", namespace, "-o", "json"))["items"]
    restarted = [e["message"] for e in events if e["reason"] == "AutoRestarted"]
    assert len(restarted) == 1 and f"pipeline {spout} restarted after not committing" in restarted[0]
