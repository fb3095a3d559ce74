"""Prometheus metrics of the operator, served on SPOUT_OPERATOR_METRICS_PORT.

kopf has no metrics of its own; these say what the operator costs pachd and how
it converges. Every replica serves them from the start of its process (a standby too):
`spout_operator_leader` says which one leads, and only the leader's per-resource gauges
are non-zero (a replica that stops leading clears them rather than serve frozen values).

Cardinality is bounded: labels take values from fixed sets (triggers, results and reasons
the status knows, pachd's gRPC methods and status codes, condition types), never a
resource's name; per-resource series are the data-flow gauges alone (one series per
SpoutPipeline and gauge, removed with the resource).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

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
LEADER = Gauge(
    "spout_operator_leader", "1 on the replica that holds the Lease (or runs without election), else 0"
)
RECONCILE_ERRORS = Counter(
    "spout_operator_reconcile_errors_total",
    "Passes that ended in an error, by reason (the status's Synced/Ready reason, or Exception)",
    ["reason"],
)
RECONCILE_SECONDS = Histogram(
    "spout_operator_reconcile_duration_seconds",
    "Time one pass over one resource took (its thread's work: pachd calls and the status write)",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILES_IN_FLIGHT = Gauge("spout_operator_reconciles_in_flight", "Passes running right now")
PASS_STEP_SECONDS = Histogram(
    "spout_operator_pass_step_duration_seconds",
    "One step on a pass's path (tracing.py): the wait for the pass to start after the watch event,"
    " Kubernetes reads, each pachd call by method, status writes",
    ["step"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PACHD_CALL_SECONDS = Histogram(
    "spout_operator_pachd_call_duration_seconds",
    "gRPC calls to pachd by method and gRPC status code (OK, UNAVAILABLE, DEADLINE_EXCEEDED, ...)",
    ["method", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONDITIONS = Gauge(
    "spout_operator_resources_by_condition",
    "Managed resources whose condition (Ready, Stalled, Paused) has the status (True, False)",
    ["condition", "status"],
)
# Per resource (namespace, name): the data flow, live from pachd's commit streams. One series
# per SpoutPipeline and gauge, removed with it.
_RESOURCE = ["namespace", "name"]
SPOUT_LAST_COMMIT = Gauge(
    "spout_operator_spout_last_commit_timestamp_seconds",
    "When the spout last finished a commit to its output repo (Unix time)",
    _RESOURCE,
)
PROCESSOR_LAG = Gauge(
    "spout_operator_processor_lag_commits", "Spout commits the processor has not finished yet", _RESOURCE
)
PROCESSOR_LAST_FINISHED = Gauge(
    "spout_operator_processor_last_finished_timestamp_seconds",
    "When the processor last finished a commit (Unix time)",
    _RESOURCE,
)
EXPECTED_COMMIT_WITHIN = Gauge(
    "spout_operator_expected_commit_within_seconds",
    "spec.expectations.commitWithinSeconds, where set",
    _RESOURCE,
)
EXPECTED_MAX_LAG = Gauge(
    "spout_operator_expected_max_lag_commits", "spec.expectations.maxLag, where set", _RESOURCE
)
DATA_FLOWING = Gauge(
    "spout_operator_data_flowing",
    "1 DataFlowing=True, 0 False (beyond an expectation), where expectations are set",
    _RESOURCE,
)
_FLOW_GAUGES = (
    SPOUT_LAST_COMMIT,
    PROCESSOR_LAG,
    PROCESSOR_LAST_FINISHED,
    EXPECTED_COMMIT_WITHIN,
    EXPECTED_MAX_LAG,
    DATA_FLOWING,
)

# The conditions counted in CONDITIONS: Ready and Stalled from the status, Paused from the handle.
COUNTED_CONDITIONS = ("Ready", "Stalled", "Paused")
# Ready=False reasons that are no error of a pass: the operator waits for pachd or workers.
_WAITING_REASONS = frozenset(
    {"PipelineNotRunning", "PipelineNotStopped", "WorkersStarting", "Progressing", "ReconcilePaused"}
)


_serving: set[int] = set()


def serve(port: int) -> None:
    """Start the metrics endpoint once per process (an operator restarted in-process,
    as in the tests, keeps the one it has)."""
    if port and port not in _serving:
        start_http_server(port)
        _serving.add(port)


def lead_by(leading: Callable[[], bool]) -> None:
    """`spout_operator_leader` asks `leading` at each scrape: the Lease's own word, never a
    value left over from a term that ended."""
    LEADER.set_function(lambda: 1.0 if leading() else 0.0)


def pass_error(status: Mapping[str, Any] | None) -> str | None:
    """Why a pass's result counts as an error (a condition's reason), or None: Synced=False
    (pachd unreachable or refusing, an invalid spec, a connection problem) or Stalled=True.
    Waiting for pachd or workers, or a pause, is no error."""
    if status is None:
        return None
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind, bad in (("Stalled", "True"), ("Synced", "False")):
        found = conditions.get(kind)
        if found is not None and found.get("status") == bad:
            reason = str(found.get("reason") or kind)
            return None if reason in _WAITING_REASONS else reason
    return None


def stalled(status: Mapping[str, Any]) -> bool:
    """Whether a status says Stalled=True (kstatus: Failed)."""
    return any(
        c.get("type") == "Stalled" and c.get("status") == "True" for c in status.get("conditions") or []
    )


@contextlib.contextmanager
def timed_pass(trigger: str) -> Iterator[None]:
    """Around one pass in its thread: in flight meanwhile, its duration, an exception counted."""
    started = time.monotonic()
    RECONCILES_IN_FLIGHT.inc()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.labels("Exception").inc()
        raise
    finally:
        RECONCILES_IN_FLIGHT.dec()
        RECONCILE_SECONDS.labels(trigger).observe(time.monotonic() - started)


class _View(Protocol):
    @property
    def last_commit(self) -> float | None: ...
    @property
    def lag(self) -> int: ...
    @property
    def last_processed(self) -> float | None: ...


def flow(labels: tuple[str, str], view: _View) -> None:
    """A resource's live data flow (dataflow.FlowView)."""
    if view.last_commit is not None:
        SPOUT_LAST_COMMIT.labels(*labels).set(view.last_commit)
    PROCESSOR_LAG.labels(*labels).set(view.lag)
    if view.last_processed is not None:
        PROCESSOR_LAST_FINISHED.labels(*labels).set(view.last_processed)


def _set_or_remove(gauge: Gauge, labels: tuple[str, str], value: float | None) -> None:
    if value is not None:
        gauge.labels(*labels).set(value)
    else:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)


def flow_expectations(labels: tuple[str, str], commit_within_s: float | None, max_lag: int | None) -> None:
    _set_or_remove(EXPECTED_COMMIT_WITHIN, labels, commit_within_s)
    _set_or_remove(EXPECTED_MAX_LAG, labels, max_lag)


def data_flowing(labels: tuple[str, str], status: Mapping[str, Any]) -> None:
    """DataFlowing as the pass wrote it: 1, 0, or no series (nothing judged, or Unknown)."""
    found = next((c for c in status.get("conditions") or [] if c.get("type") == "DataFlowing"), None)
    value = None if found is None else {"True": 1.0, "False": 0.0}.get(str(found.get("status")))
    _set_or_remove(DATA_FLOWING, labels, value)


def forget_flow(labels: tuple[str, str]) -> None:
    for gauge in _FLOW_GAUGES:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)


class Readiness:
    """Feeds the resources gauge and the convergence histogram. Thread-safe; a resource's
    bookkeeping goes when it does (forget), so churn does not grow it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[str, bool] = {}  # uid -> Ready
        self._paused: set[str] = set()
        self._stalled: set[str] = set()
        self._changed_at: dict[str, tuple[int, float]] = {}  # uid -> (generation, first handled)

    def changed(self, uid: str, generation: int) -> None:
        """A spec change (or creation) is being handled: convergence time starts now."""
        with self._lock:
            if self._changed_at.get(uid, (None, 0.0))[0] != generation:
                self._changed_at[uid] = (generation, time.monotonic())

    def record(
        self, uid: str, generation: int, ready: bool, paused: bool = False, stalled: bool = False
    ) -> None:
        with self._lock:
            self._ready[uid] = ready
            for flag, members in ((paused, self._paused), (stalled, self._stalled)):
                if flag:
                    members.add(uid)
                else:
                    members.discard(uid)
            started = self._changed_at.get(uid)
            if ready and started is not None and started[0] == generation:
                CONVERGENCE.observe(time.monotonic() - started[1])
                del self._changed_at[uid]
            self._publish()

    def forget(self, uid: str) -> None:
        with self._lock:
            self._ready.pop(uid, None)
            self._paused.discard(uid)
            self._stalled.discard(uid)
            self._changed_at.pop(uid, None)
            self._publish()

    def clear(self) -> None:
        """The operator stopped (this replica no longer leads): it answers for no resource."""
        with self._lock:
            self._ready.clear()
            self._paused.clear()
            self._stalled.clear()
            self._changed_at.clear()
            self._publish()

    def _publish(self) -> None:
        total = len(self._ready)
        ready_count = sum(self._ready.values())
        READY.labels("True").set(ready_count)
        READY.labels("False").set(total - ready_count)
        PAUSED.set(len(self._paused))
        for condition, true in (
            ("Ready", ready_count),
            ("Stalled", len(self._stalled)),
            ("Paused", len(self._paused)),
        ):
            CONDITIONS.labels(condition, "True").set(true)
            CONDITIONS.labels(condition, "False").set(total - true)
