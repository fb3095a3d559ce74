"""push_address: where producers push into a spout with spout.service (pure; for status)."""

from __future__ import annotations

from typing import Any

import pytest
from spout_operator.render import push_address, worker_rc_name
from spout_operator.spec import parse

IMAGE = "ghcr.io/spout-operator/spout101:0.1.0"


def spec(service: dict[str, Any] | None, name: str | None = None, project: str | None = None) -> Any:
    raw: dict[str, Any] = {
        "spout": {"transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.receiver"]}},
        "processor": {"transform": {"image": IMAGE, "cmd": ["python", "-m", "spout101.processor"]}},
    }
    if service is not None:
        raw["spout"]["service"] = service
    if name is not None:
        raw["spout"]["name"] = name
    if project is not None:
        raw["project"] = project
    return parse(raw, "push")


@pytest.mark.parametrize(
    ("project", "pipeline", "version", "rc"),
    [
        ("default", "spout", 1, "default-spout-v1"),
        ("team_a", "My_Spout", 12, "team-a-my-spout-v12"),
    ],
)
def test_worker_rc_name_is_pachd_s(project: str, pipeline: str, version: int, rc: str) -> None:
    assert worker_rc_name(project, pipeline, version) == rc


@pytest.mark.parametrize("kind", ["ClusterIP", "NodePort", "LoadBalancer", None])
def test_the_address_is_the_user_service_of_the_current_version(kind: str | None) -> None:
    service = {"internalPort": 8080, "externalPort": 30080, **({"type": kind} if kind else {})}
    assert push_address(spec(service, project="team-a"), "pachyderm", 3) == (
        "team-a-push-v3-user.pachyderm.svc:30080"
    )


def test_names_are_lowercased_and_underscores_become_dashes() -> None:
    service = {"internalPort": 8080, "externalPort": 80}
    assert push_address(spec(service, name="Push_In", project="Data_Team"), "pach", 1) == (
        "data-team-push-in-v1-user.pach.svc:80"
    )


def test_no_service_or_no_version_yet_is_no_address() -> None:
    assert push_address(spec(None), "pachyderm", 1) is None
    assert push_address(spec({"internalPort": 8080, "externalPort": 8080}), "pachyderm", None) is None


def test_the_push_sample_renders_passes_the_default_policy_and_has_an_address() -> None:
    from pathlib import Path

    import yaml
    from spout_operator.gateway import canonical
    from spout_operator.policy import Policy, violations
    from spout_operator.render import render

    sample = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "crds" / "samples" / "push.yaml").read_text()
    )
    parsed = parse(sample["spec"], sample["metadata"]["name"])
    pair = render(parsed, "team-a/push")
    assert pair.spout["spout"] == {
        "service": {"internalPort": 8080, "externalPort": 8080, "type": "ClusterIP"}
    }
    assert pair.spout["transform"]["cmd"] == ["python", "-m", "spout101.receiver"]
    assert (pair.processor["jobTimeout"], pair.processor["datumTimeout"]) == ("600s", "60s")
    canonical(pair.spout), canonical(pair.processor)  # python-pachyderm parses both
    # Only the project needs granting (its own project is the namespace's).
    assert [v.rule for v in violations(Policy(), parsed, "team-a")] == ["policy.projects"]
    assert push_address(parsed, "pachyderm", 1) == "default-push-v1-user.pachyderm.svc:8080"
