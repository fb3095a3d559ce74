"""Leader election on a coordination.k8s.io Lease, so two replicas never both write.

kopf has no Lease-based election of its own (its peering pauses peers through a
KopfPeering object, with a 60 s keepalive, and no per-object fencing). This follows
controller-runtime's defaults instead: a 15 s lease, renewed every 2 s, given up when
it could not be renewed for 10 s, and released when the operator stops, so a standby
takes over at once on a clean shutdown and within 15 s of a crash: it counts the lease
from its look before the one that showed the last renewal (client-go counts from the
look that showed it, up to one 2 s look later) and tries again right at expiry.

Only the leader runs kopf (`kopf.operator()` as a task with a stop flag). A leader that
cannot renew stops writing at once (`Elector.leading` turns False 10 s after the last
renewal, before any standby may take the Lease at 15 s), stops kopf, and campaigns
again. client-go warns that a Lease is no fence: every write stays safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import kubernetes

LEASE_S = 15.0
RENEW_DEADLINE_S = 10.0
RETRY_S = 2.0
REQUEST_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """The Lease's spec, as it matters here."""

    holder: str
    lease_s: float = LEASE_S
    acquired: datetime.datetime | None = None
    renewed: datetime.datetime | None = None
    transitions: int = 0


class LeaseStore(Protocol):
    """Blocking reads and writes of one Lease (optimistic: a write names the version it read)."""

    def read(self) -> tuple[Record | None, str]: ...

    def create(self, record: Record) -> bool: ...

    def replace(self, record: Record, version: str) -> bool: ...


def identity() -> str:
    """This replica's name in the Lease: its pod's, else host and a random tag."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class Elector:
    """One candidate. `attempt()` blocks (one read, maybe one write); `leading()` is cheap
    and thread-safe, and is what every write of the operator checks first."""

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        lease_s: float = LEASE_S,
        renew_deadline_s: float = RENEW_DEADLINE_S,
    ) -> None:
        self.store, self.name = store, name
        self._clock, self._wall = clock, wall
        self.lease_s, self.renew_deadline_s = lease_s, renew_deadline_s
        self._renewed_at: float | None = None  # our last successful write (monotonic)
        # Another's record (by the Lease's resourceVersion: every write changes it), and the
        # earliest its last write can have happened: the start of the look before the one
        # that first showed it, when that look was recent; else the start of this look.
        self._seen: tuple[Record | None, str, float] = (None, "", -float("inf"))
        self._looked: float | None = None  # when the last look at the Lease started
        self._lock = threading.Lock()

    def leading(self) -> bool:
        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self.renew_deadline_s

    def attempt(self) -> bool:
        """Acquire or renew once; whether we hold the Lease now."""
        try:
            return self._attempt()
        except Exception as err:  # API server away: keep what we had until the deadline
            log.warning(f"Lease {self.name!r} not renewed: {err}")
            return self.leading()

    def _attempt(self) -> bool:
        started = self._clock()
        record, version = self.store.read()
        ended = self._clock()
        looked, self._looked = self._looked, started
        now = self._wall()
        if record is None:
            return self._won(self.store.create(Record(self.name, self.lease_s, now, now)), started)
        if record.holder == self.name:  # ours: renew (the version guards against a taker)
            return self._won(self.store.replace(replace(record, renewed=now), version), started)
        # Someone else's: judged by our own clock, never theirs. It expires one lease after the
        # earliest moment it can have been written: the previous look's start, if that is less
        # than 4 s before this look ended (else this look's start). The holder stopped writing
        # 10 s after it began that write (its renew deadline), so at least 1 s before.
        if self._seen[1] != version:
            recent = looked is not None and ended - looked < self.lease_s - self.renew_deadline_s - 1
            self._seen = (record, version, looked if recent and looked is not None else started)
        if record.holder and self._clock() - self._seen[2] < record.lease_s:
            self._lost()
            return False
        taken = Record(self.name, self.lease_s, now, now, record.transitions + 1)
        return self._won(self.store.replace(taken, version), started)

    def until_next_try(self, retry_s: float) -> float:
        """How long a candidate waits before its next try: the retry period, or less when the
        holder's Lease expires sooner (a standby takes over at expiry, not at its next tick)."""
        record, _, since = self._seen
        if record is None or not record.holder:
            return retry_s
        return max(0.05, min(retry_s, since + record.lease_s - self._clock()))

    def _won(self, ok: bool, started: float) -> bool:
        if ok:
            with self._lock:
                self._renewed_at = started  # counted from before the request: never late
        return ok and self.leading()

    def _lost(self) -> None:
        with self._lock:
            self._renewed_at = None

    def release(self) -> None:
        """Give the Lease up (on shutdown), so a standby takes it at its next try."""
        if not self.leading():
            return
        self._lost()
        try:
            record, version = self.store.read()
            if record is not None and record.holder == self.name:
                now = self._wall()
                self.store.replace(Record("", 1, now, now, record.transitions), version)
        except Exception as err:
            log.warning(f"Lease release failed: {err}")


class KubeLeaseStore:
    """The Lease through the API server."""

    def __init__(self, api: Any, namespace: str, name: str) -> None:
        self.coordination: Any = kubernetes.client.CoordinationV1Api(api)  # dict bodies, not models
        self.namespace, self.name = namespace, name

    def read(self) -> tuple[Record | None, str]:
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None, ""
            raise
        spec = lease.spec
        record = Record(
            holder=spec.holder_identity or "",
            lease_s=float(spec.lease_duration_seconds or LEASE_S),
            acquired=spec.acquire_time,
            renewed=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
        )
        return record, str(lease.metadata.resource_version)

    def _body(self, record: Record, version: str | None) -> dict[str, Any]:
        def stamp(t: datetime.datetime | None) -> str | None:
            return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if version:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": record.holder,
                "leaseDurationSeconds": int(record.lease_s),
                "acquireTime": stamp(record.acquired),
                "renewTime": stamp(record.renewed),
                "leaseTransitions": record.transitions,
            },
        }

    def create(self, record: Record) -> bool:
        try:
            self.coordination.create_namespaced_lease(
                self.namespace, self._body(record, None), _request_timeout=REQUEST_TIMEOUT_S
            )
        except kubernetes.client.ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def replace(self, record: Record, version: str) -> bool:
        try:
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, self._body(record, version), _request_timeout=REQUEST_TIMEOUT_S
            )
        except kubernetes.client.ApiException as err:
            if err.status == 409:  # someone wrote it since we read it
                return False
            raise
        return True


async def elect(
    elector: Elector,
    run: Callable[[asyncio.Event], Awaitable[None]],
    terminating: asyncio.Event,
    standby: Callable[[], AbstractAsyncContextManager[None]],
    retry_s: float = RETRY_S,
) -> None:
    """Campaign (inside `standby()`, e.g. a health endpoint); while leading, run `run(stop)`
    (kopf) and renew; when the Lease is lost, set `stop`, wait for `run` to end and campaign
    again. Returns, releasing the Lease, when `terminating` is set or `run` ends by itself
    (kopf stopped by a signal)."""
    try:
        while True:
            async with standby():
                while not await attempt(elector):
                    await _wait(terminating, elector.until_next_try(retry_s))
                    if terminating.is_set():
                        return
            if not await _hold(elector, run, terminating, retry_s):
                return
    finally:
        await asyncio.to_thread(elector.release)


async def _hold(
    elector: Elector,
    run: Callable[[asyncio.Event], Awaitable[None]],
    terminating: asyncio.Event,
    retry_s: float,
) -> bool:
    """Run `run` while leading; whether it stopped because the Lease was lost."""
    log.info(f"Leading as {elector.name}: the operator starts")
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(stop))
    lost = False
    while not task.done() and not terminating.is_set():
        # Waits on the task alone: kopf waits 5 s on exit for tasks created while it ran.
        await asyncio.wait({task}, timeout=retry_s)
        if task.done() or terminating.is_set():
            break
        await attempt(elector)
        if not elector.leading():
            log.warning(
                f"Lease lost by {elector.name}: writes stopped, the operator stops and campaigns again"
            )
            lost = True
            break
    stop.set()
    await asyncio.gather(task, return_exceptions=True)
    return lost


async def attempt(elector: Elector) -> bool:
    """One attempt in a thread, never longer than a request's deadline."""
    try:
        # A plain future, not a task (asyncio.to_thread is a coroutine: wait_for makes it one):
        # kopf waits 5 s on exit for tasks created while it ran.
        future = asyncio.get_running_loop().run_in_executor(None, elector.attempt)
        return await asyncio.wait_for(future, REQUEST_TIMEOUT_S + 1)
    except TimeoutError:
        return elector.leading()


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
