"""A connection's policy on the real stack: every escalation a namespace editor could try
through pachd is refused before anything reaches pachd, the allowed forms still run, and a
change of the policy is picked up without a restart (issue 25)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from devstack.stack import State
from devstack.testing import eventually, kubectl
from kit import apply, condition, connection, get, pipelines, resource, scrape, versions, wait_condition

GUARDED = "guarded"  # a PachdConnection of the test's namespace, with the policy under test


def guarded(stack: State, namespace: str, address: str, policy: dict[str, Any]) -> None:
    connection(stack, GUARDED, address, namespace=namespace, policy=policy)


def via_guarded(name: str, spout: str, processor: str, **spec: Any) -> dict[str, Any]:
    body = resource(name, spout, processor, **spec)
    body["spec"]["connectionRef"] = {"kind": "PachdConnection", "name": GUARDED}
    return body


BASE_POLICY: dict[str, Any] = {
    "images": {"allowed": ["ghcr.io/spout-operator/*"]},
    "secrets": ["spout-source-credentials"],
    "resources": {"limits": {"cpu": "1", "gpu": 0}, "maxParallelism": 2},
    "projects": {"allowDefault": True},
}

# (what a tenant tries, the change to the spout or processor, the policy rule that refuses it)
ESCALATIONS: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "pachd-secret",
        "spout",
        {"transform": {"secrets": [{"name": "pachd-db", "mountPath": "/db"}]}},
        "policy.secrets",
    ),
    (
        "host-path",
        "spout",
        {
            "podPatch": json.dumps(
                [{"op": "add", "path": "/volumes/-", "value": {"name": "root", "hostPath": {"path": "/"}}}]
            )
        },
        "policy.podPatch",
    ),
    (
        "privileged",
        "processor",
        {
            "podPatch": json.dumps(
                [{"op": "add", "path": "/containers/0/securityContext", "value": {"privileged": True}}]
            )
        },
        "policy.podPatch",
    ),
    (
        "host-network",
        "spout",
        {"podPatch": json.dumps([{"op": "add", "path": "/hostNetwork", "value": True}])},
        "policy.podPatch",
    ),
    (
        "service-account",
        "spout",
        {"podPatch": json.dumps([{"op": "replace", "path": "/serviceAccountName", "value": "pachyderm"}])},
        "policy.podPatch",
    ),
    ("root", "processor", {"transform": {"user": "root"}}, "policy.user"),
    ("foreign-registry", "spout", {"transform": {"image": "evil.example/miner:1"}}, "policy.images"),
    ("over-cpu", "processor", {"resourceLimits": {"cpu": 8}}, "policy.resources"),
    (
        "gpu",
        "processor",
        {"resourceLimits": {"gpu": {"type": "nvidia.com/gpu", "number": 1}}},
        "policy.resources",
    ),
]


def with_change(body: dict[str, Any], role: str, change: dict[str, Any]) -> dict[str, Any]:
    target = body["spec"][role]
    for key, value in change.items():
        if key == "transform":
            target["transform"] = {**target["transform"], **value}
        else:
            target[key] = value
    return body


@pytest.mark.integration
def test_every_escalation_is_refused_before_pachd_and_the_allowed_form_runs(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    guarded(stack, namespace, stack.pachds[0].address, BASE_POLICY)
    spout, processor = names
    before = eventually(scrape, 30, what="the operator's /metrics")  # served once it has started
    for case, role, change, _ in ESCALATIONS:
        body = with_change(
            via_guarded(case, f"{spout}-{case}"[:50], f"{processor}-{case}"[:50]), role, change
        )
        apply(stack, namespace, body)
    for case, role, _, rule in ESCALATIONS:
        obj = wait_condition(stack, namespace, case, "Stalled", "True")
        stalled = condition(obj, "Stalled")
        assert stalled["reason"] == "PolicyDenied", (case, stalled)
        assert rule in stalled["message"] and f"{role}." in stalled["message"], (case, stalled["message"])
    # Nothing reached pachd: no pipeline, no write (the connection's own checks only read).
    assert pipelines(pachd_client, *[f"{spout}-{c}"[:50] for c, *_ in ESCALATIONS]) == {}
    after = scrape()  # every refusal above was written by its pass: those passes are over
    assert after.get("spout_operator_pachd_writes_total", 0) == before.get(
        "spout_operator_pachd_writes_total", 0
    )
    # The allowed forms: the registry the policy names, an allowed Secret, within the ceilings.
    allowed = via_guarded("allowed", spout, processor)
    allowed["spec"]["processor"]["resourceLimits"] = {"cpu": 0.5}
    # pachd checks that the Secret exists in its own namespace: an admin made it, and granted it.
    kubectl(
        stack,
        "create",
        "secret",
        "generic",
        "spout-source-credentials",
        "-n",
        stack.pachds[0].namespace,
        "--from-literal=user=reader",
        check=False,
    )
    allowed["spec"]["processor"]["transform"]["secrets"] = [
        {"name": "spout-source-credentials", "mountPath": "/creds"}
    ]
    apply(stack, namespace, allowed)
    wait_condition(stack, namespace, "allowed", "Ready", "True")
    assert set(pipelines(pachd_client, spout, processor)) == {spout, processor}


@pytest.mark.integration
def test_another_namespaces_project_is_refused_and_the_own_one_is_made(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    guarded(stack, namespace, stack.pachds[0].address, {})  # the safe defaults: a project per namespace
    spout, processor = names
    apply(stack, namespace, via_guarded("theirs", f"{spout}-x", f"{processor}-x", project="team-elsewhere"))
    apply(stack, namespace, via_guarded("shared", f"{spout}-y", f"{processor}-y"))  # pachd's default project
    for name in ("theirs", "shared"):
        stalled = condition(wait_condition(stack, namespace, name, "Stalled", "True"), "Stalled")
        assert stalled["reason"] == "PolicyDenied" and "policy.projects" in stalled["message"]
    apply(stack, namespace, via_guarded("own", spout, processor, project=namespace))
    obj = wait_condition(stack, namespace, "own", "Ready", "True")
    assert obj["status"]["spout"]["state"] == "RUNNING"
    projects = {p.project.name for p in pachd_client.list_project()}
    assert namespace in projects and "team-elsewhere" not in projects


@pytest.mark.integration
def test_a_policy_change_applies_without_a_restart(
    stack: State, namespace: str, names: tuple[str, str], operator: Any, pachd_client: Any
) -> None:
    """Tightened: the running pipelines stay, the resource says it is refused and no change
    reaches pachd; loosened: the refused change goes through untouched by anyone else."""
    guarded(stack, namespace, stack.pachds[0].address, BASE_POLICY)
    spout, processor = names
    body = via_guarded("changing", spout, processor)
    apply(stack, namespace, body)
    wait_condition(stack, namespace, "changing", "Ready", "True")
    version = versions(pachd_client, processor)
    guarded(
        stack,
        namespace,
        stack.pachds[0].address,
        {**BASE_POLICY, "images": {"allowed": ["registry.example.com/*"]}},
    )
    stalled = condition(wait_condition(stack, namespace, "changing", "Stalled", "True"), "Stalled")
    assert stalled["reason"] == "PolicyDenied" and "policy.images" in stalled["message"]
    assert set(pipelines(pachd_client, spout, processor)) == {spout, processor}  # left running
    assert versions(pachd_client, processor) == version
    guarded(stack, namespace, stack.pachds[0].address, BASE_POLICY)
    wait_condition(stack, namespace, "changing", "Ready", "True")
    assert "Stalled" not in {c["type"] for c in get(stack, namespace, "changing")["status"]["conditions"]}
    assert versions(pachd_client, processor) == version  # nothing rewritten
