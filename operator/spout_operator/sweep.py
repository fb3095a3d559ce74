"""When each resource is compared with pachd: at once when its pipelines are seen to change,
and at the periodic sweep as the safety net.

The watches of pachd's worker RCs and pods (watches.py), the spec-repo streams and the
listings of a pachd under vigil poke the resource that declares a changed pipeline, for a
pass of its own. The sweep (all resources on one grid, one listing per pachd) still catches
what no event shows: a pachd outside the cluster, a watch that was down. One task (Sweeper)
runs both for every resource, from a compact index of them: nothing per resource waits
between passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from spout_operator.names import PipelineKey, Trigger
from spout_operator.resource import Resource

T = TypeVar("T")

log = logging.getLogger(__name__)


# After drift on a pachd, list it this often for this long: more may be on its way (a script,
# someone at pachctl) and its own events lag behind while pachd's Kubernetes client is busy.
VIGIL_POLL_S = 0.25
VIGIL_S = 10.0
SWEEP_WAKE_SLACK_S = 0.05  # a listing started just before the sweep instant still counts
EVENT_SETTLE_S = 0.1  # an update shows as a new RC and an old one deleted: one pass for both


def until_next_sweep(now: float, interval_s: float) -> float:
    """Seconds from `now` to the next multiple of the interval: the shared sweep grid."""
    return interval_s - now % interval_s


class Wakeups:
    """Which resource declares which pipelines, which resources were poked since the loop last
    looked, and how fresh a listing of pachd each one's pass must judge by (one started after
    the change was seen).

    Used from the event loop only (the watch threads call `poke` through it)."""

    def __init__(self) -> None:
        self._by_key: dict[PipelineKey, set[str]] = {}
        self._keys: dict[str, set[PipelineKey]] = {}
        self._since: dict[str, float] = {}  # uid -> newest change seen (monotonic)
        self._poked: set[str] = set()  # since the loop last took them
        self._any = asyncio.Event()  # one for all: no per-resource waiter

    def register(self, uid: str, keys: set[PipelineKey]) -> None:
        """The pipelines the resource declares now; a poke already seen for it stands."""
        self._drop_keys(uid)
        self._keys[uid] = set(keys)
        for key in keys:
            self._by_key.setdefault(key, set()).add(uid)

    def unregister(self, uid: str) -> None:
        self._drop_keys(uid)
        self._since.pop(uid, None)
        self._poked.discard(uid)

    def _drop_keys(self, uid: str) -> None:
        for key in self._keys.pop(uid, set()):
            owners = self._by_key.get(key, set())
            owners.discard(uid)
            if not owners:
                self._by_key.pop(key, None)

    def poke(self, key: PipelineKey, seen_at: float) -> None:
        """Wake the resources declaring `key`: a change seen at `seen_at` (time.monotonic())."""
        for uid in self._by_key.get(key, ()):
            self.poke_resource(uid, seen_at)

    def poke_resource(self, uid: str, seen_at: float) -> None:
        """Wake one resource: its pass judges by a listing started after `seen_at`."""
        self._since[uid] = max(seen_at, self._since.get(uid, seen_at))
        self._poked.add(uid)
        self._any.set()

    async def poked(self, timeout_s: float) -> set[str]:
        """The resources poked since the last call, waiting up to `timeout_s` for one."""
        if not self._poked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._any.wait(), timeout_s)
        self._any.clear()
        poked, self._poked = self._poked, set()
        return poked

    def take_since(self, uid: str) -> float:
        """The newest change seen for the resource since the last call (0.0: none)."""
        return self._since.pop(uid, 0.0)

    def __len__(self) -> int:
        return len(self._keys)


class Vigil(Generic[T]):
    """The pachds to keep listing for a while after drift was repaired, and until when. A
    listing that shows a pipeline changed wakes its resource (Gateway.snapshot), so a burst
    of changes is repaired at the pace of these listings, not of pachd's worker events.
    Nothing is listed between sweeps until drift is seen.

    Every answering pachd is put under vigil, not only the one that drifted: pachd
    2.6 tells of a deletion or a stop only through its worker RC, seconds late while its
    throttled Kubernetes client is busy (1-3 s in a burst), and what changes pipelines behind
    the operator's back (a script, a cleanup, someone at pachctl going through contexts) seldom
    stops at one pachd. A burst costs each pachd without drift of its own VIGIL_S / VIGIL_POLL_S
    listings (40); a pachd with drift is listed until 10 s after its last repair."""

    def __init__(self, duration_s: float = VIGIL_S) -> None:
        self._duration_s = duration_s
        self._until: dict[T, float] = {}

    def drift_seen(self, where: T, now: float, answering: Iterable[T] = ()) -> None:
        """Drift repaired at `where`: list it for a while and, where this begins drift there
        (it was not under vigil), every answering pachd too. A pipeline that flaps on one pachd
        (something fighting the operator over it) keeps only that pachd listed."""
        begins = self._until.get(where, -math.inf) <= now
        self._until[where] = now + self._duration_s
        if begins:
            for place in answering:
                self._until[place] = max(self._until.get(place, now), now + self._duration_s)

    def due(self, now: float) -> list[T]:
        """Where to list now; forgets the pachds whose vigil has ended."""
        self._until = {where: until for where, until in self._until.items() if until > now}
        return list(self._until)


async def keep_vigil(vigil: Vigil[T], listing: Callable[[T], Awaitable[object]]) -> None:
    """List each pachd under vigil every VIGIL_POLL_S (`listing`: one listing of it, whose
    changed pipelines wake their resources), until cancelled. Each pachd at its own pace: a
    slow one is listed again once its listing is back, and never holds up the others."""
    listing_now: dict[T, asyncio.Task[object]] = {}
    try:
        while True:
            await asyncio.sleep(VIGIL_POLL_S)
            listing_now = {where: task for where, task in listing_now.items() if not task.done()}
            for where in vigil.due(time.monotonic()):
                if where not in listing_now:
                    listing_now[where] = asyncio.ensure_future(_quietly(listing(where)))
    finally:
        for task in listing_now.values():
            task.cancel()


async def _quietly(listing: Awaitable[object]) -> object:
    """A failed listing is the passes' to report (the next one tries again)."""
    with contextlib.suppress(Exception):
        return await listing
    return None


PassFn = Callable[[Resource, Trigger, float], Awaitable[object]]  # resource, trigger, listed_since


class Sweeper:
    """Every resource's drift passes, driven from one task (no task, timer or event per
    resource while nothing runs): a pass of all of them at each sweep instant, and of one of
    them when a poke says its pipelines changed.

    Per resource, one pass at a time: a sweep finding one still running skips it (as a
    resource's own loop would sleep through that instant), and pokes during its passes run
    one more "event" pass after them. Different resources' passes run concurrently, so one
    slow pachd never holds up the others (the thread pool behind `run_pass` bounds them).
    Used from the event loop only."""

    def __init__(
        self,
        run_pass: PassFn,
        pipelines_of: Callable[[Resource], set[PipelineKey]],
        interval_s: float,
        settle_s: float = EVENT_SETTLE_S,
    ) -> None:
        self.wakeups = Wakeups()
        self._run_pass, self._pipelines_of = run_pass, pipelines_of
        self._interval_s, self._settle_s = interval_s, settle_s
        self._resources: dict[str, Resource] = {}  # uid -> as its newest event showed it
        self._passes: dict[str, asyncio.Task[None]] = {}  # uid -> its passes, while any is due
        self._again: set[str] = set()  # poked during its passes: one more after them
        self._task: asyncio.Task[None] | None = None

    def track(self, resource: Resource) -> None:
        """Index a live resource as its newest event shows it; its passes judge by that."""
        before = self._resources.get(resource.uid)
        self._resources[resource.uid] = resource
        if before is None or (before.name, before.spec) != (resource.name, resource.spec):
            self.wakeups.register(resource.uid, self._pipelines_of(resource))
        if before is not None and before.handles != resource.handles:
            # Paused, resumed, a reconcile or restart requested: a pass now, with a fresh look.
            self.wakeups.poke_resource(resource.uid, time.monotonic())

    def latest(self, uid: str) -> Resource | None:
        """The resource as its newest event showed it (None once deleted)."""
        return self._resources.get(uid)

    def forget(self, uid: str) -> None:
        """Deleted or being deleted: no more passes (deletion holds its lock meanwhile). A
        pass in its thread ends there; one still queued in the pool never runs."""
        self._resources.pop(uid, None)
        self.wakeups.unregister(uid)
        self._again.discard(uid)
        task = self._passes.pop(uid, None)
        if task is not None:
            task.cancel()

    def sweep(self, listed_since: float) -> None:
        """A drift pass of every resource, judged by a listing started after `listed_since`."""
        for uid in self._resources:
            if uid not in self._passes:
                self._start(uid, "drift", listed_since)

    def run_poked(self, uids: Iterable[str]) -> None:
        """An event pass of each resource, or one more after the passes it is in."""
        for uid in uids:
            if uid in self._passes:
                self._again.add(uid)
            elif uid in self._resources:
                self._start(uid, "event", 0.0)

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self, context: contextvars.Context | None = None) -> None:
        """Run the sweep (and every pass it starts) in `context`: a copy of the current one
        unless given."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drift-sweep", context=context)

    def stop(self) -> None:
        """Nothing waits for a pass (500 of them may be queued behind a slow pachd): a pass
        in its thread finishes there under the resource's lock, unheard."""
        for task in [*([self._task] if self._task else []), *self._passes.values()]:
            task.cancel()
        self._passes.clear()

    def __len__(self) -> int:
        return len(self._resources)

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            sweep_at = now + until_next_sweep(now, self._interval_s)
            while (left := sweep_at - time.monotonic()) > 0:
                self.run_poked(await self.wakeups.poked(left))
            # Judge by a listing taken at this sweep, never one left over from a late pass of
            # the previous sweep (that would hide a change made in between for a whole interval).
            self.sweep(sweep_at - SWEEP_WAKE_SLACK_S)

    async def _passes_of(self, uid: str, trigger: Trigger, listed_since: float) -> None:
        try:
            while True:
                if trigger == "event":
                    # After an event, judge by a listing started once the change was seen; pokes
                    # until then (an update's new RC and its old one deleted) share this pass.
                    await asyncio.sleep(self._settle_s)
                    self._again.discard(uid)
                    listed_since = self.wakeups.take_since(uid) or time.monotonic()
                resource = self._resources.get(uid)
                if resource is None:
                    return
                try:
                    await self._run_pass(resource, trigger, listed_since)
                except Exception:  # a bug in one pass: the next sweep tries again
                    log.exception(f"{trigger} pass of {resource.namespace}/{resource.name} failed")
                if uid not in self._again:
                    return
                trigger = "event"
        finally:
            if self._passes.get(uid) is asyncio.current_task():
                del self._passes[uid]

    def _start(self, uid: str, trigger: Trigger, listed_since: float) -> None:
        self._passes[uid] = asyncio.get_running_loop().create_task(
            self._passes_of(uid, trigger, listed_since)
        )
