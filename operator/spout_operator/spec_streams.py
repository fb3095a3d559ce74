"""Spec repos: a pipeline's update seen as it is made.

pachd writes a pipeline's new spec as a commit to its spec repo in the update's own
transaction, but creates the new worker RC only after its Secret and Service (1-2 s later,
through a throttled Kubernetes client). A pfs SubscribeCommit stream on the spec repo sees
the update within tens of milliseconds. It sends nothing for a stop or a deletion (the RC
watch and the listings see those). The streams run on the event loop (grpc.aio): no thread
each, one channel per pachd (AioChannels, shared with the data flow's streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from python_pachyderm.proto.v2.pfs import pfs_pb2

from spout_operator import metrics
from spout_operator.gateway import auth_metadata, credentials
from spout_operator.names import PipelineKey
from spout_operator.pachd_api import Endpoint
from spout_operator.reopen import keep_open

SPEC_STREAM_S = 600.0  # a stream is opened again after this, so a silently dead one ends
_KEEPALIVE = [("grpc.keepalive_time_ms", 30_000)]  # pachd 2.6 allows pings every 5 s

# Commit ids of one spec repo's stream, as pachd sends them.
SpecStream = Callable[[Endpoint, PipelineKey], AsyncIterator[str]]


class AioChannels:
    """One grpc.aio channel per pachd, shared by every commit stream to it (the spec streams
    here, the data flow's in flow_streams.py). Each user says which pachds it still streams
    from; a channel none of them uses is closed in the background. Event loop only."""

    def __init__(self) -> None:
        self._channels: dict[Endpoint, grpc.aio.Channel] = {}
        self._users: dict[str, set[Endpoint]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    def get(self, endpoint: Endpoint) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            secure = credentials(endpoint)
            channel = (
                grpc.aio.insecure_channel(endpoint.target, options=_KEEPALIVE)
                if secure is None
                else grpc.aio.secure_channel(endpoint.target, secure, options=_KEEPALIVE)
            )
            self._channels[endpoint] = channel
        return channel

    def used(self, user: str, endpoints: set[Endpoint]) -> None:
        """The pachds `user` streams from now; channels nobody streams from are closed."""
        self._users[user] = set(endpoints)
        wanted = set().union(*self._users.values())
        for endpoint in set(self._channels) - wanted:  # nothing is in flight on it any more
            closing = asyncio.get_running_loop().create_task(self._channels.pop(endpoint).close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def __len__(self) -> int:
        return len(self._channels)

    async def close(self) -> None:
        self._users.clear()
        for channel in list(self._channels.values()):
            await channel.close()
        self._channels.clear()


class SpecFollower:
    """Which commits of a spec repo's stream are news.

    pachd 2.6 opens a stream with every commit the repo ever had (oldest first), then sends
    each new one. The history ends at the head the operator last listed; what comes after it
    is a change. Pure: the stream feeds it ids, the pass tells it the head it saw."""

    def __init__(self, head: str) -> None:
        self.head = head
        self._caught_up = False
        self._history: set[str] = set()

    def expect(self, head: str) -> None:
        """The head a newer pass saw (after a write of its own, or a change it repaired)."""
        self.head = head
        if head in self._history:  # the stream has sent it already: all after it is news
            self._caught_up = True

    def reopened(self) -> None:
        """A new stream replays the history first."""
        self._caught_up = False

    def news(self, commit: str) -> bool:
        if self._caught_up:
            return commit not in self._history
        self._history.add(commit)
        self._caught_up = commit == self.head
        return False


class SpecWatch:
    """One SubscribeCommit stream per spec repo of the pipelines passes have seen on pachd,
    on one aio channel per pachd; a commit that is news wakes its resource through `changed`.

    A resource follows the pipelines its last pass saw, on the pachd it saw them on; a stream
    nobody follows is cancelled. Used from the event loop only."""

    def __init__(
        self,
        changed: Callable[[PipelineKey], None],
        stream: SpecStream | None = None,
        own: Callable[[Endpoint, PipelineKey], bool] = lambda endpoint, key: False,
        channels: AioChannels | None = None,
    ) -> None:
        self._changed = changed
        self._stream = stream or self._subscribe
        # The commit of a write of the operator's own (Gateways.wrote) wakes nobody: in a burst
        # of repairs, each would cost a pass and a listing of a pachd busy with the next write.
        self._own = own
        self._wanted: dict[str, tuple[Endpoint, dict[PipelineKey, str]]] = {}  # owner -> where, heads
        self._followers: dict[tuple[Endpoint, PipelineKey], tuple[SpecFollower, asyncio.Task[None]]] = {}
        self._own_channels = channels is None
        self._channels = channels or AioChannels()  # shared with the data flow's streams

    def follow(self, owner: str, endpoint: Endpoint | None, heads: Mapping[PipelineKey, str]) -> None:
        """What `owner`'s last pass saw: the pipelines' spec heads on that pachd (None: none)."""
        if endpoint is None or not heads:
            self.forget(owner)
            return
        self._wanted[owner] = (endpoint, dict(heads))
        for key, head in heads.items():
            found = self._followers.get((endpoint, key))
            if found is not None:
                found[0].expect(head)
                continue
            follower = SpecFollower(head)
            task = asyncio.get_running_loop().create_task(self._follow(endpoint, key, follower))
            self._followers[(endpoint, key)] = (follower, task)
        self._drop_unwanted()

    def forget(self, owner: str) -> None:
        if self._wanted.pop(owner, None) is not None:
            self._drop_unwanted()

    def __len__(self) -> int:
        return len(self._followers)

    async def close(self) -> None:
        self._wanted.clear()
        self._drop_unwanted()
        if self._own_channels:
            await self._channels.close()

    def _drop_unwanted(self) -> None:
        wanted = {(endpoint, key) for endpoint, heads in self._wanted.values() for key in heads}
        for place in set(self._followers) - wanted:
            self._followers.pop(place)[1].cancel()
        self._channels.used("spec", {endpoint for endpoint, _ in self._followers})

    async def _follow(self, endpoint: Endpoint, key: PipelineKey, follower: SpecFollower) -> None:
        def receive(commit: str) -> None:
            if follower.news(commit) and not self._own(endpoint, key):
                self._changed(key)

        opening = functools.partial(self._opened, endpoint, key, follower)
        await keep_open(opening, receive, f"Spec stream of {key[0]}/{key[1]} on {endpoint.address}")

    async def _opened(
        self, endpoint: Endpoint, key: PipelineKey, follower: SpecFollower
    ) -> AsyncGenerator[str, None]:
        """One opening of the stream; the next one replays the history first."""
        try:
            async for commit in self._stream(endpoint, key):
                yield commit
        finally:
            follower.reopened()

    async def _subscribe(self, endpoint: Endpoint, key: PipelineKey) -> AsyncIterator[str]:
        # python-pachyderm 7.5 names only "user" repos: the spec repo needs the stub itself.
        infos = subscribe_commits(self._channels.get(endpoint), endpoint, key, "spec")
        async with contextlib.aclosing(infos):
            async for info in infos:
                yield str(info.commit.id)


async def subscribe_commits(
    channel: grpc.aio.Channel, endpoint: Endpoint, key: PipelineKey, repo_type: str, **fields: Any
) -> AsyncGenerator[Any, None]:
    """pachd's SubscribeCommit to the master branch of `key`'s repo of `repo_type` (and the request's
    other `fields`), on `channel` with `endpoint`'s token, counted: each CommitInfo as it comes.
    Closing the generator cancels the call (the spec streams here, the data flow's in
    flow_streams.py)."""
    project, name = key
    repo = pfs_pb2.Repo(name=name, type=repo_type, project=pfs_pb2.Project(name=project))
    request = pfs_pb2.SubscribeCommitRequest(repo=repo, branch="master", **fields)
    metadata = auth_metadata(endpoint)
    metrics.PACHD_CALLS.labels("SubscribeCommit").inc()
    # The one method, not pfs_pb2_grpc.APIStub: a stub makes a callable for each of pfs's ~45
    # methods, and one per stream (two hundred at N=48) kept ~3 MB alive for nothing.
    subscribe = channel.unary_stream(
        "/pfs_v2.API/SubscribeCommit",
        request_serializer=pfs_pb2.SubscribeCommitRequest.SerializeToString,
        response_deserializer=pfs_pb2.CommitInfo.FromString,
    )
    call = subscribe(request, timeout=SPEC_STREAM_S, metadata=metadata)
    try:
        async for info in call:
            yield info
    finally:
        with contextlib.suppress(Exception):
            call.cancel()
