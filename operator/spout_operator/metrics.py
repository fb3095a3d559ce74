"""Prometheus metrics of the operator, served on SPOUT_OPERATOR_METRICS_PORT.

kopf has no metrics of its own; these say what the operator costs pachd and how
it converges.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "spout_operator_reconciles_total", "Reconcile passes by trigger and result", ["trigger", "result"]
)
PACHD_CALLS = Counter("spout_operator_pachd_calls_total", "gRPC calls to pachd by method", ["method"])
PACHD_WRITES = Counter(
    "spout_operator_pachd_writes_total", "Calls that change pachd (create, update, start, stop, delete)"
)
DRIFT_REPAIRS = Counter(
    "spout_operator_drift_repairs_total", "Pipelines restored after a change behind the operator's back"
)
CONVERGENCE = Histogram(
    "spout_operator_convergence_seconds",
    "Time from a resource's spec change (or creation) to its first Ready",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
READY = Gauge("spout_operator_resources", "Managed resources by Ready state", ["ready"])


_serving: set[int] = set()


def serve(port: int) -> None:
    """Start the metrics endpoint once per process (an operator restarted in-process,
    as in the tests, keeps the one it has)."""
    if port and port not in _serving:
        start_http_server(port)
        _serving.add(port)
