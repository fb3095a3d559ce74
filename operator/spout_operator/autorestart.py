"""Bounded automatic restarts of a pipeline that stays failed (pure).

Opt-in per resource (spec.autoRestart). A pipeline counts as failing when pachd says FAILURE
or CRASHING, or when its workers cannot come up by waiting (a crash loop, a failed pod);
the spout also when it has not committed within spec.expectations.commitWithinSeconds
(SpoutQuiet: RUNNING with ready workers, yet stuck).
Once it has failed for `afterSeconds`, the operator restarts it (pachd stop, then start);
each further restart waits `backoffSeconds` doubled per restart already made, up to
`maxRestarts`; then it stops trying and says so (Stalled: only a person can help now). The
count starts again once both pipelines have been healthy for `afterSeconds` (and for the
spout's commitWithinSeconds, when set). Never while paused or declared Stopped: a restart
must not fight what a person asked for.

Restarts happen at the first pass at or after the time status.autoRestart.nextRestartAt
gives: passes run at least once per sweep (SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS) and at
every change of the workers' health.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spout_operator.spec import AutoRestart


@dataclass(frozen=True)
class Decision:
    record: dict[str, Any]  # status.autoRestart
    restart: tuple[str, ...] = ()  # the failing pipelines to restart now
    exhausted: bool = False  # failing, and the maximum is reached


def _time(raw: Any) -> datetime.datetime | None:
    if not raw:
        return None
    return datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def _stamp(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(
    policy: AutoRestart,
    failing: Mapping[str, bool],
    previous: Mapping[str, Any],
    now: datetime.datetime,
    healthy_s: float = 0.0,
) -> Decision:
    """What to do at this pass: `failing` says, per pipeline, whether it is failing now;
    `previous` is status.autoRestart as the last pass left it. `healthy_s`: health must also
    last this long before the count starts again (a quiet spout's commitWithinSeconds: pachd's
    start of a pipeline makes a commit on its output branch, so a restarted spout looks as if
    it committed, and that must not reset the count before it can be quiet again)."""
    count = int(previous.get("restarts") or 0)
    last = _time(previous.get("lastRestartAt"))
    record: dict[str, Any] = {"restarts": count, "maxRestarts": policy.max_restarts}
    if last is not None:
        record["lastRestartAt"] = _stamp(last)
    broken = tuple(name for name, bad in failing.items() if bad)
    if not broken:
        healthy_since = _time(previous.get("healthySince")) or now
        if count and (now - healthy_since).total_seconds() >= max(policy.after_s, healthy_s):
            record["restarts"] = 0  # healthy long enough: a later failure starts afresh
        else:
            record["healthySince"] = _stamp(healthy_since)
            if last is not None and count < policy.max_restarts:
                # Should it fail again: the back-off's end, the earliest the next restart can be.
                record["nextRestartAt"] = _stamp(last + datetime.timedelta(seconds=policy.wait_after(count)))
        return Decision(record)
    failing_since = _time(previous.get("failingSince")) or now
    record["failingSince"] = _stamp(failing_since)
    if count >= policy.max_restarts:
        return Decision(record, exhausted=True)
    due = failing_since + datetime.timedelta(seconds=policy.after_s)
    if last is not None:
        due = max(due, last + datetime.timedelta(seconds=policy.wait_after(count)))
    if now < due:
        record["nextRestartAt"] = _stamp(due)
        return Decision(record)
    count += 1
    record.update(restarts=count, lastRestartAt=_stamp(now))
    if count < policy.max_restarts:
        # Failing again right away: the next restart comes after the back-off (or after
        # `after_s` of failing, whichever is later).
        record["nextRestartAt"] = _stamp(now + datetime.timedelta(seconds=policy.wait_after(count)))
    return Decision(record, restart=broken)
