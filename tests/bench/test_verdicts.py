"""The bench's verdicts (bench.targets, bench.burst_target) on real figures: the two full runs
the README's table reports (measure 1 from the interleaved pairs measured for issue 23), and
each bound crossed by a hair from them. No I/O."""

from __future__ import annotations

import copy
import statistics
from typing import Any

import pytest

from bench.bench import Options, median_interval, spread, targets

# Measure 1 as docs/benchmark.md reports it: 7 interleaved pairs on one pachd (issue 23).
MEASURED_FLOOR = [1.54, 1.62, 1.72, 1.52, 1.43, 1.61, 1.62]
MEASURED_OPERATOR = [2.07, 2.02, 1.92, 1.93, 2.02, 1.82, 2.03]
MEDIAN_DELTA = 0.41  # +0.20 .. +0.59 s: misses the 0.3 s bound
# The full bench's 7 pairs at 3b9adb5 (docs/benchmark.md): +0.30 s, -0.26 .. +0.68 s.
FULL_FLOOR = [1.66, 1.95, 1.73, 1.43, 1.41, 1.72, 1.30]
FULL_OPERATOR = [2.34, 1.69, 2.03, 1.62, 1.94, 1.61, 1.81]


def measured_one(
    floor: list[float] = MEASURED_FLOOR, operator: list[float] = MEASURED_OPERATOR
) -> dict[str, Any]:
    """Measure 1's section as the bench builds it from its pairs."""
    delta = [o - f for o, f in zip(operator, floor, strict=True)]
    return {
        "pairs": len(floor),
        "floor_p50_s": statistics.median(floor),
        "operator_p50_s": statistics.median(operator),
        "delta_p50_s": statistics.median(delta),
        "floor": spread(floor),
        "operator": spread(operator),
        "delta": spread(delta),
        "delta_median_ci": median_interval(delta),
    }


def readme_run(first: bool = False) -> dict[str, Any]:
    """The README's table: N=48 over 6 pachds, sweep every 60 s; the second run, or the first
    (in brackets there) where it differs. Measure 1 from the interleaved pairs measured since."""
    return {
        "one_resource": measured_one(),
        "n_resources": {"n": 48, "ratio": 1.23 if first else 1.18},
        "drift_one": {"p50_s": 0.20, "p95_s": 0.69 if first else 1.23},
        "drift": {"p50_s": 0.72 if first else 0.77, "p95_s": 3.51 if first else 2.01},
        "drift_floor": {"p50_s": 0.21, "p95_s": 0.39},
        "spout_update": {
            "resources": 48,
            "converge_s": 63.31 if first else 62.83,
            "history_kept": True,
            "processors_rewired": 48,
        },
        "steady": {
            "pachd_writes": 0.0,
            "status_writes": 0.0,
            "resources": 48,
            "data_flow_followed": 48,
            "data_flow_shown": 48,
            "listings_per_sweep_per_pachd": 1.0,
            "inspect_pipeline_calls": 0.0,
            "versions_unchanged": True,
        },
        "memory": {"unreachable": 500, "rss_mb_unreachable": 148.5 if first else 149.2},
        "consumer": {"ratio": 1.00 if first else 1.11},
    }


KEYS = (
    "one resource",
    "converge",
    "drift repair p50 <= 1 s",
    "drift repair, all",
    "spout image change",
    "steady: 0 pachd writes",
    "steady: about one listing",
    "steady: pipeline versions",
    "RSS",
    "consumer",
)


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    """Each target's verdict, by the start of its name (KEYS, in the bench's order)."""
    found = targets(results, Options())
    assert len(found) == len(KEYS) and all(
        t["target"].startswith(k) for t, k in zip(found, KEYS, strict=True)
    )
    return {key: bool(t["pass"]) for key, t in zip(KEYS, found, strict=True)}


def test_the_readme_runs_get_the_readme_verdicts() -> None:
    second = verdicts(readme_run())
    assert [k for k, ok in second.items() if not ok] == ["one resource", "drift repair, all"]  # +0.41; 2.01 s
    first = verdicts(readme_run(first=True))
    assert [k for k, ok in first.items() if not ok] == ["one resource", "drift repair, all"]  # +0.41; 3.51 s


def test_measure_1_is_the_median_of_the_pairs_differences_with_its_spread() -> None:
    one = measured_one()
    assert one["pairs"] == 7
    assert one["delta_p50_s"] == pytest.approx(MEDIAN_DELTA, abs=0.005)
    assert one["delta"]["q1_s"] <= one["delta_p50_s"] <= one["delta"]["q3_s"]
    assert one["delta"]["min_s"] <= one["delta"]["q1_s"] and one["delta"]["q3_s"] <= one["delta"]["max_s"]
    [target] = [t for t in targets(readme_run(), Options()) if t["target"].startswith("one resource")]
    assert "over 7 pairs" in target["value"] and "IQR" in target["value"] and "98% CI" in target["value"]


def test_the_median_interval_is_the_order_statistics_of_the_binomial_tails() -> None:
    """7 pairs: only the range holds the median at 95% (98.4%); 15 pairs: the 4th to the 12th
    (96.5%); 25: the 8th to the 18th. More pairs tell the median more closely."""
    seven = median_interval([0.5, -0.2, 0.1, 0.3, 0.0, 0.4, 0.2])
    assert (seven["lo_s"], seven["hi_s"]) == (-0.2, 0.5)
    assert seven["level"] == pytest.approx(1 - 2 / 2**7)
    assert seven["half_s"] == pytest.approx(0.4)  # 0.2 - (-0.2)
    fifteen = median_interval([i / 10 for i in range(15)][::-1])
    assert (fifteen["lo_s"], fifteen["hi_s"]) == (0.3, 1.1)
    assert fifteen["level"] == pytest.approx(1 - 2 * (1 + 15 + 105 + 455) / 2**15)
    twenty_five = median_interval([i / 10 for i in range(25)])
    assert (twenty_five["lo_s"], twenty_five["hi_s"]) == (0.7, 1.7)  # the 8th and 18th
    assert median_interval([0.25])["half_s"] == 0.0


def test_a_median_within_the_bound_but_not_known_to_it_misses() -> None:
    """The full bench's 7 pairs (docs/benchmark.md, 3b9adb5), moved to a median of +0.15 s:
    within 0.3 s, but its interval (the whole range at 7 pairs) is -0.41 .. +0.53 s, so the
    median is not known to the target. The N=4 run's narrower pairs, moved likewise, are."""
    for floor, operator, known in (
        (FULL_FLOOR, FULL_OPERATOR, False),
        (MEASURED_FLOOR, MEASURED_OPERATOR, True),
    ):
        results = readme_run()
        shift = 0.15 - measured_one(floor, operator)["delta_p50_s"]
        results["one_resource"] = measured_one(floor, [o + shift for o in operator])
        assert results["one_resource"]["delta_p50_s"] == pytest.approx(0.15)
        assert verdicts(results)["one resource"] is known


# (target, section, field, a value on its bound, a value just past it), from the README run.
BOUNDS = [
    ("one resource", "one_resource", "delta_p50_s", 0.3, 0.31),
    ("one resource", "one_resource", "pairs", 7, 6),
    (
        "one resource",
        "one_resource",
        "delta_median_ci",
        {"lo_s": 0, "hi_s": 0, "level": 1, "half_s": 0.29},
        {"lo_s": 0, "hi_s": 0, "level": 1, "half_s": 0.3},
    ),
    ("converge", "n_resources", "ratio", 1.3, 1.31),
    ("drift repair p50 <= 1 s", "drift_one", "p50_s", 1.0, 1.01),
    ("drift repair p50 <= 1 s", "drift_one", "p95_s", 2.0, 2.01),
    ("drift repair, all", "drift", "p50_s", 1.0, 1.01),
    ("drift repair, all", "drift", "p95_s", 2.0, 2.01),
    ("spout image change", "spout_update", "processors_rewired", 48, 47),
    ("spout image change", "spout_update", "history_kept", True, False),
    ("steady: 0 pachd writes", "steady", "pachd_writes", 0.0, 1.0),
    ("steady: 0 pachd writes", "steady", "status_writes", 0.0, 1.0),
    ("steady: 0 pachd writes", "steady", "data_flow_followed", 48, 47),
    ("steady: 0 pachd writes", "steady", "data_flow_shown", 48, 47),
    ("steady: about one listing", "steady", "listings_per_sweep_per_pachd", 1.5, 1.51),
    ("steady: about one listing", "steady", "inspect_pipeline_calls", 0.0, 1.0),
    ("steady: pipeline versions", "steady", "versions_unchanged", True, False),
    ("RSS", "memory", "rss_mb_unreachable", 150.0, 150.1),
    ("consumer", "consumer", "ratio", 0.9, 0.89),
]


@pytest.mark.parametrize(("key", "section", "field", "on_bound", "past_bound"), BOUNDS)
def test_each_bound_passes_on_it_and_misses_past_it(
    key: str, section: str, field: str, on_bound: object, past_bound: object
) -> None:
    results = readme_run()
    results["one_resource"]["delta_p50_s"] = 0.2  # every other target passes
    results["drift"]["p95_s"] = 1.9
    assert all(verdicts(results).values())
    for value, expected in ((on_bound, True), (past_bound, False)):
        changed = copy.deepcopy(results)
        changed[section][field] = value
        found = verdicts(changed)
        assert found[key] is expected, (field, value)
        assert all(ok for k, ok in found.items() if k != key), found  # nothing else moved


def test_a_burst_pachd_cannot_take_fast_is_judged_against_its_floor() -> None:
    """Where even the direct floor misses 1 / 2 s, the bound is 1.5x the floor."""
    results = readme_run()
    results["drift_floor"] = {"p50_s": 0.9, "p95_s": 1.6}  # bounds: 1.35 / 2.4 s
    results["drift"] = {"p50_s": 1.35, "p95_s": 2.4}
    assert verdicts(results)["drift repair, all"] is True
    results["drift"]["p95_s"] = 2.41
    assert verdicts(results)["drift repair, all"] is False
    results["drift"] = {"p50_s": 1.36, "p95_s": 2.0}
    assert verdicts(results)["drift repair, all"] is False
