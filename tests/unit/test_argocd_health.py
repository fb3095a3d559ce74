"""Argo CD's health script for SpoutPipeline, run by a Lua 5.1 interpreter (Argo CD's
dialect) on its health_test.yaml cases: statuses the operator wrote on the real stack."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack.status_readers import HEALTH, argocd_health

CASES = yaml.safe_load((HEALTH / "health_test.yaml").read_text())["tests"]


def load(path: str) -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load((HEALTH / path).read_text())
    return result


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_test_cases(case: dict[str, Any]) -> None:
    assert argocd_health(load(case["inputPath"])) == case["healthStatus"]


def test_every_health_and_every_testdata_file_is_covered() -> None:
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert {f"testdata/{f.name}" for f in (HEALTH / "testdata").glob("*.yaml")} == {
        c["inputPath"] for c in CASES
    }


def test_a_resource_without_status_is_progressing() -> None:
    # As a CRD older than the status default shows a new resource.
    obj = load("testdata/pending.yaml")
    del obj["status"]
    assert argocd_health(obj)["status"] == "Progressing"


def test_a_condition_of_an_older_generation_counts_for_nothing() -> None:
    # Even if status.observedGeneration were (wrongly) current, a stale Ready=True is no verdict.
    obj = copy.deepcopy(load("testdata/stale-generation.yaml"))
    obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
    assert argocd_health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the spout operator to reconcile this resource",
    }


def test_a_stopped_declaration_that_does_not_hold_is_not_suspended() -> None:
    obj = load("testdata/pachd-unavailable.yaml")
    obj["spec"]["state"] = "Stopped"
    assert argocd_health(obj)["status"] == "Degraded"


def test_a_condition_without_reason_still_gives_a_message() -> None:
    obj = load("testdata/healthy.yaml")
    for c in obj["status"]["conditions"]:
        c.pop("reason")
    assert argocd_health(obj) == {"status": "Healthy", "message": "Ready: both pipelines are running"}


def test_ready_with_the_data_not_flowing_is_healthy() -> None:
    """DataFlowing=False is a warning (docs/resource.md): the script reads Ready and Stalled only."""
    obj = load("testdata/data-not-flowing.yaml")
    conditions = {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}
    assert conditions["Ready"] == ("True", "Running")
    assert conditions["DataFlowing"] == ("False", "SpoutQuiet")
    assert argocd_health(obj) == {"status": "Healthy", "message": "Running: both pipelines are running"}
