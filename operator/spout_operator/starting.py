"""Waiting for new pipelines to turn RUNNING: a poll, cut short by pachd's worker Services.

pachd 2.6 starts a pipeline by creating its worker RC, then its Service, then writing RUNNING
(watches.ServiceWatch). So the Service's event means "RUNNING within milliseconds": the
resource waiting on that pipeline looks again at once (no settling delay, no poll), and, if
pachd had not written RUNNING yet, a few more times in quick succession before going back to
the poll. Used from the event loop only (the watch thread calls `seen` through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator

from spout_operator.names import PipelineKey

RETRY_S = 0.03  # after a Service event, look again this soon while pachd still says STARTING
RETRIES = 5  # ... this many times (0.15 s), then poll


class StartWait:
    """One resource's wait for its pipelines to turn RUNNING."""

    def __init__(self) -> None:
        self.keys: set[PipelineKey] = set()
        self._woken = asyncio.Event()
        self._seen_at = 0.0
        self._retries = 0

    def wake(self, seen_at: float) -> None:
        self._seen_at = max(self._seen_at, seen_at)
        self._woken.set()

    async def next(self, poll_s: float) -> float:
        """Wait for the next look: a worker Service event, a quick retry after one, or the
        poll. Returns how fresh the listing that look judges by must be (`listed_since`)."""
        quick = self._retries > 0
        if quick:
            self._retries -= 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), RETRY_S if quick else poll_s)
        if self._woken.is_set():
            self._woken.clear()
            self._retries = RETRIES
            return self._seen_at  # a listing started after the event
        # A retry needs a listing newer than the one that still said STARTING; a poll may
        # share a listing another resource's poll started within its interval.
        return time.monotonic() if quick else time.monotonic() - poll_s


class Starts:
    """The resources waiting for pipelines to start, by pipeline."""

    def __init__(self) -> None:
        self._waits: dict[PipelineKey, set[StartWait]] = {}

    @contextlib.contextmanager
    def waiting(self) -> Iterator[StartWait]:
        """A wait that `follow` points at pipelines, forgotten when the block ends."""
        wait = StartWait()
        try:
            yield wait
        finally:
            self._drop(wait)

    def follow(self, wait: StartWait, keys: Iterable[PipelineKey]) -> None:
        self._drop(wait)
        wait.keys = set(keys)
        for key in wait.keys:
            self._waits.setdefault(key, set()).add(wait)

    def seen(self, key: PipelineKey, seen_at: float) -> None:
        """The pipeline's worker Service came or went: wake whoever waits for it to start
        (nobody, for a Service of a pipeline already running: drift is the RC watch's)."""
        for wait in self._waits.get(key, ()):
            wait.wake(seen_at)

    def __contains__(self, key: PipelineKey) -> bool:
        return key in self._waits

    def _drop(self, wait: StartWait) -> None:
        for key in wait.keys:
            waits = self._waits.get(key, set())
            waits.discard(wait)
            if not waits:
                self._waits.pop(key, None)
        wait.keys = set()
