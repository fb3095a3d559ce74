"""Unit tests of the push receiver: a fake pachd client records the calls; the HTTP handler runs
on a loopback port of the test's own."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from spout101.common import SettingsError
from spout101.consumer import Target
from spout101.receiver import DEFAULT_MAX_BYTES, Committer, ReceiverSettings, make_server
from test_consumer import FakeCommit

TARGET = Target("push", "master", "team-a")


@dataclass
class FakeClient:
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail_puts: bool = False
    in_commit: threading.Event = field(default_factory=threading.Event)
    release: threading.Event | None = None  # when set, a put waits for it
    _n: int = 0
    _open: int = 0
    max_open: int = 0

    def start_commit(self, repo_name: str, branch: str, *, project_name: str | None = None) -> FakeCommit:
        self._n += 1
        self._open += 1
        self.max_open = max(self.max_open, self._open)
        self.calls.append(("start", repo_name, branch, project_name))
        return FakeCommit(f"c{self._n}")

    def put_file_bytes(self, commit: FakeCommit, path: str, value: bytes) -> None:
        self.in_commit.set()
        if self.release is not None:
            assert self.release.wait(10)
        if self.fail_puts:
            raise ConnectionError("pachd went away")
        self.calls.append(("put", commit.id, path, value))

    def finish_commit(self, commit: FakeCommit) -> None:
        self._open -= 1
        self.calls.append(("finish", commit.id))

    def drop_commit(self, commit_id: str) -> None:
        self._open -= 1
        self.calls.append(("drop", commit_id))

    def inspect_commit(self, commit: Any, *state: Any) -> Iterator[Any]:
        return iter([])


def recorded_wait(client: Any, target: Target, commit_id: str) -> None:
    client.calls.append(("wait finished", commit_id))


@pytest.fixture
def served() -> Iterator[tuple[FakeClient, Committer, int]]:
    client = FakeClient()
    committer = Committer(client, TARGET, wait=recorded_wait)
    server = make_server(committer, 0, max_bytes=4096, host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield client, committer, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def post(port: int, body: bytes, path: str = "/") -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_message_is_one_finished_commit_answered_after_it(
    served: tuple[FakeClient, Committer, int],
) -> None:
    client, committer, port = served
    message = b"x" * 1024
    status, body = post(port, message)

    name = hashlib.sha256(message).hexdigest() + ".txt"
    assert status == 201
    assert body == {"commit": "c1", "file": name, "bytes": 1024}
    assert client.calls == [
        ("start", "push", "master", "team-a"),
        ("put", "c1", "/" + name, message),
        ("finish", "c1"),
        ("wait finished", "c1"),  # answered only once pachd has finished the commit
    ]
    assert committer.commits == 1


def test_each_message_gets_its_own_commit(served: tuple[FakeClient, Committer, int]) -> None:
    client, _, port = served
    for size in (1024, 2048, 1024):
        assert post(port, bytes([size % 251]) * size)[0] == 201
    assert [c[1] for c in client.calls if c[0] == "finish"] == ["c1", "c2", "c3"]


def test_a_failed_commit_is_dropped_and_not_acknowledged(served: tuple[FakeClient, Committer, int]) -> None:
    client, committer, port = served
    client.fail_puts = True
    status, body = post(port, b"lost?")

    assert status == 503
    assert "not committed: pachd went away" in body["error"]
    assert client.calls == [("start", "push", "master", "team-a"), ("drop", "c1")]
    assert committer.commits == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"", 400), (b"y" * 4097, 413)],
)
def test_empty_and_oversized_messages_are_refused_without_a_commit(
    served: tuple[FakeClient, Committer, int], body: bytes, status: int
) -> None:
    client, _, port = served
    assert post(port, body)[0] == status
    assert client.calls == []


def test_health_and_unknown_paths(served: tuple[FakeClient, Committer, int]) -> None:
    _, _, port = served
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"status": "ok", "target": "team-a/push@master"}
    connection.request("GET", "/")
    assert connection.getresponse().status == 404
    connection.close()


def test_concurrent_producers_commit_one_at_a_time(served: tuple[FakeClient, Committer, int]) -> None:
    """pachd refuses a commit on a branch while another is open: the receiver serializes them."""
    client, _, port = served
    client.release = threading.Event()
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(post(port, f"message {i}".encode())[0]))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    assert client.in_commit.wait(10)
    client.release.set()
    for thread in threads:
        thread.join(20)
    assert results == [201] * 4
    assert client.max_open == 1
    assert len([c for c in client.calls if c[0] == "finish"]) == 4


def test_settings_default_to_the_pipeline_s_own_repo() -> None:
    settings = ReceiverSettings.from_env({"PPS_PIPELINE_NAME": "push", "PPS_PROJECT_NAME": "team-a"})
    assert settings == ReceiverSettings(8080, DEFAULT_MAX_BYTES, TARGET, None)
    assert ReceiverSettings.from_env({"RECEIVER_PORT": "9000"}).port == 9000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RECEIVER_PORT": "http"}, "RECEIVER_PORT must be a whole number"),
        ({"RECEIVER_PORT": "70000"}, "RECEIVER_PORT must be a port number"),
        ({"RECEIVER_MAX_BYTES": "0"}, "RECEIVER_MAX_BYTES must be >= 1"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ReceiverSettings.from_env(env)


def test_waiting_for_finished_asks_pachd_for_that_commit_in_state_finished() -> None:
    from python_pachyderm.proto.v2.pfs import pfs_pb2
    from spout101.receiver import wait_finished

    asked: list[tuple[Any, Any]] = []

    class Client:
        def inspect_commit(self, commit: Any, state: Any) -> Iterator[Any]:
            asked.append((commit.to_pb(), state))
            return iter([object()])

    wait_finished(Client(), TARGET, "abc")
    ((commit, state),) = asked
    repo = commit.branch.repo
    assert (repo.name, repo.project.name, commit.id) == ("push", "team-a", "abc")
    assert state == pfs_pb2.CommitState.FINISHED
