"""The operator's dependencies fail under it: pachd killed and frozen, kube-apiserver and etcd
restarted under load. The operator notices, says so, and recovers by itself."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from devstack.stack import Stack, State, _alive
from devstack.testing import (
    PACHD_WRITES,
    PASSES,
    OperatorProcess,
    counted,
    delta,
    eventually,
    holds_throughout,
)
from faults.faultkit import Api, Pachd, body, condition, figure, ready

pytestmark = pytest.mark.faults

INTERVAL_S = 5.0
PACHD_TIMEOUT_S = 2.0
FREEZE_S = 60.0


def unavailable(obj: dict[str, Any]) -> bool:
    return condition(obj, "Synced").get("reason") == "PachdUnavailable"


def gone(api: Api, name: str) -> bool:
    try:
        api.get(name)
    except kubernetes.client.ApiException as err:
        return bool(err.status == 404)
    return False


def outage(
    api: Api, operator: OperatorProcess, pachd: Pachd, prefix: str, kept: str, doomed: str, what: str
) -> float:
    """While pachd is away: both resources say so; `doomed` is deleted and waits. Returns when
    the status said so, in seconds from now (the outage's start)."""
    started = time.monotonic()
    eventually(lambda: unavailable(api.get(kept)) and unavailable(api.get(doomed)), 4 * INTERVAL_S, 0.2)
    detected_s = time.monotonic() - started
    figure(f"pachd_{what}_detected_s", round(detected_s, 1))
    figure(f"pachd_{what}_detected_intervals", round(detected_s / INTERVAL_S, 2))
    assert detected_s <= 2 * INTERVAL_S + PACHD_TIMEOUT_S, detected_s  # two sweeps (+ the call's deadline)
    assert operator.health() is not None  # the probe never waits on pachd
    api.delete(doomed)
    eventually(
        lambda: "waiting to delete" in condition(api.get(doomed), "Ready").get("message", ""),
        4 * INTERVAL_S,
        0.3,
        what="deletion waiting for pachd",
    )
    return detected_s


def recovered(api: Api, pachd: Pachd, prefix: str, kept: str, doomed: str, what: str) -> None:
    back = time.monotonic()
    eventually(lambda: ready(api.get(kept)), 120, 0.3, what=f"{kept} Ready again")
    figure(f"pachd_{what}_ready_again_s", round(time.monotonic() - back, 1))
    eventually(lambda: gone(api, doomed), 120, 0.3, what=f"{doomed} deleted")
    figure(f"pachd_{what}_deletion_finished_s", round(time.monotonic() - back, 1))
    found = set(pachd.pipelines(prefix))
    assert {f"{prefix}-{kept}-s", f"{prefix}-{kept}-p"} <= found, found
    assert not {n for n in found if n.startswith(f"{prefix}-{doomed}-")}, found  # nothing orphaned


def test_pachd_killed_and_frozen(
    stack: State, control: Stack, ns: str, prefix: str, operators: Callable[..., OperatorProcess]
) -> None:
    api, pachd = Api(stack, ns), Pachd(stack)
    operator = operators(
        SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS=str(INTERVAL_S),
        SPOUT_OPERATOR_PACHD_TIMEOUT_SECONDS=str(PACHD_TIMEOUT_S),
    )
    operator.wait_healthy()
    for name in ("kept", "killed", "frozen"):
        api.create(body(name, prefix))
    for name in ("kept", "killed", "frozen"):
        eventually(lambda n=name: ready(api.get(n)), 120, what=f"{name} Ready")  # type: ignore[misc]

    control.kill("pachd-0")
    try:
        outage(api, operator, pachd, prefix, "kept", "killed", "killed")
    finally:
        control.start("pachd-0")
    recovered(api, pachd, prefix, "kept", "killed", "killed")
    # Thawed or restarted, the kept pair is as it was: nothing re-created, nothing twice.
    eventually(lambda: ready(api.get("frozen")), 120, what="frozen Ready before the freeze")

    control.signal("pachd-0", signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        outage(api, operator, pachd, prefix, "kept", "frozen", "frozen")
        # The freeze lasts FREEZE_S whatever happens: the probe answers all along.
        left_s = FREEZE_S - (time.monotonic() - frozen_at)
        holds_throughout(lambda: operator.health() is not None, left_s, 1, "the liveness probe answering")
    finally:
        control.signal("pachd-0", signal.SIGCONT)
    recovered(api, pachd, prefix, "kept", "frozen", "frozen")
    assert operator.alive()


def test_apiserver_and_etcd_restarted_under_load(
    stack: State, control: Stack, ns: str, prefix: str, operators: Callable[..., OperatorProcess]
) -> None:
    api, pachd = Api(stack, ns), Pachd(stack)
    operator = operators()
    operator.wait_healthy()
    names = ["a", "b", "c"]
    for name in names:
        api.create(body(name, prefix, env={"ROUND": "0"}))
    for name in names:
        eventually(lambda n=name: ready(api.get(n)), 120, what=f"{name} Ready")  # type: ignore[misc]

    edits = dict.fromkeys(names, 0)
    stop = threading.Event()

    def load() -> None:
        serial = 0
        while not stop.is_set():
            serial += 1
            name = names[serial % len(names)]
            with contextlib.suppress(Exception):  # the API server is away for a while
                api.patch(name, {"spec": {"processor": {"transform": {"env": {"ROUND": str(serial)}}}}})
                edits[name] += 1
            stop.wait(0.5)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()

    def edits_go_through(more: int) -> None:
        """Until `more` edits more have been accepted and the operator has finished `more`
        passes for edits since: the load is on (again), and reaches the operator through its
        watch (reconnected after a restart) before the next component goes down."""
        made = sum(edits.values())
        eventually(lambda: sum(edits.values()) >= made + more, 120, 0.2, what=f"{more} more edits")
        counted(operator.scrape, PASSES, more, 120, trigger="change")

    try:
        edits_go_through(3)
        started = time.monotonic()
        control.restart("kube-apiserver")
        figure("apiserver_restart_s", round(time.monotonic() - started, 1))
        edits_go_through(5)
        started = time.monotonic()
        control.restart("etcd")
        figure("etcd_restart_s", round(time.monotonic() - started, 1))
        edits_go_through(5)
    finally:
        stop.set()
        worker.join(30)
    assert control.state is not None
    assert _alive(control.state.pids["pachd-0"]), "pachd died with etcd"

    def converged() -> bool:
        for name in names:
            obj = api.get(name)
            env = obj["spec"]["processor"]["transform"]["env"]
            found = pachd.pipelines(f"{prefix}-{name}-")
            if not ready(obj) or dict(found[f"{prefix}-{name}-p"].details.transform.env) != env:
                return False
        return True

    settled = time.monotonic()
    eventually(converged, 180, 1.0, what="every edit applied")
    figure("apiserver_etcd_converged_after_s", round(time.monotonic() - settled, 1))
    figure("apiserver_etcd_edits", sum(edits.values()))
    assert operator.alive()  # reconnected by itself, never restarted
    versions = {n: p.version for n, p in pachd.pipelines(prefix).items()}
    for name in names:
        # Never twice: at most one update per edit (edits close together are one update).
        assert versions[f"{prefix}-{name}-p"] <= 1 + edits[name], (versions, edits)
        assert versions[f"{prefix}-{name}-s"] == 1, versions  # the spout never changed
    # Nothing more to do: three more sweeps over the three write nothing to pachd.
    counters = operator.scrape()
    after = counted(operator.scrape, PASSES, 3 * len(names), 60, counters, trigger="drift")
    assert delta(counters, after, PACHD_WRITES) == 0
    assert {n: p.version for n, p in pachd.pipelines(prefix).items()} == versions
