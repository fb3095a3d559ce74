"""A tiny run of the benchmark (`make bench`) against the session's stack, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import python_pachyderm
from bench.bench import NAMESPACE, Options, run, targets
from devstack.stack import State
from devstack.testing import kubectl

pytestmark = pytest.mark.integration

SECTIONS = (
    "one_resource",
    "n_resources",
    "drift_one",
    "drift",
    "spout_update",
    "steady",
    "memory",
    "consumer",
)


def _numbers(section: dict[str, object]) -> list[float]:
    """The section's figures, less its signed differences (the operator may beat the floor)."""
    return [
        v
        for k, v in section.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("delta")
    ]


def test_tiny_bench_reports_every_measure(stack: State, tmp_path: Path) -> None:
    client = python_pachyderm.Client(stack.pachds[0].host, stack.pachds[0].port)
    pipelines_before = {p.pipeline.name for p in client.list_pipeline()}
    repos_before = {r.repo.name for r in client.list_repo()}
    k = len(stack.pachds)  # DEVSTACK_PACHDS=2 runs it over two pachds, one resource each
    options = Options(
        n=k,
        pachds=k,
        repeats=1,
        steady_s=4,
        drift_interval_s=2,
        drift_rounds=1,
        unreachable=20,
        consumer_s=2,
        consumer_repeats=1,
    )
    out = tmp_path / "bench.json"

    run(stack, options, out)

    data = json.loads(out.read_text())
    assert data["machine"]["nproc"] >= 1 and data["machine"]["cpu_model"]
    for section in SECTIONS:
        numbers = _numbers(data[section])
        assert numbers, f"{section} has no figures: {data[section]}"
        assert all(v >= 0 for v in numbers), data[section]
    assert data["one_resource"]["operator_p50_s"] > 0 and data["one_resource"]["floor_p50_s"] > 0
    one = data["one_resource"]
    assert one["pairs"] == 1 and one["delta"]["min_s"] == one["delta_p50_s"] == one["delta"]["max_s"]
    assert one["delta_p50_s"] == pytest.approx(one["operator_p50_s"] - one["floor_p50_s"])
    # The operator's trace of that apply (tracing.py's histogram): its two creates, one Ready,
    # which came after the watch event, so within the time from `kubectl apply` to Ready.
    steps = one["steps_per_apply"]
    assert steps["pachd CreatePipeline"]["calls"] == 2 and steps["Ready"]["calls"] == 1
    assert 0 < steps["Ready"]["seconds"] <= one["operator_s"][0]
    assert 0 < one["kubectl_apply_s"][0] < one["operator_s"][0]  # kubectl exits before Ready
    assert data["n_resources"]["operator_s"] > 0 and data["n_resources"]["floor_s"] > 0
    assert data["drift"]["samples"] == k and data["drift"]["p95_s"] > 0
    assert data["drift_one"]["samples"] == k and data["drift_one"]["p95_s"] > 0
    assert data["spout_update"]["history_kept"] is True
    assert data["spout_update"]["processors_rewired"] == k
    assert data["steady"]["pachd_writes"] == 0
    assert data["steady"]["status_writes"] == 0
    # ... with the data flow on: every resource's streams followed, its status.dataFlow shown.
    assert data["steady"]["data_flow_followed"] == data["steady"]["data_flow_shown"] == k
    assert data["steady"]["list_pipeline_calls"] >= 1
    assert data["steady"]["versions_unchanged"] is True
    assert data["memory"]["rss_mb_at_n"] > 0 and data["memory"]["rss_mb_unreachable"] > 0
    assert data["consumer"]["consumer_commits_per_s"] > 0 and data["consumer"]["floor_commits_per_s"] > 0
    # The verdicts saved are the bench's logic on the figures saved (tests/bench/test_verdicts.py
    # checks that logic); those that hold at any size pass here too.
    assert data["targets"] == json.loads(json.dumps(targets(data, options)))
    verdicts = {t["target"]: t["pass"] for t in data["targets"]}
    assert [ok for name, ok in verdicts.items() if name.startswith("steady: 0 pachd writes")] == [True]
    assert verdicts["steady: pipeline versions unchanged"] is True
    assert [ok for name, ok in verdicts.items() if name.startswith("spout image change")] == [True]

    # It deleted whatever it created: pipelines, repos, resources, the namespace.
    assert {p.pipeline.name for p in client.list_pipeline()} <= pipelines_before
    assert {r.repo.name for r in client.list_repo()} <= repos_before
    assert "NotFound" in kubectl(stack, "get", "namespace", NAMESPACE, check=False)
