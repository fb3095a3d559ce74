"""Prometheus metrics of the operator, served on SPOUT_OPERATOR_METRICS_PORT.

kopf has no metrics of its own; these say what the operator costs pachd and how
it converges.
"""

from __future__ import annotations

import threading
import time

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
WRITES_REFUSED = Counter(
    "spout_operator_writes_refused_total",
    "Passes and status writes refused because this replica does not hold the Lease",
)
STATUS_WRITES = Counter("spout_operator_status_writes_total", "Status writes to the API server")
PACHD_CHANNELS = Gauge("spout_operator_pachd_channels", "Open gRPC channels to pachd (one per endpoint)")
READY = Gauge("spout_operator_resources", "Managed resources by Ready state", ["ready"])
PAUSED = Gauge("spout_operator_resources_paused", "Resources whose reconciliation is paused (annotation)")
RESTARTS = Counter(
    "spout_operator_pipeline_restarts_total", "Pipelines restarted, on request or automatically", ["kind"]
)


_serving: set[int] = set()


def serve(port: int) -> None:
    """Start the metrics endpoint once per process (an operator restarted in-process,
    as in the tests, keeps the one it has)."""
    if port and port not in _serving:
        start_http_server(port)
        _serving.add(port)


class Readiness:
    """Feeds the resources gauge and the convergence histogram. Thread-safe; a resource's
    bookkeeping goes when it does (forget), so churn does not grow it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[str, bool] = {}  # uid -> Ready
        self._paused: set[str] = set()
        self._changed_at: dict[str, tuple[int, float]] = {}  # uid -> (generation, first handled)

    def changed(self, uid: str, generation: int) -> None:
        """A spec change (or creation) is being handled: convergence time starts now."""
        with self._lock:
            if self._changed_at.get(uid, (None, 0.0))[0] != generation:
                self._changed_at[uid] = (generation, time.monotonic())

    def record(self, uid: str, generation: int, ready: bool, paused: bool = False) -> None:
        with self._lock:
            self._ready[uid] = ready
            if paused:
                self._paused.add(uid)
            else:
                self._paused.discard(uid)
            started = self._changed_at.get(uid)
            if ready and started is not None and started[0] == generation:
                CONVERGENCE.observe(time.monotonic() - started[1])
                del self._changed_at[uid]
            self._publish()

    def forget(self, uid: str) -> None:
        with self._lock:
            self._ready.pop(uid, None)
            self._paused.discard(uid)
            self._changed_at.pop(uid, None)
            self._publish()

    def _publish(self) -> None:
        ready_count = sum(self._ready.values())
        READY.labels("True").set(ready_count)
        READY.labels("False").set(len(self._ready) - ready_count)
        PAUSED.set(len(self._paused))
