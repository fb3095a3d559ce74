"""kstatus (the real library), `kubectl wait` and Argo CD's health script read the
statuses the operator writes on the real stack, through a healthy apply, a spec change
the operator has not seen yet, a stop and refusals.

SPOUT_OPERATOR_CAPTURE_ARGOCD=1 saves the objects seen here as the health script's
testdata (manifests/argocd/.../testdata/), which the unit tier runs health_test.yaml on.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from devstack.stack import State
from devstack.status_readers import HEALTH, ROOT, argocd_health, kstatus
from devstack.testing import eventually, kubectl
from kit import (
    apply,
    condition,
    connection,
    get,
    resource,
    running_operator,
    wait_condition,
)

pytestmark = pytest.mark.integration

CAPTURE = os.environ.get("SPOUT_OPERATOR_CAPTURE_ARGOCD", "") not in ("", "0")


def capture(case: str, obj: dict[str, Any]) -> None:
    if not CAPTURE:
        return
    saved = copy.deepcopy(obj)
    saved["metadata"].pop("managedFields", None)  # bookkeeping no reader looks at
    saved["metadata"].get("annotations", {}).pop("kubectl.kubernetes.io/last-applied-configuration", None)
    (HEALTH / "testdata" / f"{case}.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))


def capture_progress(seen: list[dict[str, Any]]) -> None:
    """Keep the in-between states a run happened to catch (their timing is pachd's)."""
    for obj in seen:
        reason = condition(obj, "Reconciling").get("reason", "")
        case = {"Progressing": "applying", "PipelinesStarting": "starting", "PipelinesStopping": "stopping"}
        if reason in case:
            capture(case[reason], obj)


def wait_ready(stack: State, namespace: str, name: str, timeout_s: int) -> tuple[int, str]:
    """`kubectl wait --for=condition=Ready`: (exit code, output)."""
    result = kubectl(
        stack,
        "wait",
        "-n",
        namespace,
        "--for=condition=Ready",
        f"--timeout={timeout_s}s",
        f"spoutpipeline/{name}",
        check=False,
    )
    return (0 if "condition met" in result else 1), result


def follow(
    stack: State, namespace: str, name: str, done: Callable[[dict[str, Any]], bool], first: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every distinct state of the resource from `first` until `done` holds (polled fast)."""
    seen = [first]

    def check() -> bool:
        obj = get(stack, namespace, name)
        if obj != seen[-1]:
            seen.append(obj)
        return done(obj)

    eventually(check, 90, interval_s=0.1, what=f"{name} to reach the awaited state")
    return seen


def current_and_ready(obj: dict[str, Any]) -> bool:
    """What a reader may call done: Ready=True, computed for this very generation."""
    ready = condition(obj, "Ready")
    return ready.get("status") == "True" and ready.get("observedGeneration") == obj["metadata"]["generation"]


def assert_readers_agree(seen: list[dict[str, Any]], settled: str) -> None:
    """kstatus says Current, and Argo CD `settled`, exactly when Ready=True holds for the current
    generation; InProgress and Progressing before (no false alarm on the way); every condition
    has its generation."""
    for obj, verdict in zip(seen, kstatus(seen), strict=True):
        assert_conditions_carry_their_generation(obj)
        done = current_and_ready(obj)
        assert verdict["status"] == ("Current" if done else "InProgress"), (obj["status"], verdict)
        health = argocd_health(obj)["status"]
        assert health == (settled if done else "Progressing"), (obj["status"], health)
    assert current_and_ready(seen[-1])


def assert_conditions_carry_their_generation(obj: dict[str, Any]) -> None:
    status = obj.get("status", {})
    if "observedGeneration" in status:  # written by the operator (not the CRD's default)
        for c in status["conditions"]:
            assert c["observedGeneration"] == status["observedGeneration"], c


def test_healthy_apply_stale_generation_and_stop(
    stack: State, namespace: str, names: tuple[str, str], crd: None, operator_env: None
) -> None:
    # Kept spelled out (here and in the other scenarios): the fixtures, the names and the resource
    # made are each scenario's first steps; a helper would hide what the test starts from.
    spout, processor = names
    body = resource("healthy", spout, processor)
    apply(stack, namespace, body)

    # No operator yet: the API server shows the CRD's default status, never "done".
    pending = get(stack, namespace, "healthy")
    capture("pending", pending)
    assert kstatus([pending])[0]["status"] == "InProgress"
    assert argocd_health(pending)["status"] == "Progressing"
    assert wait_ready(stack, namespace, "healthy", 1)[0] != 0

    # kstatus: InProgress until the operator says Ready for this generation, then Current.
    with running_operator(namespace):
        seen = follow(stack, namespace, "healthy", current_and_ready, pending)
    assert_readers_agree(seen, "Healthy")
    healthy = seen[-1]
    capture("healthy", healthy)
    capture_progress(seen)
    assert kstatus([healthy]) == [{"status": "Current", "message": "Resource is Ready"}]
    assert argocd_health(healthy) == {"status": "Healthy", "message": "Running: both pipelines are running"}

    # A spec change the operator has not seen: the old generation's Ready=True counts for
    # nothing, neither for kstatus nor for `kubectl wait` nor for Argo CD.
    body["spec"]["processor"]["transform"]["env"] = {"LOG_LEVEL": "debug"}
    apply(stack, namespace, body)
    stale = get(stack, namespace, "healthy")
    capture("stale-generation", stale)
    assert (stale["metadata"]["generation"], stale["status"]["observedGeneration"]) == (2, 1)
    assert condition(stale, "Ready")["status"] == "True"
    assert kstatus([stale])[0]["status"] == "InProgress"
    assert argocd_health(stale) == {
        "status": "Progressing",
        "message": "Waiting for the spout operator to apply generation 2",
    }
    code, out = wait_ready(stack, namespace, "healthy", 2)
    assert code != 0 and "timed out" in out, out

    with running_operator(namespace):
        code, out = wait_ready(stack, namespace, "healthy", 90)
        assert code == 0, out
        updated = get(stack, namespace, "healthy")
        assert condition(updated, "Ready")["observedGeneration"] == updated["metadata"]["generation"] == 2
        assert kstatus([updated])[0]["status"] == "Current"

        # Declared Stopped and stopped: Argo CD shows Suspended, kstatus Current.
        kubectl(
            stack,
            "patch",
            "spoutpipeline",
            "healthy",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"state": "Stopped"}}),
        )
        seen = follow(stack, namespace, "healthy", current_and_ready, updated)
    assert_readers_agree(seen[1:], "Suspended")
    capture_progress(seen[1:])
    stopped = seen[-1]
    assert condition(stopped, "Ready")["reason"] == "Stopped"
    capture("suspended", stopped)
    assert kstatus([stopped])[0]["status"] == "Current"
    assert argocd_health(stopped) == {
        "status": "Suspended",
        "message": "Stopped: both pipelines are stopped, as declared",
    }


def test_a_quiet_spout_is_a_warning_no_reader_takes_for_a_failure(
    stack: State, namespace: str, names: tuple[str, str], crd: None, operator_env: None
) -> None:
    """Ready=True with DataFlowing=False (its spout never commits here: no node runs it, and it is
    expected to commit every second) is Current for kstatus, Healthy for Argo CD, and `kubectl wait
    --for=condition=Ready` returns: the data flow's verdict is a warning (docs/resource.md)."""
    spout, processor = names
    quiet = resource("quiet", spout, processor, expectations={"commitWithinSeconds": 1})
    with running_operator(namespace):
        apply(stack, namespace, quiet)

        def judged() -> dict[str, Any] | None:
            obj = get(stack, namespace, "quiet")
            flowing = condition(obj, "DataFlowing")
            return obj if current_and_ready(obj) and flowing.get("status") == "False" else None

        obj = eventually(judged, 90, what="quiet Ready=True and DataFlowing=False")
        code, out = wait_ready(stack, namespace, "quiet", 10)
    capture("data-not-flowing", obj)
    assert condition(obj, "DataFlowing")["reason"] == "SpoutQuiet", condition(obj, "DataFlowing")
    assert_conditions_carry_their_generation(obj)
    assert kstatus([obj]) == [{"status": "Current", "message": "Resource is Ready"}]
    assert argocd_health(obj) == {"status": "Healthy", "message": "Running: both pipelines are running"}
    assert code == 0, out


def test_stalled_and_unreachable(
    stack: State, namespace: str, names: tuple[str, str], crd: None, operator_env: None
) -> None:
    spout, processor = names
    # Orphan: deleting them needs no pachd, so the namespace goes away cleanly.
    rejected = resource("rejected", spout, processor, project="no-such-project", deletionPolicy="Orphan")
    connection(stack, f"away-{namespace}", "grpc://127.0.0.1:9", namespaces=[namespace])  # nothing there
    away = resource(
        "away",
        spout,
        processor,
        connectionRef={"kind": "ClusterPachdConnection", "name": f"away-{namespace}"},
        deletionPolicy="Orphan",
    )
    with running_operator(namespace):
        apply(stack, namespace, rejected)
        apply(stack, namespace, away)
        stalled = wait_condition(stack, namespace, "rejected", "Stalled", "True")
        unreachable = wait_condition(stack, namespace, "away", "Synced", "False")
        for name in ("rejected", "away"):
            kubectl(stack, "delete", "spoutpipeline", name, "-n", namespace, "--timeout=60s")
    capture("stalled", stalled)
    capture("pachd-unavailable", unreachable)
    assert [c["type"] for c in stalled["status"]["conditions"]] == ["Ready", "Synced", "Stalled"]
    assert [c["type"] for c in unreachable["status"]["conditions"]] == ["Ready", "Synced"]
    for obj in (stalled, unreachable):
        assert_conditions_carry_their_generation(obj)
    failed, in_progress = kstatus([stalled, unreachable])
    assert failed["status"] == "Failed" and "no-such-project" in failed["message"], failed
    assert in_progress["status"] == "InProgress", in_progress  # Ready=False: retried, not failed
    assert argocd_health(stalled)["status"] == "Degraded"
    assert argocd_health(stalled)["message"].startswith("PachdRejected: ")
    assert argocd_health(unreachable)["status"] == "Degraded"
    assert argocd_health(unreachable)["message"].startswith("PachdUnavailable: ")


def test_readme_registers_the_health_script_in_argocd_cm(stack: State, namespace: str) -> None:
    """The documented `kubectl patch` command (docs/resource.md), run as written (in a test
    namespace), adds the script to an existing argocd-cm and leaves its other keys alone."""
    readme = (ROOT / "docs" / "resource.md").read_text()
    command = re.search(r"```shell\n(kubectl -n argocd patch configmap argocd-cm .*?)\n```", readme, re.S)
    assert command is not None, "docs/resource.md lost its argocd-cm command"
    kubectl(
        stack, "create", "configmap", "argocd-cm", "-n", namespace, "--from-literal=url=https://argo.example"
    )
    script = command.group(1).replace("kubectl -n argocd", f"kubectl -n {namespace}", 1)
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, check=True, timeout=60)
    data = json.loads(kubectl(stack, "get", "configmap", "argocd-cm", "-n", namespace, "-o", "json"))["data"]
    assert data == {
        "url": "https://argo.example",
        "resource.customizations.health.spout-operator.dev_SpoutPipeline": (
            HEALTH / "health.lua"
        ).read_text(),
    }
