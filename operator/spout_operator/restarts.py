"""Restarts of a pipeline's workers: on request (a restart token) and automatically
(spec.autoRestart). A restart is pachd's stop, then start: no new pipeline version, and
the operator does not count it as drift.

The decisions are pure (operating.py, autorestart.py); this module carries them out
through the Pachd protocol and says what happened, for status and Events.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spout_operator import autorestart, metrics
from spout_operator.conditions import now
from spout_operator.events import Event
from spout_operator.operating import ROLES, Handles, restart_requests
from spout_operator.pachd_api import Pachd, PachdError, PachdUnavailable
from spout_operator.reconcile import Outcome
from spout_operator.spec import SpoutPipelineSpec
from spout_operator.status import FAILING
from spout_operator.workers import WorkerHealth


@dataclass
class Restarts:
    """What this pass's restarts leave in status (`handled`) and the Events they post."""

    handled: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    exhausted: str = ""  # automatic restarts gave up: why (Stalled)


def carry_out(
    spec: SpoutPipelineSpec,
    handles: Handles,
    previous: Mapping[str, Any],
    outcome: Outcome,
    workers: Mapping[str, WorkerHealth] | None,
    gateway: Pachd,
    spout_quiet: bool = False,
    quiet_window_s: float = 0.0,
) -> Restarts:
    """The restarts this pass owes: requested tokens first, then the automatic policy.
    `spout_quiet`: the spout has not committed within its expectation, `quiet_window_s`
    (dataflow.spout_quiet, commitWithinSeconds)."""
    result = Restarts()
    acks = dict(previous.get("restarts") or {})
    for request in restart_requests(handles, previous, spec.running):
        name = outcome.names[ROLES.index(request.role)]
        refusal = request.refusal
        if not refusal and outcome.observed.get(name) is None:
            refusal = f"pipeline {name} does not exist in pachd"
        if refusal:
            acks[request.role] = {"token": request.token, "outcome": "Refused", "message": refusal}
            result.events.append(Event("Warning", "RestartRefused", f"restart of {name} refused: {refusal}"))
            continue
        try:
            _restart(gateway, spec.project, name, outcome)
        except PachdUnavailable:
            continue  # not acknowledged: the next pass tries again
        except PachdError as err:
            acks[request.role] = {"token": request.token, "outcome": "Failed", "message": str(err)}
            result.events.append(Event("Warning", "RestartFailed", f"restart of {name} failed: {err}"))
            continue
        metrics.RESTARTS.labels("requested").inc()
        acks[request.role] = {"token": request.token, "outcome": "Restarted", "at": now()}
        result.events.append(
            Event("Normal", "Restarted", f"pipeline {name} restarted (token {request.token})")
        )
    if acks:
        result.handled["restarts"] = acks
    # Any pass that ran once a token was set answers it; the last one answered stays.
    token = handles.reconcile_token or previous.get("lastHandledReconcileAt")
    if token:
        result.handled["lastHandledReconcileAt"] = token
    if spec.auto_restart is not None and spec.running and not handles.paused:
        _automatic(spec, previous, outcome, workers or {}, gateway, result, spout_quiet, quiet_window_s)
    elif "autoRestart" in previous:
        result.handled["autoRestart"] = previous["autoRestart"]
    return result


def _automatic(
    spec: SpoutPipelineSpec,
    previous: Mapping[str, Any],
    outcome: Outcome,
    workers: Mapping[str, WorkerHealth],
    gateway: Pachd,
    result: Restarts,
    spout_quiet: bool,
    quiet_window_s: float,
) -> None:
    assert spec.auto_restart is not None
    why: dict[str, str] = {}  # the failing pipelines: what their restart's Event says
    for name, observed in outcome.observed.items():
        if observed is None or observed.stopped:
            continue
        if observed.state in FAILING or (name in workers and workers[name].failing):
            why[name] = "failing"
        elif name == spec.spout.name and spout_quiet:
            why[name] = "not committing within spec.expectations.commitWithinSeconds"
    failing = {name: name in why for name in outcome.observed}
    before = previous.get("autoRestart") or {}
    now = datetime.datetime.now(datetime.UTC)
    decision = autorestart.decide(spec.auto_restart, failing, before, now, quiet_window_s)
    record = decision.record
    for name in decision.restart:
        try:
            _restart(gateway, spec.project, name, outcome)
        except PachdError:
            record = dict(before)  # not done: the next pass tries again
            break
        metrics.RESTARTS.labels("automatic").inc()
        nxt = f"; the next not before {record['nextRestartAt']}" if "nextRestartAt" in record else ""
        result.events.append(
            Event(
                "Warning",
                "AutoRestarted",
                f"pipeline {name} restarted after {why[name]} (restart {record['restarts']} "
                f"of {spec.auto_restart.max_restarts}{nxt})",
            )
        )
    if decision.exhausted:
        names = ", ".join(name for name, bad in failing.items() if bad)
        result.exhausted = (
            f"pipeline {names} still failing after {record['restarts']} automatic restarts "
            "(spec.autoRestart.maxRestarts); restart it by hand or fix its cause"
        )
        record = {**record, "exhausted": True}
        if not before.get("exhausted"):
            result.events.append(Event("Warning", "AutoRestartLimit", result.exhausted))
    result.handled["autoRestart"] = record


def _restart(gateway: Pachd, project: str, name: str, outcome: Outcome) -> None:
    gateway.stop(name, project)
    gateway.start(name, project)
    outcome.observed[name] = gateway.inspect(name, project)
