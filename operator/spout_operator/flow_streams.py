"""Data flow, live: the spout's and the processor's output repos followed with pfs
SubscribeCommit streams (FINISHED commits), as spec_streams.py follows spec repos.

Two streams per SpoutPipeline, on the event loop (grpc.aio, no thread each), on the one
channel per pachd the spec streams use too (spec_streams.AioChannels). Nothing is polled: a
pass reads the flow from memory (`view`), so the data flow costs no listing and no call per
sweep. Each commit moves the per-resource gauges at once; the status shows it at a resolution
(dataflow.py).

A stream opens with the repo's whole history, then sends each commit as it finishes. pachd
tells no end of the history: a side counts as known HISTORY_S after its stream opened
(before that, the previous verdict in the status stands).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from python_pachyderm.proto.v2.pfs import pfs_pb2

from spout_operator import metrics
from spout_operator.dataflow import Expectations, Flow, FlowView
from spout_operator.names import PipelineKey
from spout_operator.pachd_api import Endpoint
from spout_operator.reopen import keep_open
from spout_operator.spec_streams import AioChannels, subscribe_commits

HISTORY_S = 1.0  # after a stream opens, its history has been sent


@dataclass(frozen=True)
class Commit:
    id: str
    started: float  # epoch seconds
    finished: float
    error: str = ""  # pachd finished it with an error (a failed or killed job): processed nothing


# The finished commits of one output repo's master branch, as pachd sends them.
CommitStream = Callable[[Endpoint, PipelineKey], AsyncIterator[Commit]]


@dataclass(frozen=True)
class _Followed:
    endpoint: Endpoint
    spout: PipelineKey
    processor: PipelineKey


class FlowWatch:
    """Per resource (by uid): a Flow fed by its two streams. Used from the event loop; `view`
    from any thread."""

    def __init__(
        self,
        stream: CommitStream | None = None,
        clock: Callable[[], float] = time.time,
        channels: AioChannels | None = None,
    ) -> None:
        self._stream = stream or self._subscribe
        self._clock = clock
        self._own_channels = channels is None
        self._channels = channels or AioChannels()  # one per pachd, shared with the spec streams
        self._followed: dict[str, tuple[_Followed, Flow, list[asyncio.Task[None]]]] = {}
        self._labels: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name) of its gauges

    def view(self, uid: str) -> FlowView | None:
        found = self._followed.get(uid)  # one dict read: safe from a pass's thread
        return None if found is None else found[1].view()

    def follow(
        self,
        uid: str,
        labels: tuple[str, str],
        endpoint: Endpoint | None,
        pair: tuple[PipelineKey, PipelineKey] | None,
        expected: Expectations,
    ) -> None:
        """What a pass saw: the pair on that pachd (None: nothing to follow)."""
        if endpoint is None or pair is None:
            self.forget(uid)
            return
        wanted = _Followed(endpoint, *pair)
        found = self._followed.get(uid)
        if found is None or found[0] != wanted:
            self.forget(uid)
            flow = Flow(self._clock())
            loop = asyncio.get_running_loop()
            tasks = [
                loop.create_task(self._follow(uid, endpoint, wanted.spout, flow, "spout")),
                loop.create_task(self._follow(uid, endpoint, wanted.processor, flow, "processor")),
            ]
            self._followed[uid] = (wanted, flow, tasks)
            self._channels.used("flow", {followed.endpoint for followed, _, _ in self._followed.values()})
        self._labels[uid] = labels
        metrics.flow_expectations(labels, expected.commit_within_s, expected.max_lag)

    def forget(self, uid: str) -> None:
        found = self._followed.pop(uid, None)
        labels = self._labels.pop(uid, None)
        if labels is not None:
            metrics.forget_flow(labels)
        if found is None:
            return
        for task in found[2]:
            task.cancel()
        self._channels.used("flow", {followed.endpoint for followed, _, _ in self._followed.values()})

    def __len__(self) -> int:
        return len(self._followed)

    async def close(self) -> None:
        for uid in list(self._followed):
            self.forget(uid)
        if self._own_channels:
            await self._channels.close()

    def _known(self, uid: str, flow: Flow, side: str) -> None:
        flow.heard(side)
        self._publish(uid, flow)

    def _publish(self, uid: str, flow: Flow) -> None:
        labels = self._labels.get(uid)
        if labels is not None:
            metrics.flow(labels, flow.view())

    async def _follow(self, uid: str, endpoint: Endpoint, key: PipelineKey, flow: Flow, side: str) -> None:
        def receive(commit: Commit) -> None:
            if side == "spout":
                flow.spout_commit(commit.id, commit.started, commit.finished)
            elif commit.error:
                flow.processor_failure(commit.id, commit.finished, commit.error)
            else:
                flow.processor_commit(commit.id, commit.started, commit.finished)
            self._publish(uid, flow)

        opening = functools.partial(self._opened, uid, endpoint, key, flow, side)
        await keep_open(opening, receive, f"Commit stream of {key[0]}/{key[1]} on {endpoint.address}")

    async def _opened(
        self, uid: str, endpoint: Endpoint, key: PipelineKey, flow: Flow, side: str
    ) -> AsyncGenerator[Commit, None]:
        """One opening of the stream: its side is known once the history has had time to come."""
        known = asyncio.get_running_loop().call_later(HISTORY_S, self._known, uid, flow, side)
        try:
            async for commit in self._stream(endpoint, key):
                yield commit
        finally:
            known.cancel()

    async def _subscribe(self, endpoint: Endpoint, key: PipelineKey) -> AsyncIterator[Commit]:
        finished = pfs_pb2.CommitState.FINISHED
        infos = subscribe_commits(self._channels.get(endpoint), endpoint, key, "user", state=finished)
        async with contextlib.aclosing(infos):
            async for info in infos:
                yield Commit(
                    str(info.commit.id),
                    _seconds(info.started),
                    _seconds(info.finished),
                    str(info.error),
                )


def _seconds(timestamp: Any) -> float:
    return float(timestamp.seconds) + float(timestamp.nanos) / 1e9
