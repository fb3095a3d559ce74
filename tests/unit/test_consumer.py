"""Unit tests of the spout101 consumer: no pachd, a fake client records the calls."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from python_pachyderm.proto.v2.pfs import pfs_pb2
from spout101 import consumer
from spout101.common import SettingsError
from spout101.consumer import (
    ConsumerSettings,
    EmulatedSource,
    Target,
    message_filename,
    run,
    write_batch,
)

TARGET = Target("spout", "master")


@dataclass
class FakeCommit:
    id: str


@dataclass
class FakeClient:
    """Records every call in order; can fail or request a stop at a chosen put."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail_on_put: int | None = None
    on_put: Any = None
    _commits: int = 0
    _puts: int = 0

    def start_commit(self, repo_name: str, branch: str, *, project_name: str | None = None) -> FakeCommit:
        self._commits += 1
        commit = FakeCommit(f"c{self._commits}")
        self.calls.append(("start", repo_name, branch, project_name, commit.id))
        return commit

    def put_file_bytes(self, commit: FakeCommit, path: str, value: bytes) -> None:
        self._puts += 1
        if self.fail_on_put == self._puts:
            raise ConnectionError("pachd went away")
        self.calls.append(("put", commit.id, path, value))
        if self.on_put is not None:
            self.on_put()

    def finish_commit(self, commit: FakeCommit) -> None:
        self.calls.append(("finish", commit.id))

    def drop_commit(self, commit_id: str) -> None:
        self.calls.append(("drop", commit_id))

    open_head: str | None = None  # a commit an earlier worker left open on the branch

    def inspect_commit(self, commit: Any) -> Iterator[Any]:
        assert (commit.repo, commit.branch, commit.project) == ("spout", "master", "default")
        finished = self.open_head is None
        head = pfs_pb2.CommitInfo(commit=pfs_pb2.Commit(id=self.open_head or "h0"))
        if finished:
            head.finished.GetCurrentTime()
        return iter([head])

    def commits(self) -> dict[str, list[tuple[str, bytes]]]:
        """Finished commits -> their (path, bytes) puts."""
        puts: dict[str, list[tuple[str, bytes]]] = {}
        finished: list[str] = []
        for call in self.calls:
            if call[0] == "put":
                puts.setdefault(call[1], []).append((call[2], call[3]))
            elif call[0] == "finish":
                finished.append(call[1])
        return {cid: puts.get(cid, []) for cid in finished}


class ListSource:
    """A message source that hands out prepared batches, then stops the loop."""

    def __init__(self, batches: Sequence[Sequence[bytes]]) -> None:
        self.batches = list(batches)

    def receive(self, stop: threading.Event) -> Sequence[bytes]:
        if not self.batches:
            stop.set()
            return []
        return self.batches.pop(0)


def no_wait_source(sizes: Sequence[int] = (1024, 2048), seed: int = 1) -> EmulatedSource:
    return EmulatedSource(0, 0, sizes, rng=random.Random(seed))


# --- messages and names -------------------------------------------------------


def test_emulated_source_produces_one_message_per_size_in_order() -> None:
    messages = no_wait_source().receive(threading.Event())
    assert [len(m) for m in messages] == [1024, 2048]
    assert all(isinstance(m, bytes) for m in messages)


def test_emulated_messages_are_random_bytes() -> None:
    source = no_wait_source()
    first = source.receive(threading.Event())
    second = source.receive(threading.Event())
    assert first[0] != second[0]
    assert first[1] != second[1]
    # Binary, not text: 1024 random bytes are all printable ASCII with negligible probability.
    assert any(b > 0x7F for b in first[0])


def test_emulated_source_uses_the_injected_byte_generator() -> None:
    seen: list[int] = []

    def fake_urandom(n: int) -> bytes:
        seen.append(n)
        return b"x" * n

    source = EmulatedSource(0, 0, (3, 5), randbytes=fake_urandom)
    assert list(source.receive(threading.Event())) == [b"xxx", b"xxxxx"]
    assert seen == [3, 5]


def test_message_filename_is_sha256_hexdigest_with_txt() -> None:
    message = b"hello"
    assert message_filename(message) == hashlib.sha256(message).hexdigest() + ".txt"
    assert message_filename(message) == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824.txt"
    )
    assert message_filename(b"hello!") != message_filename(message)


# --- interval -----------------------------------------------------------------


def test_default_interval_is_whole_seconds_within_10_and_30_inclusive() -> None:
    source = EmulatedSource(10, 30, (1,), rng=random.Random(42))
    intervals = {source.next_interval() for _ in range(2000)}
    assert intervals == set(range(10, 31))


def test_receive_waits_the_drawn_interval_on_the_stop_event() -> None:
    waits: list[float] = []

    class RecordingEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout if timeout is not None else -1)
            return False

    rng = random.Random(7)
    expected = random.Random(7).randint(10, 30)
    EmulatedSource(10, 30, (1,), rng=rng).receive(RecordingEvent())
    assert waits == [expected]


def test_receive_returns_nothing_when_stopped_during_the_wait() -> None:
    stop = threading.Event()
    stop.set()
    assert list(EmulatedSource(10, 30, (1024,)).receive(stop)) == []


# --- settings from env ------------------------------------------------------


def test_settings_defaults_are_upstream_values() -> None:
    settings = ConsumerSettings.from_env({})
    assert settings.interval_min == 10
    assert settings.interval_max == 30
    assert settings.message_sizes == (1024, 2048)
    assert settings.target == Target("spout", "master", None)
    assert settings.pachd_address is None


def test_settings_default_repo_is_the_pipelines_own_output_repo() -> None:
    settings = ConsumerSettings.from_env({"PPS_PIPELINE_NAME": "my-spout", "PPS_PROJECT_NAME": "proj"})
    assert settings.target == Target("my-spout", "master", "proj")


def test_settings_explicit_knobs_win() -> None:
    env = {
        "PPS_PIPELINE_NAME": "my-spout",
        "SPOUT_REPO": "elsewhere",
        "SPOUT_BRANCH": "dev",
        "SPOUT_PROJECT": "other",
        "SPOUT_INTERVAL_MIN": "0",
        "SPOUT_INTERVAL_MAX": " 0 ",
        "SPOUT_MESSAGE_SIZES": "10, 20,30",
        "SPOUT_PACHD_ADDRESS": "grpc://127.0.0.1:30650",
    }
    settings = ConsumerSettings.from_env(env)
    assert (settings.interval_min, settings.interval_max) == (0, 0)
    assert settings.message_sizes == (10, 20, 30)
    assert settings.target == Target("elsewhere", "dev", "other")
    assert settings.pachd_address == "grpc://127.0.0.1:30650"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPOUT_INTERVAL_MIN": "ten"}, "SPOUT_INTERVAL_MIN must be a whole number"),
        ({"SPOUT_INTERVAL_MAX": "2.5"}, "SPOUT_INTERVAL_MAX must be a whole number"),
        ({"SPOUT_INTERVAL_MIN": "-1"}, "SPOUT_INTERVAL_MIN must be >= 0"),
        (
            {"SPOUT_INTERVAL_MIN": "31"},
            "SPOUT_INTERVAL_MIN (31) must not be greater than SPOUT_INTERVAL_MAX (30)",
        ),
        ({"SPOUT_INTERVAL_MIN": "5", "SPOUT_INTERVAL_MAX": "4"}, "must not be greater than"),
        ({"SPOUT_MESSAGE_SIZES": "1024,,2048"}, "SPOUT_MESSAGE_SIZES must be a comma-separated list"),
        ({"SPOUT_MESSAGE_SIZES": "1K"}, "SPOUT_MESSAGE_SIZES must be a comma-separated list"),
        ({"SPOUT_MESSAGE_SIZES": "0"}, "SPOUT_MESSAGE_SIZES entries must be >= 1"),
        ({"SPOUT_PACHD_ADDRESS": "localhost"}, "SPOUT_PACHD_ADDRESS must look like grpc://host:port"),
        ({"SPOUT_PACHD_ADDRESS": "tcp://h:1"}, "SPOUT_PACHD_ADDRESS must look like grpc://host:port"),
        ({"SPOUT_PACHD_ADDRESS": "grpc://host"}, "SPOUT_PACHD_ADDRESS must name a host and a port"),
    ],
)
def test_bad_settings_raise_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        ConsumerSettings.from_env(env)
    assert message in str(excinfo.value)


def test_main_reports_bad_settings_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SPOUT_INTERVAL_MAX", "soon")
    assert consumer.main() == 2
    assert "Invalid configuration: SPOUT_INTERVAL_MAX must be a whole number, got 'soon'" in caplog.text


# --- commits ----------------------------------------------------------------


def test_write_batch_puts_every_message_into_one_commit() -> None:
    client = FakeClient()
    messages = [b"a" * 1024, b"b" * 2048]
    names = write_batch(client, Target("repo", "master", "proj"), messages)
    assert names == [message_filename(m) for m in messages]
    assert client.calls == [
        ("start", "repo", "master", "proj", "c1"),
        ("put", "c1", "/" + names[0], messages[0]),
        ("put", "c1", "/" + names[1], messages[1]),
        ("finish", "c1"),
    ]


def test_failed_put_drops_the_commit_instead_of_finishing_it() -> None:
    client = FakeClient(fail_on_put=2)
    with pytest.raises(ConnectionError):
        write_batch(client, TARGET, [b"a" * 1024, b"b" * 2048])
    assert [c[0] for c in client.calls] == ["start", "put", "drop"]
    assert client.calls[-1] == ("drop", "c1")
    assert client.commits() == {}


def test_run_makes_one_commit_per_round_with_both_sizes() -> None:
    client = FakeClient()
    made = run(client, TARGET, no_wait_source(), threading.Event(), max_rounds=3)
    assert made == 3
    commits = client.commits()
    assert len(commits) == 3
    for puts in commits.values():
        assert sorted(len(data) for _, data in puts) == [1024, 2048]
        for path, data in puts:
            assert path == "/" + hashlib.sha256(data).hexdigest() + ".txt"
    # Every round starts a commit only after the previous one finished.
    kinds = [c[0] for c in client.calls]
    assert kinds == ["start", "put", "put", "finish"] * 3


def test_run_skips_empty_batches_and_ends_when_stopped() -> None:
    client = FakeClient()
    source = ListSource([[b"one"], [], [b"two", b"three"]])
    assert run(client, TARGET, source, threading.Event()) == 2
    assert [sorted(p for p, _ in puts) for puts in client.commits().values()] == [
        ["/" + message_filename(b"one")],
        sorted(["/" + message_filename(b"two"), "/" + message_filename(b"three")]),
    ]


def test_stop_requested_mid_write_finishes_that_commit_then_exits() -> None:
    stop = threading.Event()
    client = FakeClient(on_put=stop.set)
    made = run(client, TARGET, no_wait_source(), stop)
    assert made == 1
    assert [c[0] for c in client.calls] == ["start", "put", "put", "finish"]


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_signal_handlers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_only_request_a_stop(sig: signal.Signals, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spout101.consumer")
    stop = threading.Event()
    consumer.install_signal_handlers(stop)
    os.kill(os.getpid(), sig)
    assert stop.wait(5)
    assert f"Received {sig.name}, stopping after the current batch" in caplog.text


def test_a_commit_left_open_by_an_earlier_worker_is_dropped_before_the_first_batch() -> None:
    """A spout pod killed mid-batch (replaced by a spout update) left its commit open: pachd
    refuses every later commit on the branch until it is gone."""
    client = FakeClient(open_head="dangling")
    assert consumer.run(client, TARGET, ListSource([[b"a" * 1024]]), threading.Event(), max_rounds=1) == 1
    assert client.calls[0] == ("drop", "dangling")
    assert [c[0] for c in client.calls[1:]] == ["start", "put", "finish"]


def test_a_finished_head_is_left_alone() -> None:
    client = FakeClient()
    consumer.run(client, TARGET, ListSource([[b"a" * 1024]]), threading.Event(), max_rounds=1)
    assert "drop" not in [c[0] for c in client.calls]
