"""The operator, run in-process with kopf, against the real kube-apiserver and pachd."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import python_pachyderm
import yaml
from devstack.stack import State
from devstack.testing import PACHD_WRITES, PASSES, delta, eventually, kubectl
from kit import (
    SAMPLE,
    apply,
    apply_ready,
    condition,
    connection,
    get,
    passes,
    pipelines,
    ready_message,
    resource,
    running_operator,
    scrape,
    state_name,
    versions,
    wait_condition,
    wait_gone,
)

pytestmark = pytest.mark.integration


def change_processor_image(client: Any, spout: str, processor: str) -> None:
    """Update the processor's image behind the operator's back, keeping its owner annotation.
    (The processor: pachd 2.6.0 refuses any update of a spout that has a downstream pipeline.)"""
    info = pipelines(client, processor)[processor]
    changed = python_pachyderm.parse_dict_pipeline_spec(
        {
            "pipeline": {"name": processor},
            "transform": {"image": "busybox:1", "cmd": ["sh"]},
            "input": {"pfs": {"repo": spout, "glob": "/*"}},
            "metadata": {"annotations": dict(info.details.metadata.annotations)},
        }
    )
    changed.update = True
    client.create_pipeline_from_request(changed)


def test_apply_creates_both_pipelines_and_reports_ready(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    obj = apply_ready(stack, namespace, resource("pair", spout, processor))

    found = pipelines(pachd_client, spout, processor)
    assert {n: state_name(i) for n, i in found.items()} == {spout: "RUNNING", processor: "RUNNING"}
    assert found[processor].details.input.pfs.repo == spout
    assert found[spout].details.metadata.annotations["spout-operator.dev/owner"] == f"{namespace}/pair"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Synced")["status"] == "True"
    assert obj["status"]["spout"]["state"] == "RUNNING"
    assert obj["status"]["processor"]["version"] == 1

    table = kubectl(stack, "get", "spoutpipelines", "-n", namespace)
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME", "SPOUT", "SPOUT-STATE", "PROCESSOR", "PROCESSOR-STATE", "READY", "WORKERS",
        "LAST-COMMIT", "LAG", "AGE",
    ]  # fmt: skip
    # No node here (SPOUT_OPERATOR_WORKER_HEALTH=false): pachd's word, an empty WORKERS column.
    # No consumer runs either; the data flow shows what pachd itself committed to the spout's
    # output when it made the pipeline (LAST-COMMIT, LAG), where the status has it yet.
    assert row.split()[:6] == ["pair", spout, "RUNNING", processor, "RUNNING", "True"]
    assert "workers" not in obj["status"]

    def columns_match_status() -> bool:  # a pass may write the data flow between two reads
        flow = get(stack, namespace, "pair")["status"].get("dataFlow") or {}
        row = kubectl(stack, "get", "spoutpipelines", "-n", namespace).splitlines()[1]
        return len(row.split()) == 7 + ("lastCommitTime" in flow) + ("lag" in flow)

    eventually(columns_match_status, 30, what="the WORKERS column empty, the data flow's as in status")
    assert "workers" not in obj["status"]["spout"]


def test_reapply_and_operator_restart_leave_versions_unchanged(
    stack: State, namespace: str, crd: None, operator_env: None, pachd_client: Any, names: tuple[str, str]
) -> None:
    spout, processor = names
    body = resource("steady", spout, processor)
    with running_operator(namespace):
        apply_ready(stack, namespace, body)
        before = versions(pachd_client, spout, processor)
        assert "unchanged" in apply(stack, namespace, body)
        body["metadata"]["labels"] = {"touched": "yes"}  # a metadata-only change: no spec change
        apply(stack, namespace, body)
    counters = scrape()  # served since the first operator: one endpoint per process
    with running_operator(namespace) as runner:  # the resume handler reconciles everything again
        passes(1, counters, trigger="change")  # the resume pass
        after = passes(2, counters, trigger="drift")  # and a drift check or two
    assert "Handler 'apply' succeeded" in runner.output  # output is readable once it stopped
    assert versions(pachd_client, spout, processor) == before == {spout: 1, processor: 1}
    assert delta(counters, after, PACHD_WRITES) == 0


def test_spec_edit_updates_only_the_changed_pipeline(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    # Kept spelled out (here and in the other scenarios): the fixtures, the names and the resource
    # made are each scenario's first steps; a helper would hide what the test starts from.
    spout, processor = names
    body = resource("edit", spout, processor)
    apply_ready(stack, namespace, body)
    body["spec"]["processor"]["transform"]["env"] = {"LOG_LEVEL": "debug"}
    apply(stack, namespace, body)
    eventually(
        lambda: versions(pachd_client, spout, processor) == {spout: 1, processor: 2},
        60,
        what="processor at version 2",
    )
    info = pipelines(pachd_client, processor)[processor]
    assert dict(info.details.transform.env) == {"LOG_LEVEL": "debug"}
    # The status moves to the new generation as soon as the change is made (not only once
    # pachd has restarted the processor), then becomes Ready.
    eventually(lambda: get(stack, namespace, "edit")["status"]["observedGeneration"] == 2, 10)
    wait_condition(stack, namespace, "edit", "Ready", "True")
    counters = scrape()
    after = passes(2, counters, trigger="drift")  # two sweeps change nothing more
    assert versions(pachd_client, spout, processor) == {spout: 1, processor: 2}
    assert delta(counters, after, PACHD_WRITES) == 0


def test_drift_is_repaired(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    apply_ready(stack, namespace, resource("drift", spout, processor))

    # Deleted behind the operator's back -> recreated.
    pachd_client.delete_pipeline(processor)
    eventually(lambda: processor in pipelines(pachd_client, processor), 30, what="processor recreated")

    # Image changed with an update -> restored. (The processor: pachd 2.6.0 refuses any update
    # of a spout that has a downstream pipeline, see README "Versions and known limits".)
    change_processor_image(pachd_client, spout, processor)
    eventually(
        lambda: pipelines(pachd_client, processor)[processor].details.transform.image.startswith("ghcr.io/"),
        30,
        what="processor image restored",
    )

    # Stopped -> running again.
    pachd_client.stop_pipeline(spout)
    eventually(lambda: not pipelines(pachd_client, spout)[spout].stopped, 30, what="spout restarted")

    obj = wait_condition(stack, namespace, "drift", "Ready", "True")
    assert obj["status"]["driftRepairs"] >= 3
    events = kubectl(stack, "get", "events", "-n", namespace, "--field-selector", "reason=DriftRepaired")
    assert processor in events and spout in events


def test_stopped_state_keeps_pipelines_stopped(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    obj = apply_ready(stack, namespace, resource("paused", spout, processor, state="Stopped"))
    assert condition(obj, "Ready")["reason"] == "Stopped"
    assert all(info.stopped for info in pipelines(pachd_client, spout, processor).values())
    pachd_client.start_pipeline(spout)  # drift: someone starts it
    eventually(lambda: pipelines(pachd_client, spout)[spout].stopped, 30, what="spout stopped again")


def test_foreign_pipeline_is_left_alone_and_reported(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    pachd_client.create_pipeline_from_request(
        python_pachyderm.parse_dict_pipeline_spec(
            {
                "pipeline": {"name": spout},
                "transform": {"image": "busybox:1", "cmd": ["sh"]},
                "spout": {},
            }
        )
    )
    apply(stack, namespace, resource("clash", spout, processor))
    obj = wait_condition(stack, namespace, "clash", "Synced", "False")
    assert condition(obj, "Synced")["reason"] == "ForeignPipeline"
    assert obj["status"]["spout"]["state"] == "Foreign"
    found = pipelines(pachd_client, spout, processor)
    assert set(found) == {spout}  # our processor is not wired to someone else's spout
    assert found[spout].details.transform.image == "busybox:1" and found[spout].version == 1

    kubectl(stack, "delete", "spoutpipeline", "clash", "-n", namespace, "--timeout=60s")
    assert set(pipelines(pachd_client, spout, processor)) == {spout}  # not ours, not deleted


def test_invalid_spec_is_rejected_by_the_api_server(stack: State, namespace: str, crd: None) -> None:
    body = resource("bad", "a", "b", state="Paused")
    out = kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert 'Unsupported value: "Paused"' in out
    body = resource("bad", "a", "b")
    del body["spec"]["spout"]["transform"]["image"]
    out = kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert "spec.spout.transform.image: Required value" in out


def test_spec_pachd_rejects_is_reported_without_hot_loop(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    body = resource("rejected", spout, processor, project="no-such-project")
    apply(stack, namespace, body)
    obj = wait_condition(stack, namespace, "rejected", "Synced", "False")
    assert condition(obj, "Synced")["reason"] == "PachdRejected"
    assert "no-such-project" in condition(obj, "Synced")["message"]
    assert pipelines(pachd_client, spout, processor) == {}


def test_delete_removes_pipelines_and_orphan_keeps_them(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    apply_ready(stack, namespace, resource("gone", spout, processor))
    kubectl(stack, "delete", "spoutpipeline", "gone", "-n", namespace, "--timeout=60s")
    assert pipelines(pachd_client, spout, processor) == {}
    assert "NotFound" in kubectl(stack, "get", "spoutpipeline", "gone", "-n", namespace, check=False)

    apply_ready(stack, namespace, resource("kept", spout, processor, deletionPolicy="Orphan"))
    kubectl(stack, "delete", "spoutpipeline", "kept", "-n", namespace, "--timeout=60s")
    assert set(pipelines(pachd_client, spout, processor)) == {spout, processor}


def test_unreachable_pachd_is_reported_and_recovers(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    spout, processor = names
    connection(stack, "away", "grpc://127.0.0.1:9", namespace=namespace)
    body = resource("away", spout, processor, connectionRef={"kind": "PachdConnection", "name": "away"})
    apply(stack, namespace, body)
    obj = wait_condition(stack, namespace, "away", "Synced", "False")
    assert condition(obj, "Synced")["reason"] == "PachdUnavailable"
    assert obj["status"]["summary"] == "PachdUnavailable"

    # The admin fixes the connection: the resource recovers at the next sweep.
    connection(stack, "away", stack.pachds[0].address, namespace=namespace)
    obj = wait_condition(stack, namespace, "away", "Ready", "True")
    assert obj["status"]["managed"] == {
        "connectionRef": {"kind": "PachdConnection", "name": "away"},
        "address": stack.pachds[0].address,
    }

    # Pipelines exist now: deletion waits for pachd, with a clear message and the way out...
    connection(stack, "away", "grpc://127.0.0.1:9", namespace=namespace)
    kubectl(stack, "delete", "spoutpipeline", "away", "-n", namespace, "--wait=false")
    message = ready_message(stack, namespace, "away", "Orphan", what="deletion waiting message")
    assert "waiting to delete" in message or "cannot delete" in message
    # ...and finishes once pachd is reachable again.
    connection(stack, "away", stack.pachds[0].address, namespace=namespace)
    wait_gone(stack, namespace, "away", 60, what="resource gone once pachd reachable")
    assert pipelines(pachd_client, spout, processor) == {}


def test_user_flow_with_kubectl(stack: State, namespace: str, operator: Any, pachd_client: Any) -> None:
    """The README's flow, with the sample file as shipped."""
    sample = yaml.safe_load(SAMPLE.read_text())
    spout, processor = sample["spec"]["spout"]["name"], sample["spec"]["processor"]["name"]
    try:
        kubectl(stack, "apply", "-n", namespace, "-f", str(SAMPLE))
        kubectl(
            stack, "wait", "-n", namespace, "--for=condition=Ready", "--timeout=90s", "spoutpipeline/spout101"
        )
        listing = kubectl(stack, "get", "spoutpipelines", "-n", namespace)
        assert "spout101" in listing and "RUNNING" in listing
        assert {n: state_name(i) for n, i in pipelines(pachd_client, spout, processor).items()} == {
            spout: "RUNNING",
            processor: "RUNNING",
        }
        kubectl(stack, "delete", "-n", namespace, "-f", str(SAMPLE), "--timeout=60s")
        assert pipelines(pachd_client, spout, processor) == {}
    finally:
        for name in (processor, spout):
            with contextlib.suppress(Exception):
                pachd_client.delete_pipeline(name, force=True)


def commit_ids(client: Any, repo: str) -> list[str]:
    return [c.commit.id for c in client.list_commit(repo)]


def event_reasons(stack: State, namespace: str, name: str) -> list[str]:
    listing = json.loads(
        kubectl(
            stack,
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        )
    )
    return [item["reason"] for item in listing["items"]]


def test_spout_image_change_applies_and_keeps_the_data(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    """pachd 2.6 refuses to update a spout while a pipeline reads its repo: the operator
    pauses the processor, updates the spout, and starts the processor again."""
    from devstack.sidecar import start_spout_sidecar, stop_spout_sidecar
    from spout101 import consumer
    from spout101.consumer import EmulatedSource, Target

    spout, processor = names
    body = resource("spout-edit", spout, processor)
    apply_ready(stack, namespace, body)
    sidecar = start_spout_sidecar(stack, stack.pachds[0], spout)
    try:  # messages in the spout's repo, as its consumer commits them
        made = consumer.run(
            consumer.connect(sidecar.address),
            Target(spout, "master"),
            EmulatedSource(0, 0, (1024, 2048)),
            threading.Event(),
            max_rounds=2,
        )
        assert made == 2
    finally:
        stop_spout_sidecar(stack, sidecar)
    spout_commits, processor_commits = commit_ids(pachd_client, spout), commit_ids(pachd_client, processor)
    files = {f.file.path for f in pachd_client.list_file((spout, "master"), "/")}
    assert len(files) == 4

    body["spec"]["spout"]["transform"]["image"] = "ghcr.io/spout-operator/spout101:0.2.0"
    apply(stack, namespace, body)
    eventually(
        lambda: versions(pachd_client, spout, processor) == {spout: 2, processor: 1}, 60, what="spout v2"
    )
    obj = wait_condition(stack, namespace, "spout-edit", "Ready", "True")
    assert condition(obj, "Synced")["status"] == "True"
    found = pipelines(pachd_client, spout, processor)
    assert found[spout].details.transform.image.endswith(":0.2.0")
    assert not found[processor].stopped and state_name(found[processor]) == "RUNNING"
    processor_branch = pachd_client.inspect_branch(processor, "master")  # wired to the spout again
    assert (spout, "master") in [(b.repo.name, b.name) for b in processor_branch.direct_provenance]
    assert set(spout_commits) <= set(commit_ids(pachd_client, spout))  # history kept
    assert set(processor_commits) <= set(commit_ids(pachd_client, processor))
    assert {f.file.path for f in pachd_client.list_file((spout, "master"), "/")} == files
    reasons = event_reasons(stack, namespace, "spout-edit")
    assert "ProcessorPaused" in reasons and "ProcessorResumed" in reasons


def test_a_rejected_change_does_not_hold_back_the_other_pipeline(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    # Kept spelled out (here and in the other scenarios): the fixtures, the names and the resource
    # made are each scenario's first steps; a helper would hide what the test starts from.
    spout, processor = names
    body = resource("half", spout, processor)
    apply_ready(stack, namespace, body)
    body["spec"]["spout"]["transform"]["image"] = "ghcr.io/spout-operator/spout101:0.2.0"  # valid
    # pachd refuses a Secret its namespace does not have (the connection's policy grants the name)
    body["spec"]["processor"]["transform"]["secrets"] = [{"name": "no-such-secret", "mountPath": "/s"}]
    apply(stack, namespace, body)
    obj = wait_condition(stack, namespace, "half", "Synced", "False")
    eventually(
        lambda: versions(pachd_client, spout, processor) == {spout: 2, processor: 1}, 60, what="spout v2"
    )
    obj = get(stack, namespace, "half")
    assert condition(obj, "Synced")["reason"] == "PachdRejected"
    assert "missing Kubernetes secret no-such-secret" in condition(obj, "Synced")["message"]
    assert obj["status"]["spout"]["lastError"] == ""
    assert obj["status"]["processor"]["lastError"] != ""
    assert not pipelines(pachd_client, processor)[processor].stopped  # paused for the spout, started again


def test_renames_and_moves_are_refused_with_a_way_out(stack: State, namespace: str, crd: None) -> None:
    body = resource("named", "sp-fixed", "pr-fixed")
    apply(stack, namespace, body)
    for path, value in (("spout", "sp-new"), ("processor", "pr-new")):
        changed = copy.deepcopy(body)
        changed["spec"][path]["name"] = value
        out = kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(changed), check=False)
        assert f"spec.{path}.name cannot change" in out and "delete this SpoutPipeline" in out
    moved = copy.deepcopy(body)
    moved["spec"]["project"] = "elsewhere"
    out = kubectl(stack, "apply", "-n", namespace, "-f", "-", input=json.dumps(moved), check=False)
    assert "spec.project cannot change" in out
    # Writing out a default is no change.
    defaults = resource("implicit", "unset", "unset")
    del defaults["spec"]["spout"]["name"], defaults["spec"]["processor"]["name"]
    apply(stack, namespace, defaults)
    defaults["spec"]["spout"]["name"], defaults["spec"]["processor"]["name"] = (
        "implicit",
        "implicit-processor",
    )
    assert "configured" in apply(stack, namespace, defaults)


@contextlib.contextmanager
def far_sweep_operator(
    monkeypatch: pytest.MonkeyPatch, namespace: str, worker_namespace: str | None
) -> Iterator[Any]:
    """An operator whose sweep is far away: what it repairs now, it learnt otherwise."""
    monkeypatch.setenv("SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS", "600")
    monkeypatch.delenv("SPOUT_OPERATOR_WORKER_NAMESPACES", raising=False)
    if worker_namespace is not None:
        monkeypatch.setenv("SPOUT_OPERATOR_WORKER_NAMESPACES", worker_namespace)
    with running_operator(namespace) as runner:
        yield runner


@pytest.fixture
def event_driven(
    crd: None, operator_env: None, namespace: str, stack: State, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Repairs come from pachd's worker RCs."""
    with far_sweep_operator(monkeypatch, namespace, stack.pachds[0].namespace) as runner:
        yield runner


@pytest.fixture
def blind(crd: None, operator_env: None, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """No worker RCs watched and no sweep for 10 minutes: only the operator's own listings."""
    with far_sweep_operator(monkeypatch, namespace, None) as runner:
        yield runner


def test_drift_is_repaired_from_worker_events_within_seconds(
    stack: State, namespace: str, names: tuple[str, str], event_driven: Any, pachd_client: Any
) -> None:
    spout, processor = names
    apply_ready(stack, namespace, resource("quick", spout, processor))

    started = time.monotonic()
    pachd_client.delete_pipeline(processor)
    eventually(lambda: processor in pipelines(pachd_client, processor), 10, 0.1, what="processor recreated")
    deleted_repair_s = time.monotonic() - started

    wait_condition(stack, namespace, "quick", "Ready", "True")
    started = time.monotonic()
    pachd_client.stop_pipeline(spout)
    eventually(lambda: not pipelines(pachd_client, spout)[spout].stopped, 10, 0.1, what="spout started")
    stopped_repair_s = time.monotonic() - started
    print(f"repair after deletion {deleted_repair_s:.2f} s, after stop {stopped_repair_s:.2f} s")
    obj = wait_condition(stack, namespace, "quick", "Ready", "True")
    assert obj["status"]["driftRepairs"] >= 2


def test_a_listing_taken_for_one_resource_repairs_the_drift_it_shows_of_another(
    stack: State, namespace: str, names: tuple[str, str], blind: Any, pachd_client: Any
) -> None:
    """Changes behind the operator's back come in batches. No event reports this stop (no RC
    watch, the sweep 10 minutes away), yet the listing that follows a new resource's start
    shows it, and that repairs it."""
    spout, processor = names
    apply_ready(stack, namespace, resource("first", spout, processor))
    pachd_client.stop_pipeline(spout)
    suffix = uuid.uuid4().hex[:6]
    other = (f"sp-{suffix}", f"pr-{suffix}")
    try:
        apply(stack, namespace, resource("second", *other))  # polled until RUNNING: listings
        eventually(lambda: not pipelines(pachd_client, spout)[spout].stopped, 30, 0.2, what="spout started")
        obj = wait_condition(stack, namespace, "first", "Ready", "True")
        assert obj["status"]["driftRepairs"] >= 1
    finally:
        kubectl(stack, "delete", "spoutpipelines", "second", "-n", namespace, "--timeout=60s", check=False)
        for name in reversed(other):
            with contextlib.suppress(Exception):
                pachd_client.delete_pipeline(name, force=True)


def test_an_update_behind_the_operators_back_is_seen_on_the_spec_repo(
    stack: State, namespace: str, names: tuple[str, str], blind: Any, pachd_client: Any
) -> None:
    """No RC watch, the sweep 10 minutes away: the update's commit on the processor's spec
    repo is what wakes the resource."""
    spout, processor = names
    apply_ready(stack, namespace, resource("watched", spout, processor))
    started = time.monotonic()
    change_processor_image(pachd_client, spout, processor)
    eventually(
        lambda: pipelines(pachd_client, processor)[processor].details.transform.image.startswith("ghcr.io/"),
        10,
        0.05,
        what="processor image restored",
    )
    print(f"image change undone after {time.monotonic() - started:.2f} s")
    obj = wait_condition(stack, namespace, "watched", "Ready", "True")
    assert obj["status"]["driftRepairs"] >= 1


def resource_versions(stack: State, namespace: str, count: int) -> list[str]:
    return [get(stack, namespace, f"steady-{i}")["metadata"]["resourceVersion"] for i in range(count)]


def test_steady_state_costs_one_listing_per_sweep_and_no_writes(
    stack: State, namespace: str, operator: Any, pachd_client: Any
) -> None:
    suffix = uuid.uuid4().hex[:6]
    pairs = [(f"s{i}-{suffix}", f"p{i}-{suffix}") for i in range(3)]
    try:
        for i, (spout, processor) in enumerate(pairs):
            apply(stack, namespace, resource(f"steady-{i}", spout, processor))
        for i in range(len(pairs)):
            wait_condition(stack, namespace, f"steady-{i}", "Ready", "True")
        passes(len(pairs), trigger="drift")  # let the first drift checks settle
        before = scrape()
        versions_before = resource_versions(stack, namespace, len(pairs))
        sweeps = 5
        after = passes(sweeps * len(pairs), before, trigger="drift")
        versions_after = resource_versions(stack, namespace, len(pairs))

        assert delta(before, after, PACHD_WRITES) == 0
        assert delta(before, after, "spout_operator_pachd_calls_total", method="InspectPipeline") == 0
        # Sweeps seen: the drift passes over the three resources (each sweep passes each once).
        seen = delta(before, after, PASSES, trigger="drift") / len(pairs)
        listings = delta(before, after, "spout_operator_pachd_calls_total", method="ListPipeline")
        # Three resources, all checked at each sweep against one listing, not one call each.
        assert seen - 1 <= listings <= seen + 1, (listings, seen)
        # Nothing changed, so no status was written either: the resources are untouched.
        assert versions_after == versions_before
        assert after['spout_operator_resources{ready="True"}'] >= 3
        assert after["spout_operator_convergence_seconds_count"] >= 3
    finally:
        # Through the operator first: it is still running, and would restore what we delete.
        kubectl(stack, "delete", "spoutpipelines", "--all", "-n", namespace, "--timeout=60s", check=False)
        for spout, processor in pairs:
            for name in (processor, spout):
                with contextlib.suppress(Exception):
                    pachd_client.delete_pipeline(name, force=True)


def test_impossible_pachd_address_is_reported_and_deletable(
    stack: State, namespace: str, names: tuple[str, str], operator: Any
) -> None:
    """A port above 65535 passes the schema's pattern: it must end in status, not a crash,
    and the resource must still delete (nothing can exist at such an address)."""
    spout, processor = names
    connection(stack, "odd", "grpc://127.0.0.1:99999", namespace=namespace)
    apply(
        stack,
        namespace,
        resource("odd", spout, processor, connectionRef={"kind": "PachdConnection", "name": "odd"}),
    )
    obj = wait_condition(stack, namespace, "odd", "Synced", "False")
    assert condition(obj, "Synced")["reason"] == "ConnectionInvalid"
    assert "invalid port" in condition(obj, "Synced")["message"]
    kubectl(stack, "delete", "spoutpipeline", "odd", "-n", namespace, "--timeout=60s")
