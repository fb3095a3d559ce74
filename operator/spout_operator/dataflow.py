"""Data flow of one SpoutPipeline (pure): when the spout last committed, how many of its
commits the processor has not finished (lag), when the processor last finished one; judged
against the resource's optional expectations.

Fed by pachd's commit streams (flow_streams.py): the spout's output repo and the
processor's output repo. In pachd 2.x a commit and the commits made from it downstream share
one id (a commit set), created together when the upstream commit starts; a pipeline created
or updated later starts from an alias of its input's head instead, in a commit set of its
own. So a spout commit counts as done when the processor has finished the commit of its id,
or any commit that started no earlier (one that began after it covers it).

What is judged (only with `spec.expectations` set; without them nothing is judged and no
condition is written):
- `commitWithinSeconds`: the spout's last commit (or, before any, the start of following it)
  is no older than this;
- `maxLag`: the processor has at most this many spout commits to finish.
Beyond either, `DataFlowing=False` (reason SpoutQuiet or ProcessorBehind): a warning-level
condition. Ready stays what pachd and the workers say, so kstatus and Argo CD do not read a
quiet spout as a failure; an Event says so once, a metric carries it, an alert fires on it.
With spec.autoRestart, a quiet spout also counts as failing for its automatic restarts
(spout_quiet, restarts.py).

The status shows the flow at a resolution (`status.dataFlow`): rewritten when DataFlowing
changes, or when a timestamp in it moved by at least `resolution_s`; a moving timestamp never
costs a status write per message. The processor's newest failed commit (pachd finishes a failed
or killed job's output commit with the job's reason as its error) is shown as `lastFailure`:
the first one at the next pass, later ones at the resolution like the other times.
"""

from __future__ import annotations

import datetime
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from spout_operator.conditions import Condition, render_conditions
from spout_operator.events import Event

CONDITION = "DataFlowing"
PENDING_MAX = 10_000  # spout commits remembered as unfinished; beyond, only counted
PROCESSED_IDS_MAX = 1_000  # recent processor commit ids, for a spout commit told after its processing
REASON_MAX = 512  # characters of pachd's reason kept in status (a datum's error can be long)


@dataclass(frozen=True)
class Expectations:
    commit_within_s: float | None = None
    max_lag: int | None = None

    @property
    def set(self) -> bool:
        return self.commit_within_s is not None or self.max_lag is not None


def expectations(spec: Mapping[str, Any]) -> Expectations:
    """`spec.expectations` (the CRD validates types and bounds; anything else is not set)."""
    raw = spec.get("expectations") or {}
    within, lag = raw.get("commitWithinSeconds"), raw.get("maxLag")
    return Expectations(
        float(within) if isinstance(within, int | float) and within > 0 else None,
        int(lag) if isinstance(lag, int) and lag >= 0 else None,
    )


@dataclass(frozen=True)
class Failure:
    """A processor commit pachd finished with an error: its job failed or was killed."""

    commit: str
    finished: float  # epoch seconds
    reason: str  # the commit's error, the job's reason (2.6 says " jobtimed out" for a jobTimeout)


@dataclass(frozen=True)
class FlowView:
    """One resource's flow as its streams have told it (epoch seconds)."""

    since: float  # when following started
    caught_up: bool  # both streams have answered at least once: the figures are real
    last_commit: float | None = None  # the spout's newest finished commit
    lag: int = 0  # spout commits the processor has not finished
    last_processed: float | None = None  # when the processor last finished a commit
    last_failure: Failure | None = None  # the processor's newest commit finished with an error


class FlowSource(Protocol):
    def view(self, uid: str) -> FlowView | None: ...


class Flow:
    """The state of one pair, fed commit by commit from two streams in any interleaving
    (each stream replays its repo's history first). Thread-safe: the streams feed it on the
    event loop, passes read it from their threads."""

    def __init__(self, since: float) -> None:
        self.since = since
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, float] = OrderedDict()  # spout commit id -> started
        self._overflow = 0  # unfinished spout commits beyond PENDING_MAX (oldest, forgotten)
        self._covered_to = -float("inf")  # the newest start of a finished processor commit
        self._processed_ids: deque[str] = deque(maxlen=PROCESSED_IDS_MAX)
        self._last_commit: float | None = None
        self._last_processed: float | None = None
        self._last_failure: Failure | None = None
        self._heard = {"spout": False, "processor": False}

    def heard(self, stream: str) -> None:
        """A stream answered (opened, even on an empty repo): its side is known."""
        with self._lock:
            self._heard[stream] = True

    def spout_commit(self, commit: str, started: float, finished: float) -> None:
        with self._lock:
            self._last_commit = max(finished, self._last_commit or finished)
            if commit in self._pending or started <= self._covered_to or commit in self._processed_ids:
                return
            self._pending[commit] = started
            if len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
                self._overflow += 1

    def processor_commit(self, commit: str, started: float, finished: float) -> None:
        with self._lock:
            self._last_processed = max(finished, self._last_processed or finished)
            self._processed_ids.append(commit)
            self._pending.pop(commit, None)
            if started > self._covered_to:
                self._covered_to = started
                covered = [c for c, s in self._pending.items() if s <= started]
                for c in covered:
                    del self._pending[c]
                if self._overflow and not self._pending:
                    self._overflow = 0  # the forgotten ones were older than these

    def processor_failure(self, commit: str, finished: float, reason: str) -> None:
        """A processor commit finished with an error: it processed nothing (its spout commits
        stay in the lag), and it is the newest failure unless one finished later."""
        with self._lock:
            if self._last_failure is None or finished >= self._last_failure.finished:
                self._last_failure = Failure(commit, finished, reason.strip()[:REASON_MAX])

    def view(self) -> FlowView:
        with self._lock:
            return FlowView(
                self.since,
                all(self._heard.values()),
                self._last_commit,
                len(self._pending) + self._overflow,
                self._last_processed,
                self._last_failure,
            )


def judge(view: FlowView | None, expected: Expectations, now: float) -> Condition | None:
    """DataFlowing, or None when nothing is expected (or the streams have not answered yet:
    the previous verdict stands)."""
    if not expected.set or view is None or not view.caught_up:
        return None
    if expected.commit_within_s is not None:
        last = view.last_commit if view.last_commit is not None else view.since
        age = now - last
        if age > expected.commit_within_s:
            what = "no commit seen" if view.last_commit is None else f"last commit {age:.0f}s ago"
            return Condition(
                CONDITION,
                False,
                "SpoutQuiet",
                f"the spout has not committed within {expected.commit_within_s:g}s ({what})",
            )
    if expected.max_lag is not None and view.lag > expected.max_lag:
        return Condition(
            CONDITION,
            False,
            "ProcessorBehind",
            f"the processor has {view.lag} spout commits to finish (expected at most {expected.max_lag})",
        )
    return Condition(CONDITION, True, "DataFlowing", "the spout commits and the processor keeps up")


def spout_quiet(
    view: FlowView | None, expected: Expectations, previous: Mapping[str, Any], now: float
) -> bool:
    """Whether the spout has not committed within `commitWithinSeconds` (SpoutQuiet): the
    verdict now, or while the streams have not answered, the one in the previous status."""
    if expected.commit_within_s is None:
        return False
    verdict = judge(view, expected, now)
    if verdict is not None:
        return verdict.reason == "SpoutQuiet"
    old = _condition(previous)
    return old.get("status") == "False" and old.get("reason") == "SpoutQuiet"


def _condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """DataFlowing as a status holds it ({} if not there)."""
    found: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == CONDITION), {}
    )
    return found


def stamp(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def block(view: FlowView) -> dict[str, Any]:
    shown: dict[str, Any] = {"lag": view.lag}
    if view.last_commit is not None:
        shown["lastCommitTime"] = stamp(view.last_commit)
    if view.last_processed is not None:
        shown["lastProcessedTime"] = stamp(view.last_processed)
    if view.last_failure is not None:
        failure = view.last_failure
        shown["lastFailure"] = {
            "time": stamp(failure.finished),
            "commit": failure.commit,
            "reason": failure.reason,
        }
    return shown


def _times(shown: Mapping[str, Any] | None) -> dict[str, float | None]:
    shown = shown or {}
    failure = shown.get("lastFailure")
    return {
        "lastCommitTime": _epoch(shown.get("lastCommitTime")),
        "lastProcessedTime": _epoch(shown.get("lastProcessedTime")),
        "lastFailure": _epoch(failure.get("time")) if isinstance(failure, Mapping) else None,
    }


def moved(previous: Mapping[str, Any] | None, new: Mapping[str, Any], resolution_s: float) -> bool:
    """Whether the shown block is due for a rewrite: a timestamp appeared or moved by at
    least `resolution_s` (the lag goes along with it; alone it never triggers a write)."""
    if previous is None:
        return True
    old_times = _times(previous)
    for key, after in _times(new).items():
        before = old_times[key]
        if after is None:
            continue
        if before is None or abs(after - before) >= resolution_s:
            return True
    return False


def with_flow(
    status: dict[str, Any],
    previous: Mapping[str, Any],
    view: FlowView | None,
    expected: Expectations,
    now: float,
    resolution_s: float,
    generation: int,
) -> dict[str, Any]:
    """The pass's status with `dataFlow` and DataFlowing added: the previous ones carried while
    the streams have not answered, replaced at the resolution or when the verdict changes."""
    out = dict(status)
    old_block = previous.get("dataFlow")
    old_condition = _condition(previous) or None
    verdict = judge(view, expected, now)
    if view is None or not view.caught_up:
        if old_block is not None:
            out["dataFlow"] = dict(old_block)
        if old_condition is not None and expected.set:
            out["conditions"] = [*status.get("conditions", []), dict(old_condition)]
        return out
    new_block = block(view)
    changed = verdict is not None and (
        old_condition is None
        or old_condition.get("status") != ("True" if verdict.status else "False")
        or old_condition.get("reason") != verdict.reason
    )
    out["dataFlow"] = (
        new_block if changed or moved(old_block, new_block, resolution_s) else dict(old_block or new_block)
    )
    if verdict is not None:
        if not changed and old_condition is not None:
            # The same verdict: its message (an age) is not rewritten at each pass.
            rendered = dict(old_condition)
            rendered["observedGeneration"] = generation
        else:
            now_text = stamp(now)
            assert now_text is not None
            rendered = render_conditions(
                [verdict], [old_condition] if old_condition else [], now_text, generation
            )[0]
        out["conditions"] = [*status.get("conditions", []), rendered]
    return out


def events(previous: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """One Warning when DataFlowing turns False (or its reason changes), one Normal when it
    is True again."""
    before, after = _condition(previous), _condition(new)
    if not after or (before.get("status"), before.get("reason")) == (
        after.get("status"),
        after.get("reason"),
    ):
        return []
    if after.get("status") == "False":
        return [Event("Warning", str(after.get("reason")), str(after.get("message")))]
    if after.get("status") == "True" and before.get("status") == "False":
        return [Event("Normal", "DataFlowing", str(after.get("message")))]
    return []
