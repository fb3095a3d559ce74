"""The alerts and the dashboard through the real Prometheus tooling: promtool (built from the Go
module github.com/prometheus/prometheus, cached like helm) checks the rules, parses every
dashboard query with the real PromQL parser, and evaluates the rules on series scraped from an
e2e run (testdata/alerts_test.yaml; the e2e tier also runs promtool on its own fresh scrapes) and
on series written by hand for the alerts no run shows (testdata/alerts_synthetic_test.yaml);
kustomize and helm render what ships. No stack is started."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack import build, monitoring

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS_TEST = Path(__file__).resolve().parent / "testdata" / "alerts_test.yaml"
SYNTHETIC_TEST = ALERTS_TEST.with_name("alerts_synthetic_test.yaml")
CHART = ROOT / "manifests" / "helm" / "spout-operator"


@pytest.fixture(scope="module")
def promtool() -> str:
    return str(build.cached("promtool"))


def run(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def test_the_alert_rules_pass_promtool_check(promtool: str) -> None:
    out = run(promtool, "check", "rules", str(monitoring.ALERTS))
    assert "SUCCESS: 8 rules found" in out, out


def test_every_dashboard_query_parses_with_the_real_promql_parser(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "dashboard-queries.yaml"
    rules.write_text(monitoring.dashboard_rules())
    out = run(promtool, "check", "rules", str(rules))
    assert f"SUCCESS: {len(monitoring.expressions())} rules found" in out, out


def test_the_alerts_fire_on_series_scraped_from_a_real_run(promtool: str) -> None:
    out = run(promtool, "test", "rules", str(ALERTS_TEST))
    assert "SUCCESS" in out, out


def test_the_alerts_no_run_shows_fire_on_synthetic_series(promtool: str) -> None:
    out = run(promtool, "test", "rules", str(SYNTHETIC_TEST))
    assert "SUCCESS" in out, out


def objects(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(text) if doc is not None
    }


def test_the_component_and_the_chart_ship_the_same_rules_and_dashboard(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(ROOT / "manifests", overlay)],
                "components": [os.path.relpath(monitoring.COMPONENT, overlay)],
            }
        )
    )
    kustomized = objects(run("kubectl", "kustomize", str(overlay), "--load-restrictor=LoadRestrictionsNone"))
    rule = kustomized[("PrometheusRule", "spout-operator")]
    board = kustomized[("ConfigMap", "spout-operator-dashboard")]
    assert (
        kustomized[("ServiceMonitor", "spout-operator")]["metadata"]["namespace"] == "spout-operator-system"
    )
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert rule["metadata"]["namespace"] == board["metadata"]["namespace"] == "spout-operator-system"

    helm = build.program("helm").path
    if not helm.exists():
        build.build(["helm"])
    home = {f"HELM_{k}_HOME": str(tmp_path / k) for k in ("CACHE", "CONFIG", "DATA")}
    args = [str(helm), "template", "spout-operator", str(CHART), "--namespace", "spout-operator-system"]
    off = objects(
        subprocess.run(
            args, capture_output=True, text=True, check=True, env={"PATH": "/usr/bin", **home}
        ).stdout
    )
    assert not {kind for kind, _ in off} & {"PrometheusRule"}, "monitoring is off by default"
    on = [
        *args,
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.dashboard.enabled=true",
    ]
    charted = objects(
        subprocess.run(
            on, capture_output=True, text=True, check=True, env={"PATH": "/usr/bin", **home}
        ).stdout
    )
    assert charted[("PrometheusRule", "spout-operator")]["spec"] == rule["spec"]
    dashboards = [
        json.loads(cm["data"]["spout-operator.json"])
        for cm in (charted[("ConfigMap", "spout-operator-dashboard")], board)
    ]
    assert dashboards[0] == dashboards[1] == monitoring.build_dashboard()
