"""The operator's alerts and dashboard as shipped: generated from their sources, checked in sync.

Sources: the alert rules (manifests/components/monitoring/alerts.yaml, a Prometheus rule file)
and the dashboard below (grafana-foundation-sdk builders). `python -m devstack.monitoring`
(from tests/) writes what ships: the kustomize component's PrometheusRule and dashboard.json,
and the Helm chart's copies (files/). `--check` says what is out of date (a unit test runs it).
The tests feed the rules and every dashboard expression to the real promtool
(tests/integration/test_promtool.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "manifests" / "components" / "monitoring"
CHART_FILES = ROOT / "manifests" / "helm" / "spout-operator" / "files"
ALERTS = COMPONENT / "alerts.yaml"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace=~"$namespace"'  # the resources' namespace variable

# (row, [(title, unit, [(expr, legend)])]) -- every expression here is parsed by promtool.
PANELS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Operator",
        [
            ("Leader (1 on exactly one replica)", "none", [("spout_operator_leader", "{{pod}}")]),
            (
                "Passes by result",
                "ops",
                [("sum by (result) (rate(spout_operator_reconciles_total[$__rate_interval]))", "{{result}}")],
            ),
            (
                "Pass errors by reason",
                "ops",
                [
                    (
                        "sum by (reason) (rate(spout_operator_reconcile_errors_total[$__rate_interval]))",
                        "{{reason}}",
                    )
                ],
            ),
            (
                "Pass duration",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        "(rate(spout_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(spout_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
                        "p95",
                    ),
                ],
            ),
            ("Passes in flight", "none", [("sum(spout_operator_reconciles_in_flight)", "in flight")]),
            (
                "Resources by condition",
                "none",
                [
                    (
                        'max by (condition) (spout_operator_resources_by_condition{status="True"})',
                        "{{condition}}",
                    ),
                    (
                        'max(spout_operator_resources_by_condition{condition="Ready", status="False"})',
                        "not Ready",
                    ),
                ],
            ),
        ],
    ),
    (
        "pachd",
        [
            (
                "pachd call latency p95 by method",
                "s",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, method) "
                        "(rate(spout_operator_pachd_call_duration_seconds_bucket[$__rate_interval])))",
                        "{{method}}",
                    )
                ],
            ),
            (
                "pachd calls not OK, by code",
                "ops",
                [
                    (
                        "sum by (method, code) (rate("
                        'spout_operator_pachd_call_duration_seconds_count{code!="OK"}[$__rate_interval]))',
                        "{{method}} {{code}}",
                    )
                ],
            ),
            (
                "pachd writes and drift repairs",
                "ops",
                [
                    ("sum(rate(spout_operator_pachd_writes_total[$__rate_interval]))", "writes"),
                    ("sum(rate(spout_operator_drift_repairs_total[$__rate_interval]))", "drift repairs"),
                    ("sum(rate(spout_operator_status_writes_total[$__rate_interval]))", "status writes"),
                ],
            ),
        ],
    ),
    (
        "Data flow",
        [
            (
                "Spout: last commit age",
                "s",
                [
                    (
                        "time() - max by (namespace, name) "
                        f"(spout_operator_spout_last_commit_timestamp_seconds{{{NS}}})",
                        "{{namespace}}/{{name}}",
                    ),
                    (
                        f"max by (namespace, name) (spout_operator_expected_commit_within_seconds{{{NS}}})",
                        "{{namespace}}/{{name}} expected",
                    ),
                ],
            ),
            (
                "Processor lag (spout commits not finished)",
                "none",
                [
                    (
                        f"max by (namespace, name) (spout_operator_processor_lag_commits{{{NS}}})",
                        "{{namespace}}/{{name}}",
                    ),
                    (
                        f"max by (namespace, name) (spout_operator_expected_max_lag_commits{{{NS}}})",
                        "{{namespace}}/{{name}} max",
                    ),
                ],
            ),
            (
                "Processor: last finished age",
                "s",
                [
                    (
                        "time() - max by (namespace, name) "
                        f"(spout_operator_processor_last_finished_timestamp_seconds{{{NS}}})",
                        "{{namespace}}/{{name}}",
                    )
                ],
            ),
        ],
    ),
]
STATS = [
    ("Leading replicas", "sum(spout_operator_leader)"),
    ("Resources", 'max(sum by (instance) (spout_operator_resources_by_condition{condition="Ready"}))'),
    ("Not flowing (beyond expectations)", f"count(spout_operator_data_flowing{{{NS}}} == 0) or vector(0)"),
]


def expressions() -> list[str]:
    """Every query of the dashboard."""
    return [expr for _, panels in PANELS for _, _, targets in panels for expr, _ in targets] + [
        expr for _, expr in STATS
    ]


def build_dashboard() -> dict[str, Any]:
    board = (
        dashboard.Dashboard("Spout operator")
        .uid("spout-operator")
        .tags(["spout-operator", "pachyderm"])
        .description("The spout-operator's replicas, passes, pachd calls and each SpoutPipeline's data flow")
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(spout_operator_processor_lag_commits, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for title, expr in STATS:
        board = board.with_panel(
            stat.Panel()
            .title(title)
            .datasource(DATASOURCE)
            .with_target(prometheus.Dataquery().expr(expr).instant().ref_id("A"))
            .height(4)
            .span(8)
        )
    for row, panels in PANELS:
        board = board.with_row(dashboard.Row(row))
        for title, unit, targets in panels:
            panel = timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit).height(8).span(12)
            for ref, (expr, legend) in zip("ABCDEFGH", targets, strict=False):
                panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
            board = board.with_panel(panel)
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(board.build())
    built: dict[str, Any] = json.loads(encoded)
    for number, panel in enumerate(built["panels"], start=1):
        panel["id"] = number  # unique (rows come out of the builder all 0)
    return built


def dashboard_json() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def prometheus_rule() -> str:
    """alerts.yaml as a PrometheusRule (Prometheus Operator), for the kustomize component."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "spout-operator",
            "namespace": "spout-operator-system",
            "labels": {"app.kubernetes.io/name": "spout-operator"},
        },
        "spec": {"groups": groups},
    }
    header = "# Generated from alerts.yaml by `python -m devstack.monitoring` (in tests/): edit that.\n"
    return header + yaml.safe_dump(rule, sort_keys=False, width=100)


def outputs() -> dict[Path, str]:
    board = dashboard_json()
    return {
        COMPONENT / "prometheusrule.yaml": prometheus_rule(),
        COMPONENT / "dashboard.json": board,
        CHART_FILES / "alerts.yaml": ALERTS.read_text(),
        CHART_FILES / "dashboard.json": board,
    }


def stale() -> list[Path]:
    return [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]


def dashboard_rules() -> str:
    """Every dashboard expression as a recording rule, so `promtool check rules` parses each one
    with the real PromQL parser. Grafana's variables are given values first: `$__rate_interval`
    a range, `$namespace` a regular expression."""
    rules = []
    for index, expr in enumerate(expressions()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
        assert not re.search(r"\$\w", concrete), concrete
        rules.append({"record": f"dashboard:query_{index}", "expr": concrete})
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False)


# The series the alerts read, as kept from a run (tests/e2e: bench-results/e2e-dataflow-scrapes.jsonl).
ALERT_SERIES = re.compile(
    r"^(spout_operator_leader|spout_operator_processor_lag_commits|spout_operator_expected_max_lag_commits"
    r"|spout_operator_spout_last_commit_timestamp_seconds|spout_operator_expected_commit_within_seconds"
    r"|spout_operator_data_flowing|spout_operator_resources_by_condition|spout_operator_reconcile_errors_total)"
    r"(\{.*\})? "
)


def input_series(scrapes: Path, step_s: float, job: str = "spout-operator-metrics") -> list[dict[str, str]]:
    """promtool's input_series from scrapes kept by the e2e tier (one JSON line per replica and
    scrape: time, pod, /metrics text): each series the alerts read, labelled as a Prometheus
    scraping both pods would (job, pod), sampled every `step_s` from the first scrape with the
    newest value scraped by then ('_' before a pod's first scrape and after its last). Unix
    times (the *_timestamp_seconds gauges) are made relative to the first scrape: promtool's
    time() starts at 0."""
    rows = [json.loads(line) for line in scrapes.read_text().splitlines() if line.strip()]
    start, end = rows[0]["time"], rows[-1]["time"]
    steps = int((end - start) // step_s) + 1
    values: dict[str, list[str]] = {}
    seen_until: dict[str, float] = {}
    for row in rows:
        for line in row["metrics"].splitlines():
            found = ALERT_SERIES.match(line)
            if not found:
                continue
            name, labels = found.group(1), (found.group(2) or "{}")[1:-1]
            extra = f'job="{job}",pod="{row["pod"]}"'
            key = f"{name}{{{', '.join(x for x in (labels, extra) if x)}}}"
            series = values.setdefault(key, ["_"] * steps)
            index = int((row["time"] - start) // step_s)
            value = float(line.rsplit(" ", 1)[1])
            if name.endswith("_timestamp_seconds"):  # promtool's clock starts at 0: the run's start
                value -= start
            for at in range(index, steps):  # held until a newer scrape of it
                series[at] = f"{value:g}"
            seen_until[key] = row["time"]
    for key, series in values.items():  # nothing after a series' last scrape (stale)
        for at in range(int((seen_until[key] - start) // step_s) + 1, steps):
            series[at] = "_"
    return [{"series": key, "values": " ".join(series)} for key, series in sorted(values.items())]


def rules_without_annotations() -> str:
    """alerts.yaml with the annotations left out: the same expressions, `for` and labels, so a
    promtool test on a fresh run's series need not predict the text the templates render from
    its values (the frozen capture's test checks that text)."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return yaml.safe_dump({"groups": groups}, sort_keys=False, width=100)


def _start(scrapes: Path) -> float:
    with scrapes.open() as lines:
        return float(json.loads(next(line for line in lines if line.strip()))["time"])


def eval_time(scrapes: Path, at: float, step_s: int) -> str:
    """The Unix time `at` as a promtool eval_time on the series input_series makes of `scrapes`:
    the last sample at or before it."""
    return f"{int((at - _start(scrapes)) // step_s) * step_s}s"


def rule_test(
    scrapes: Path, step_s: int, rule_file: str, name: str, cases: list[dict[str, Any]]
) -> dict[str, Any]:
    """A `promtool test rules` file: the rules in `rule_file` evaluated every `step_s` on the
    scrapes' series, with `cases` (alert_rule_test entries)."""
    return {
        "rule_files": [rule_file],
        "evaluation_interval": f"{step_s}s",
        "tests": [
            {
                "name": name,
                "interval": f"{step_s}s",
                "input_series": input_series(scrapes, step_s),
                "alert_rule_test": cases,
            }
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only say which generated files are out of date")
    parser.add_argument(
        "--series", type=Path, help="print promtool input_series from e2e scrapes (JSON lines)"
    )
    parser.add_argument("--step", type=float, default=5.0, help="seconds between samples of --series")
    args = parser.parse_args()
    if args.series:
        print(yaml.safe_dump(input_series(args.series, args.step), sort_keys=False, width=100000))
        return 0
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"out of date: {path.relative_to(ROOT)} (run `python -m devstack.monitoring` in tests/)")
        return 1 if out_of_date else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
