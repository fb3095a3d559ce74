"""Worker health from pachd's worker pods (no API): the pure verdicts on real pods, the index
and when it wakes a resource.

testdata/worker_pods/ holds pods pachd 2.6.0 made on the e2e tier's node (status and metadata
as the API server returned them): a healthy worker, a missing image (both of the kubelet's
pull reasons), a user container crashing with and without a termination message, one just
terminated, an unschedulable one (too much CPU requested), and two still initializing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from spout_operator.settings import Settings
from spout_operator.watches import PodWatch, WorkerHealthWatch
from spout_operator.workers import MESSAGE_MAX, WorkerHealth, WorkerPods, health, pod_problem, slim

PODS = Path(__file__).parent / "testdata" / "worker_pods"


def pod(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PODS / f"{name}.json").read_text())
    return loaded


def as_pipeline(
    body: dict[str, Any], pipeline: str, version: int = 1, suffix: str = "abcde"
) -> dict[str, Any]:
    """A real pod, relabelled as a worker of another pipeline or version."""
    body = copy.deepcopy(body)
    body["metadata"]["name"] = f"default-{pipeline}-v{version}-{suffix}"
    body["metadata"]["labels"].update(pipelineName=pipeline, pipelineVersion=str(version))
    return body


# A table of cases for one parametrized test: rows alike in shape are different cases, each
# with its own id, kept as data (the logic they share is the test below, written once).
@pytest.mark.parametrize(
    ("name", "reason", "failing", "message"),
    [
        ("running", None, False, None),
        (
            "image-pull-backoff",
            "ImagePullBackOff",
            True,
            'container user: Back-off pulling image "ghcr.io/spout-operator/does-not-exist:0.1.0"',
        ),
        (
            "err-image-pull",
            "ErrImagePull",
            True,
            'container user: failed to pull and unpack image "ghcr.io/spout-operator/does-not-exist:0.1.0"',
        ),
        # The back-off counter is not what a user needs: the container's last words are.
        ("crash-loop-with-message", "CrashLoopBackOff", True, "container user: the sky fell"),
        ("crash-loop", "CrashLoopBackOff", True, "container user: Error, exit code 3"),
        ("terminated", "Error", True, "container user: Error, exit code 3"),
        (
            "unschedulable",
            "Unschedulable",
            True,
            "0/1 nodes are available: 1 Insufficient cpu.",
        ),
        ("pod-initializing", "PodInitializing", False, "container init: PodInitializing"),
        ("init-running", "PodInitializing", False, "container storage: PodInitializing"),
    ],
)
def test_each_real_pod_gets_the_kubelets_reason(
    name: str, reason: str | None, failing: bool, message: str | None
) -> None:
    problem = pod_problem(pod(name))
    if reason is None:
        assert problem is None
        return
    assert problem is not None
    assert (problem.reason, problem.failing) == (reason, failing)
    assert problem.message.startswith(str(message)), problem.message
    assert len(problem.message) <= MESSAGE_MAX


def test_the_slim_copy_the_index_keeps_judges_the_same() -> None:
    for path in sorted(PODS.glob("*.json")):
        body = json.loads(path.read_text())
        assert pod_problem(slim(body)) == pod_problem(body), path.name
        assert "spec" not in slim(body) and "ownerReferences" not in slim(body)["metadata"]


def test_health_counts_the_version_pachd_runs_and_names_the_failing_pod() -> None:
    pods = [
        as_pipeline(pod("running"), "spout", version=1, suffix="old01"),  # the previous version
        as_pipeline(pod("image-pull-backoff"), "spout", version=2, suffix="new01"),
    ]
    assert health(pods, 1) == WorkerHealth(1, 1)
    now = health(pods, 2)
    assert (now.ready, now.total, now.reason, now.failing) == (0, 1, "ImagePullBackOff", True)
    assert now.message.startswith("pod default-spout-v2-new01: container user: Back-off pulling image")
    assert not now.up and health(pods, 1).up


def test_a_failing_worker_is_reported_before_one_still_starting() -> None:
    pods = [
        as_pipeline(pod("pod-initializing"), "processor", suffix="aaaaa"),
        as_pipeline(pod("running"), "processor", suffix="bbbbb"),
        as_pipeline(pod("crash-loop-with-message"), "processor", suffix="ccccc"),
    ]
    result = health(pods, 1)
    assert (result.ready, result.total, result.reason, result.failing) == (1, 3, "CrashLoopBackOff", True)
    assert result.message == "pod default-processor-v1-ccccc: container user: the sky fell"
    starting = health(pods[:2], 1)
    assert (starting.ready, starting.total, starting.reason, starting.failing) == (
        1,
        2,
        "PodInitializing",
        False,
    )


def test_no_pod_and_pods_being_deleted_are_not_workers() -> None:
    going = as_pipeline(pod("running"), "spout")
    going["metadata"]["deletionTimestamp"] = "2026-11-26T02:00:00Z"
    for pods in ([], [going]):
        result = health(pods, 1)
        assert (result.ready, result.total, result.reason, result.failing) == (0, 0, "NoWorkers", False)
        assert not result.up


def test_an_evicted_pod_fails_and_a_running_unready_one_is_starting() -> None:
    evicted = {
        "metadata": {"name": "w", "labels": {"pipelineName": "p", "pipelineVersion": "1"}},
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "The node was low on resource: memory.",
        },
    }
    problem = pod_problem(evicted)
    assert problem is not None and (problem.reason, problem.failing) == ("Evicted", True)
    unready = copy.deepcopy(pod("running"))
    for condition in unready["status"]["conditions"]:
        if condition["type"] in ("Ready", "ContainersReady"):
            condition["status"] = "False"
    user = next(c for c in unready["status"]["containerStatuses"] if c["name"] == "user")
    user["ready"] = False
    problem = pod_problem(unready)
    assert problem is not None and (problem.reason, problem.failing) == ("ContainersNotReady", False)


def test_status_entry_shape() -> None:
    assert WorkerHealth(1, 1).as_status() == {"ready": 1, "total": 1}
    assert WorkerHealth(0, 1, "ErrImagePull", "pod x: ...", True).as_status() == {
        "ready": 0,
        "total": 1,
        "reason": "ErrImagePull",
        "message": "pod x: ...",
    }


# --- the index ----------------------------------------------------------------------

SPOUT = ("default", "spout")


def test_health_is_unknown_until_every_namespace_is_listed() -> None:
    index = WorkerPods(["pachyderm", "pachyderm-2"])
    assert index.health(SPOUT, 1).reason == "WorkersUnknown"
    assert not index.health(SPOUT, 1).failing  # start-up: not listed yet
    index.replace("pachyderm", [as_pipeline(pod("running"), "spout")])
    assert not index.wait_listed(0.01)
    index.failed("pachyderm-2", "(403) Forbidden")
    unknown = index.health(SPOUT, 1)
    assert (unknown.reason, unknown.failing) == ("WorkersUnknown", True)
    assert unknown.message == "cannot list worker pods (pachyderm-2: (403) Forbidden)"
    # Once it can list, the pipelines it found are woken: a pass judged them unknown.
    assert index.replace("pachyderm-2", [as_pipeline(pod("running"), "processor")]) == {
        ("default", "processor")
    }
    assert index.wait_listed(0.01)
    assert index.health(SPOUT, 1) == WorkerHealth(1, 1)


def test_a_first_listing_nobody_waited_for_wakes_nothing() -> None:
    index = WorkerPods(["pachyderm"])
    assert index.replace("pachyderm", [as_pipeline(pod("running"), "spout")]) == set()
    late = WorkerPods(["pachyderm"])
    assert late.health(SPOUT, 1).reason == "WorkersUnknown"  # start-up's wait ran out
    assert late.replace("pachyderm", [as_pipeline(pod("running"), "spout")]) == {SPOUT}


def test_no_worker_says_where_the_operator_looks() -> None:
    index = WorkerPods(["default"])
    index.replace("default", [])
    assert index.health(SPOUT, 3) == WorkerHealth(
        0, 0, "NoWorkers", "no worker pod of version 3 yet (watching namespaces default)"
    )


def test_the_first_listing_wakes_nothing_and_later_changes_that_matter_do() -> None:
    index = WorkerPods(["pachyderm"])
    starting = as_pipeline(pod("pod-initializing"), "spout", suffix="aaaaa")
    assert index.replace("pachyderm", [starting]) == set()  # start-up waited for it
    assert index.update("pachyderm", "MODIFIED", starting) == set()  # a resync: nothing new
    failing = as_pipeline(pod("crash-loop-with-message"), "spout", suffix="aaaaa")
    assert index.update("pachyderm", "MODIFIED", failing) == {SPOUT}
    # Only the back-off counter moved: not worth a pass.
    later = copy.deepcopy(failing)
    user = next(c for c in later["status"]["containerStatuses"] if c["name"] == "user")
    user["state"]["waiting"]["message"] = "back-off 5m0s restarting failed container=user"
    assert index.update("pachyderm", "MODIFIED", later) == set()
    up = as_pipeline(pod("running"), "spout", suffix="aaaaa")
    assert index.update("pachyderm", "MODIFIED", up) == {SPOUT}
    assert index.health(SPOUT, 1) == WorkerHealth(1, 1)
    assert index.update("pachyderm", "DELETED", up) == {SPOUT}
    assert index.health(SPOUT, 1).reason == "NoWorkers"
    assert index.update("pachyderm", "ADDED", {"metadata": {"name": "x", "labels": {}}}) == set()


def test_a_new_version_coming_up_wakes_the_resource() -> None:
    index = WorkerPods(["pachyderm"])
    index.replace("pachyderm", [as_pipeline(pod("running"), "spout", 1, "aaaaa")])
    new = as_pipeline(pod("pod-initializing"), "spout", 2, "bbbbb")
    assert index.update("pachyderm", "ADDED", new) == {SPOUT}
    assert index.health(SPOUT, 1) == WorkerHealth(1, 1)  # what pachd still runs, until its update shows
    assert index.health(SPOUT, 2).reason == "PodInitializing"


def test_a_relisting_reports_what_changed_while_the_watch_was_down() -> None:
    index = WorkerPods(["pachyderm"])
    index.replace(
        "pachyderm",
        [as_pipeline(pod("running"), "spout"), as_pipeline(pod("running"), "processor")],
    )
    changed = index.replace(
        "pachyderm",
        [as_pipeline(pod("running"), "spout"), as_pipeline(pod("err-image-pull"), "other")],
    )
    assert changed == {("default", "processor"), ("default", "other")}
    assert index.health(("default", "processor"), 1).reason == "NoWorkers"


class FakeCore:
    """list_namespaced_pod as the kubernetes client returns it, serialized."""

    def __init__(self, items: list[dict[str, Any]] | Exception) -> None:
        self.items = items
        self.api_client = self
        self.selectors: list[str] = []

    def sanitize_for_serialization(self, obj: Any) -> Any:
        return obj

    def list_namespaced_pod(self, namespace: str, label_selector: str, **_: Any) -> dict[str, Any]:
        self.selectors.append(label_selector)
        if isinstance(self.items, Exception):
            raise self.items
        return {"metadata": {"resourceVersion": "42"}, "items": self.items}


def test_the_watch_lists_worker_pods_only_and_fills_the_index() -> None:
    index = WorkerPods(["pachyderm"])
    core = FakeCore([as_pipeline(pod("image-pull-backoff"), "spout")])
    woken: list[tuple[str, str]] = []
    watch = PodWatch(core, "pachyderm", index, woken.append)  # type: ignore[arg-type]
    assert watch._relist() == "42"
    assert core.selectors == ["app=pipeline,suite=pachyderm,component=worker"]
    assert index.health(SPOUT, 1).reason == "ImagePullBackOff"
    assert woken == []


def test_health_watch_is_off_without_namespaces_or_when_disabled() -> None:
    core: Any = FakeCore([])
    assert WorkerHealthWatch.from_settings(Settings(), core, print) is None  # pachd's word, as before
    assert (
        WorkerHealthWatch.from_settings(Settings(worker_namespaces=("p",), worker_health=False), core, print)
        is None
    )
    on = WorkerHealthWatch.from_settings(Settings(worker_namespaces=("p",)), core, print)
    assert on is not None and on.pods.health(SPOUT, 1).reason == "WorkersUnknown"


def test_api_errors_are_short() -> None:
    from spout_operator.watches import _short

    assert _short(kubernetes.client.ApiException(status=403, reason="Forbidden")) == "(403) Forbidden"
