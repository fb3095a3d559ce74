"""The alerts and the dashboard as shipped: generated files in sync with their sources, and
every metric they read is one the operator serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from devstack import monitoring
from prometheus_client import REGISTRY
from spout_operator import metrics  # noqa: F401  (registers the operator's metrics)

METRIC = re.compile(r"\bspout_operator_[a-z_]+")
# An alert's name as the docs write it (SpoutPipelines, the kind's plural, does not match).
ALERT_NAME = re.compile(r"\b(?:SpoutOperator|SpoutPipeline)[A-Z][A-Za-z]*")
NOT_ALERTS = {"SpoutPipelineList", "SpoutPipelineSpec"}  # the CRD's list kind, the spec's model
ROOT = monitoring.ROOT
DOCS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *(path for folder in ("docs", "images", "manifests") for path in (ROOT / folder).rglob("*.md")),
]


def served() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
    return names


def test_the_generated_files_are_in_sync_with_their_sources() -> None:
    assert monitoring.stale() == [], "run `python -m devstack.monitoring` in tests/"


def test_every_metric_the_alerts_and_the_dashboard_read_is_served() -> None:
    groups = yaml.safe_load(monitoring.ALERTS.read_text())["groups"]
    exprs = [rule["expr"] for group in groups for rule in group["rules"]] + monitoring.expressions()
    names = served()
    # Histograms' and labelled families' series appear once observed; their families are known.
    known = names | {f"{n}{suffix}" for n in names for suffix in ("_bucket", "_count", "_total")}
    read = {name for expr in exprs for name in METRIC.findall(expr)}
    assert read and read <= known, read - known


def test_every_alert_says_what_to_do_and_how_bad() -> None:
    for group in yaml.safe_load(monitoring.ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            assert rule["alert"].startswith(("SpoutOperator", "SpoutPipeline")), rule["alert"]


def alert_names() -> set[str]:
    groups = yaml.safe_load(monitoring.ALERTS.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_the_docs_name_is_in_the_rule_file_and_operations_lists_every_alert() -> None:
    named = {
        (doc.relative_to(monitoring.ROOT).as_posix(), name)
        for doc in DOCS
        for name in ALERT_NAME.findall(doc.read_text())
        if name not in NOT_ALERTS
    }
    shipped = alert_names()
    assert {name for _, name in named} >= {"SpoutOperatorAbsent"}, named  # the scan sees the docs
    assert {(doc, name) for doc, name in named if name not in shipped} == set()
    operations = (monitoring.ROOT / "docs" / "operations.md").read_text()
    assert {name for name in shipped if f"`{name}`" not in operations} == set()


def test_the_dashboard_has_a_unique_id_and_ref_per_panel_and_query() -> None:
    board = json.loads((monitoring.COMPONENT / "dashboard.json").read_text())
    assert board["uid"] == "spout-operator"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        refs = [target["refId"] for target in panel.get("targets") or []]
        assert all(refs) and len(refs) == len(set(refs)), panel["title"]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace"}


def test_the_component_ships_what_its_kustomization_lists() -> None:
    kustomization = yaml.safe_load((monitoring.COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    for name in kustomization["resources"]:
        assert (monitoring.COMPONENT / name).exists(), name
    [dashboard] = kustomization["configMapGenerator"]
    assert dashboard["files"] == ["spout-operator.json=dashboard.json"]


def test_scrapes_become_promtool_series_labelled_by_pod_and_held_between_scrapes(tmp_path: Path) -> None:
    lag = 'spout_operator_processor_lag_commits{name="s",namespace="n"}'
    last = 'spout_operator_spout_last_commit_timestamp_seconds{name="s",namespace="n"}'
    rows = [
        {
            "time": 1000.0,
            "pod": "a",
            "metrics": f"# HELP x\nspout_operator_leader 1.0\n{lag} 0.0\n{last} 998.0\n",
        },
        {"time": 1000.5, "pod": "b", "metrics": "spout_operator_leader 0.0\nprocess_cpu_seconds_total 3.0\n"},
        {"time": 1012.0, "pod": "a", "metrics": f"spout_operator_leader 1.0\n{lag} 4.0\n{last} 1011.0\n"},
    ]
    scrapes = tmp_path / "scrapes.jsonl"
    scrapes.write_text("".join(json.dumps(row) + "\n" for row in rows))
    series = {s["series"]: s["values"] for s in monitoring.input_series(scrapes, 5)}
    assert series == {
        'spout_operator_leader{job="spout-operator-metrics",pod="a"}': "1 1 1",
        'spout_operator_leader{job="spout-operator-metrics",pod="b"}': "0 _ _",  # scraped once, then stale
        'spout_operator_processor_lag_commits{name="s",namespace="n", '
        'job="spout-operator-metrics",pod="a"}': "0 0 4",
        # Unix times relative to the first scrape (promtool's time() starts at 0).
        'spout_operator_spout_last_commit_timestamp_seconds{name="s",namespace="n", '
        'job="spout-operator-metrics",pod="a"}': "-2 -2 11",
    }


def test_a_rule_test_of_a_run_evaluates_the_rules_without_annotations_on_its_series(tmp_path: Path) -> None:
    lag = 'spout_operator_processor_lag_commits{name="s",namespace="n"}'
    rows = [{"time": 1000.0 + 5 * i, "pod": "a", "metrics": f"{lag} {i}\n"} for i in range(4)]
    scrapes = tmp_path / "scrapes.jsonl"
    scrapes.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert monitoring.eval_time(scrapes, 1012.9, 5) == "10s"  # the last sample at or before it
    case = {"eval_time": "10s", "alertname": "SpoutPipelineLagGrowing", "exp_alerts": []}
    test = monitoring.rule_test(scrapes, 5, "rules.yaml", "a run", [case])
    assert test["rule_files"] == ["rules.yaml"] and test["evaluation_interval"] == "5s"
    [group] = test["tests"]
    assert group["input_series"] == [
        {"series": lag[:-1] + ', job="spout-operator-metrics",pod="a"}', "values": "0 1 2 3"}
    ]
    assert group["alert_rule_test"] == [case] and group["interval"] == "5s"
    rules = yaml.safe_load(monitoring.rules_without_annotations())["groups"][0]["rules"]
    shipped = yaml.safe_load(monitoring.ALERTS.read_text())["groups"][0]["rules"]
    assert rules == [{k: v for k, v in rule.items() if k != "annotations"} for rule in shipped]
    assert all("annotations" in rule for rule in shipped)


def test_every_alert_is_shown_firing_by_some_promtool_test() -> None:
    """tests/integration/test_promtool.py runs these files: a real run's series, synthetic ones."""
    testdata = ROOT / "tests" / "integration" / "testdata"
    fired = {
        case["alertname"]
        for name in ("alerts_test.yaml", "alerts_synthetic_test.yaml")
        for test in yaml.safe_load((testdata / name).read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == alert_names(), alert_names() - fired
