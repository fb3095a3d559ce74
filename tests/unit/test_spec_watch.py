"""Updates seen on pachd's spec repos: which commits are news, and which streams run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from python_pachyderm.proto.v2.pfs import pfs_pb2
from spout_operator.gateway import Gateway
from spout_operator.names import PipelineKey
from spout_operator.pachd_api import Endpoint, PachdUnavailable
from spout_operator.spec_streams import SpecFollower, SpecWatch, subscribe_commits

KEY: PipelineKey = ("default", "proc")
OTHER: PipelineKey = ("default", "spout")
PACHD = Endpoint("grpc://pachd-a:30650")
ELSEWHERE = Endpoint("grpc://pachd-b:30650")


def test_the_history_a_stream_opens_with_is_no_news() -> None:
    follower = SpecFollower("c3")
    assert [follower.news(c) for c in ("c1", "c2", "c3")] == [False, False, False]
    assert follower.news("c4")  # after the head the pass saw: an update


def test_a_head_that_moved_before_the_stream_opened_makes_the_rest_news() -> None:
    follower = SpecFollower("c2")  # the pass listed c2; c3 was made before the stream opened
    assert not follower.news("c1") and not follower.news("c2")
    assert follower.news("c3")


def test_a_newer_head_already_in_the_history_ends_it() -> None:
    follower = SpecFollower("gone")  # e.g. a head from a listing of a pipeline since recreated
    assert not follower.news("n1") and not follower.news("n2")
    follower.expect("n2")  # the next pass saw n2: whatever follows is news
    assert follower.news("n3")


def test_a_reopened_stream_replays_its_history_quietly_but_not_what_came_meanwhile() -> None:
    follower = SpecFollower("c2")
    for commit in ("c1", "c2"):
        follower.news(commit)
    follower.reopened()
    assert [follower.news(c) for c in ("c1", "c2")] == [False, False]
    assert follower.news("c3")  # made while the stream was down


class FakePachd:
    """Streams that yield what a test puts in their queue, and record who is subscribed."""

    def __init__(self) -> None:
        self.queues: dict[tuple[Endpoint, PipelineKey], asyncio.Queue[str | None]] = {}
        self.opened: list[tuple[Endpoint, PipelineKey]] = []

    async def stream(self, endpoint: Endpoint, key: PipelineKey) -> AsyncIterator[str]:
        queue = self.queues.setdefault((endpoint, key), asyncio.Queue())
        self.opened.append((endpoint, key))
        while (commit := await queue.get()) is not None:
            yield commit

    async def send(self, endpoint: Endpoint, key: PipelineKey, *commits: str) -> None:
        for commit in commits:
            await self.queues[(endpoint, key)].put(commit)
        for _ in range(20):  # let the watch's task consume them
            await asyncio.sleep(0)


async def settled() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_an_update_after_the_history_wakes_its_pipeline_once() -> None:
    async def scenario() -> list[PipelineKey]:
        pachd, changed = FakePachd(), list[PipelineKey]()
        watch = SpecWatch(changed.append, pachd.stream)
        watch.follow("uid-1", PACHD, {KEY: "c2", OTHER: "s1"})
        await settled()
        await pachd.send(PACHD, KEY, "c1", "c2")
        await pachd.send(PACHD, OTHER, "s1")
        assert changed == []
        await pachd.send(PACHD, KEY, "c3")
        await watch.close()
        return changed

    assert asyncio.run(scenario()) == [KEY]


def test_resources_share_a_stream_and_the_last_to_go_ends_it() -> None:
    async def scenario() -> None:
        pachd = FakePachd()
        watch = SpecWatch(lambda key: None, pachd.stream)
        watch.follow("uid-1", PACHD, {KEY: "c1"})
        watch.follow("uid-2", PACHD, {KEY: "c1"})
        await settled()
        assert pachd.opened == [(PACHD, KEY)] and len(watch) == 1
        watch.forget("uid-1")
        assert len(watch) == 1
        watch.forget("uid-2")
        await settled()
        assert len(watch) == 0
        await watch.close()

    asyncio.run(scenario())


def test_a_pass_on_another_pachd_or_without_pipelines_moves_or_ends_the_streams() -> None:
    async def scenario() -> None:
        pachd = FakePachd()
        watch = SpecWatch(lambda key: None, pachd.stream)
        watch.follow("uid-1", PACHD, {KEY: "c1", OTHER: "s1"})
        watch.follow("uid-1", PACHD, {KEY: "c1"})  # the spout is gone from pachd
        assert len(watch) == 1
        watch.follow("uid-1", ELSEWHERE, {KEY: "x1"})
        await settled()
        assert len(watch) == 1 and (ELSEWHERE, KEY) in pachd.opened
        watch.follow("uid-1", None, {})  # pachd unreachable: nothing to follow there
        assert len(watch) == 0
        await watch.close()

    asyncio.run(scenario())


# The replay of a reopened stream: the same history, or a pipeline's made anew meanwhile
# (news only after the head the next pass sees).
@pytest.mark.parametrize("replay", [("c1",), ("n1", "n2")], ids=["same", "made-anew"])
def test_a_stream_that_ends_is_opened_again_and_its_replay_is_no_news(replay: tuple[str, ...]) -> None:
    async def scenario() -> list[PipelineKey]:
        pachd, changed = FakePachd(), list[PipelineKey]()
        watch = SpecWatch(changed.append, pachd.stream)
        watch.follow("uid-1", PACHD, {KEY: "c1"})
        await settled()
        await pachd.send(PACHD, KEY, "c1")
        await pachd.queues[(PACHD, KEY)].put(None)  # pachd ends the stream (its deadline)
        await settled()
        assert pachd.opened == [(PACHD, KEY), (PACHD, KEY)]
        await pachd.send(PACHD, KEY, *replay)
        assert changed == []
        watch.follow("uid-1", PACHD, {KEY: replay[-1]})
        await pachd.send(PACHD, KEY, "c2")
        await watch.close()
        return changed

    assert asyncio.run(scenario()) == [KEY]


def test_the_commit_of_the_operators_own_write_wakes_nobody() -> None:
    async def scenario() -> list[PipelineKey]:
        pachd, changed, ours = FakePachd(), list[PipelineKey](), {KEY}
        watch = SpecWatch(changed.append, pachd.stream, own=lambda endpoint, key: key in ours)
        watch.follow("uid-1", PACHD, {KEY: "c1"})
        await settled()
        await pachd.send(PACHD, KEY, "c1", "c2")  # c2: the operator's own repair
        assert changed == []
        ours.clear()
        await pachd.send(PACHD, KEY, "c3")  # someone else's, later
        await watch.close()
        return changed

    assert asyncio.run(scenario()) == [KEY]


def test_a_gateway_knows_its_own_writes_while_in_flight_and_just_after() -> None:
    gateway = Gateway(Endpoint("127.0.0.1:9"), timeout_s=0.1)  # nothing listens: writes fail fast
    seen_in_flight: list[bool] = []
    send = gateway._send

    def spying(method: str, request: object) -> object:
        seen_in_flight.append(gateway.wrote(KEY))
        return send(method, request)

    gateway._send = spying  # type: ignore[method-assign]
    try:
        assert not gateway.wrote(KEY)
        with pytest.raises(PachdUnavailable):
            gateway.start(KEY[1], KEY[0])
        assert seen_in_flight == [True]
        assert gateway.wrote(KEY) and not gateway.wrote(OTHER)
        assert not gateway.wrote(KEY, within_s=0.0)  # long enough ago
    finally:
        gateway.close()


class CountingChannel:
    """A grpc.aio channel that records which methods are made callable on it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel, self.methods = channel, list[str]()

    def __getattr__(self, name: str) -> Any:
        made = getattr(self._channel, name)

        def record(method: str, *args: Any, **kwargs: Any) -> Any:
            self.methods.append(method)
            return made(method, *args, **kwargs)

        return record if name.startswith("unary_") or name.startswith("stream_") else made


def test_a_commit_stream_asks_pachd_with_its_token_and_builds_only_the_one_method() -> None:
    # A stream per followed pipeline lives as long as its resource: a whole pfs stub for each
    # (a callable per method, ~45) kept megabytes alive at N=48.
    seen: list[tuple[Any, dict[str, str]]] = []

    async def subscribe(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        seen.append((request, dict(context.invocation_metadata() or ())))
        for commit in ("c1", "c2"):
            yield pfs_pb2.CommitInfo(commit=pfs_pb2.Commit(id=commit))

    async def scenario() -> tuple[list[str], list[str]]:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(
            subscribe,
            request_deserializer=pfs_pb2.SubscribeCommitRequest.FromString,
            response_serializer=pfs_pb2.CommitInfo.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("pfs_v2.API", {"SubscribeCommit": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
                channel = CountingChannel(plain)
                endpoint = Endpoint(f"grpc://127.0.0.1:{port}", auth_token="t0ken")
                infos = subscribe_commits(channel, endpoint, KEY, "spec")  # type: ignore[arg-type]
                commits = [str(info.commit.id) async for info in infos]
                return commits, channel.methods
        finally:
            await server.stop(None)

    commits, methods = asyncio.run(scenario())
    assert commits == ["c1", "c2"]
    assert methods == ["/pfs_v2.API/SubscribeCommit"]
    request, metadata = seen[0]
    assert (request.repo.project.name, request.repo.name, request.repo.type) == ("default", "proc", "spec")
    assert request.branch == "master"
    assert metadata["authn-token"] == "t0ken"
