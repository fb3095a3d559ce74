"""The data flow's commit streams against the real pachd: finished commits of two output
repos, their times, and the lag between them (repos made by hand stand for a pair)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from devstack.stack import State
from spout_operator.dataflow import Expectations, FlowView
from spout_operator.flow_streams import FlowWatch
from spout_operator.pachd_api import Endpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def repos(pachd_client: Any) -> Iterator[tuple[str, str]]:
    base = f"flow-{uuid.uuid4().hex[:6]}"
    spout, processor = f"{base}-s", f"{base}-p"
    for repo in (spout, processor):
        pachd_client.create_repo(repo)
    yield spout, processor
    for repo in (processor, spout):
        pachd_client.delete_repo(repo, force=True)


def commit(client: Any, repo: str, path: str) -> None:
    with client.commit(repo, "master") as made:
        client.put_file_bytes(made, path, b"x")


async def until(watch: FlowWatch, uid: str, check: Any, timeout_s: float = 30) -> FlowView:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = watch.view(uid)
        if view is not None and view.caught_up and check(view):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {watch.view(uid)}")


def test_the_streams_see_finished_commits_and_the_lag_between_two_repos(
    stack: State, pachd_client: Any, repos: tuple[str, str]
) -> None:
    spout, processor = repos
    endpoint = Endpoint(stack.pachds[0].address)
    commit(pachd_client, spout, "/before")  # history: replayed when the stream opens

    async def scenario() -> None:
        watch = FlowWatch()
        pair = (("default", spout), ("default", processor))
        watch.follow("u", ("ns", "flow"), endpoint, pair, Expectations())
        try:
            first = await until(watch, "u", lambda v: v.lag == 1)
            assert first.last_commit is not None and abs(first.last_commit - time.time()) < 60
            assert first.last_processed is None
            for i in range(2):
                await asyncio.to_thread(commit, pachd_client, spout, f"/m{i}")
            await until(watch, "u", lambda v: v.lag == 3)
            # The "processor" finishes a commit started after all three: it covers them.
            await asyncio.to_thread(commit, pachd_client, processor, "/out")
            done = await until(watch, "u", lambda v: v.lag == 0)
            assert done.last_processed is not None and done.last_processed >= (done.last_commit or 0)
        finally:
            await watch.close()

    asyncio.run(scenario())
