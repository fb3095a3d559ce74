"""The spout worker: "receives" messages and writes each batch into one commit.

Upstream spout101 emulates a message queue: every 10-30 s it receives one
1024-byte and one 2048-byte random message and writes both, named by their
sha256, into a single commit on ``spout@master``. This module keeps that
behaviour, with the emulation behind the ``MessageSource`` seam so a real
source (SQS, Kafka, Pub/Sub, ...) can replace it without touching the writer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from spout101.common import (
    LOG_FORMAT,
    SettingsError,
    configure_logging,
    env_int,
    env_int_list,
    env_str,
)

log = logging.getLogger("spout101.consumer")

INTERVAL_MIN_ENV = "SPOUT_INTERVAL_MIN"
INTERVAL_MAX_ENV = "SPOUT_INTERVAL_MAX"
MESSAGE_SIZES_ENV = "SPOUT_MESSAGE_SIZES"
REPO_ENV = "SPOUT_REPO"
BRANCH_ENV = "SPOUT_BRANCH"
PROJECT_ENV = "SPOUT_PROJECT"
PACHD_ADDRESS_ENV = "SPOUT_PACHD_ADDRESS"
# pachd sets these in every worker pod; a spout's output repo is named after
# the pipeline, in the pipeline's project.
PIPELINE_NAME_ENV = "PPS_PIPELINE_NAME"
PROJECT_NAME_ENV = "PPS_PROJECT_NAME"

DEFAULT_INTERVAL_MIN = 10
DEFAULT_INTERVAL_MAX = 30
DEFAULT_MESSAGE_SIZES = (1024, 2048)
DEFAULT_BRANCH = "master"
FALLBACK_REPO = "spout"


@dataclass(frozen=True)
class Target:
    """Where batches are committed. ``project`` None means pachd's default project."""

    repo: str
    branch: str
    project: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.project}/" if self.project else ""
        return f"{prefix}{self.repo}@{self.branch}"


@dataclass(frozen=True)
class ConsumerSettings:
    interval_min: int
    interval_max: int
    message_sizes: tuple[int, ...]
    target: Target
    pachd_address: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsumerSettings:
        interval_min = env_int(env, INTERVAL_MIN_ENV, DEFAULT_INTERVAL_MIN, minimum=0)
        interval_max = env_int(env, INTERVAL_MAX_ENV, DEFAULT_INTERVAL_MAX, minimum=0)
        if interval_min > interval_max:
            raise SettingsError(
                f"{INTERVAL_MIN_ENV} ({interval_min}) must not be greater than "
                f"{INTERVAL_MAX_ENV} ({interval_max})"
            )
        # Size 0 would give every empty message the same name: require real content.
        sizes = env_int_list(env, MESSAGE_SIZES_ENV, DEFAULT_MESSAGE_SIZES, minimum=1)
        repo = env_str(env, REPO_ENV, env_str(env, PIPELINE_NAME_ENV, FALLBACK_REPO))
        branch = env_str(env, BRANCH_ENV, DEFAULT_BRANCH)
        project = env_str(env, PROJECT_ENV, env_str(env, PROJECT_NAME_ENV, "")) or None
        address = env_str(env, PACHD_ADDRESS_ENV, "") or None
        if address is not None:
            validate_pachd_address(address)
        return cls(interval_min, interval_max, sizes, Target(repo, branch, project), address)


def validate_pachd_address(address: str) -> None:
    """Fail at startup, with the variable's name, rather than deep inside the client."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("grpc", "grpcs", "http", "https"):
        raise SettingsError(
            f"{PACHD_ADDRESS_ENV} must look like grpc://host:port (or grpcs://), got {address!r}"
        )
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise SettingsError(f"{PACHD_ADDRESS_ENV} must name a host and a port, got {address!r}")


def message_filename(message: bytes) -> str:
    """Content-addressed name, so writing the same message twice is idempotent."""
    return hashlib.sha256(message).hexdigest() + ".txt"


class MessageSource(Protocol):
    """Where messages come from. Replace the emulation with a real queue here."""

    def receive(self, stop: threading.Event) -> Sequence[bytes]:
        """Block until the next batch arrives; return an empty batch once ``stop`` is set.

        Every batch becomes exactly one commit. A real source should acknowledge
        its messages only after ``write_batch`` returned, so a crash re-delivers them.
        """
        ...


class EmulatedSource:
    """Upstream's emulation: wait a random whole number of seconds, then random bytes."""

    def __init__(
        self,
        interval_min: int,
        interval_max: int,
        sizes: Sequence[int],
        *,
        rng: random.Random | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.interval_min = interval_min
        self.interval_max = interval_max
        self.sizes = tuple(sizes)
        self._rng = rng or random.Random()
        self._randbytes = randbytes

    def next_interval(self) -> int:
        # randint includes both ends, as upstream's randint(10, 30).
        return self._rng.randint(self.interval_min, self.interval_max)

    def receive(self, stop: threading.Event) -> Sequence[bytes]:
        interval = self.next_interval()
        log.info("Waiting %d s for the next messages", interval)
        # Event.wait instead of sleep: SIGTERM ends the wait at once.
        if stop.wait(interval):
            return []
        return [self._randbytes(size) for size in self.sizes]


class PfsClient(Protocol):
    """The part of python_pachyderm.Client the consumer uses (fakes implement it in tests)."""

    def start_commit(self, repo_name: str, branch: str, *, project_name: str | None = None) -> Any: ...

    def put_file_bytes(self, commit: Any, path: str, value: bytes) -> Any: ...

    def finish_commit(self, commit: Any) -> None: ...

    def drop_commit(self, commit_id: str) -> None: ...

    def inspect_commit(self, commit: Any) -> Iterator[Any]: ...


def write_batch(client: PfsClient, target: Target, messages: Sequence[bytes]) -> list[str]:
    """Write all messages into ONE new commit; return the file names written.

    Not ``client.commit(...)``: that context manager finishes the commit even
    when a put failed, which would publish a commit holding only part of the
    batch. Here a failure drops the open commit, so a commit holds the whole
    batch or does not exist.
    """
    return commit_messages(client, target, messages)[1]


def commit_messages(client: PfsClient, target: Target, messages: Sequence[bytes]) -> tuple[str, list[str]]:
    """``write_batch``, also returning the id of the finished commit."""
    commit = client.start_commit(target.repo, target.branch, project_name=target.project)
    names: list[str] = []
    try:
        for message in messages:
            name = message_filename(message)
            client.put_file_bytes(commit, "/" + name, message)
            names.append(name)
        client.finish_commit(commit)
    except BaseException:
        _drop_quietly(client, commit)
        raise
    log.info("Committed %s to %s in commit %s", ", ".join(names), target, commit.id)
    return str(commit.id), names


def _drop_quietly(client: PfsClient, commit: Any) -> None:
    """Best effort: the caller's original error is the one worth raising."""
    try:
        client.drop_commit(commit.id)
        log.warning("Dropped unfinished commit %s", commit.id)
    except Exception:
        log.exception("Could not drop unfinished commit %s; it may stay open", commit.id)


def drop_unfinished_head(client: PfsClient, target: Target) -> str | None:
    """Drop the branch's head commit if it was left open; return its id.

    A worker killed in the middle of a batch (its pod replaced by a spout update, its node
    lost) leaves that batch's commit open, and pachd then refuses every later commit on the
    branch ("parent commit ... has not been finished"). That batch never completed: drop it,
    as a failed batch is dropped. Only this spout's master writes to the branch, and pachd
    runs one master at a time, so an open head is never another live writer's.
    """
    from python_pachyderm.pfs import Commit  # Imported here, like the client itself.

    where = Commit(repo=target.repo, branch=target.branch, project=target.project or "default")
    try:
        head = next(iter(client.inspect_commit(where)), None)
    except Exception as err:  # no head yet (a new repo), or pachd away: start_commit will say
        log.debug("No head commit to check on %s: %s", target, err)
        return None
    if head is None or head.HasField("finished"):
        return None
    client.drop_commit(head.commit.id)
    log.warning("Dropped commit %s, left unfinished on %s by an earlier worker", head.commit.id, target)
    return str(head.commit.id)


def run(
    client: PfsClient,
    target: Target,
    source: MessageSource,
    stop: threading.Event,
    *,
    max_rounds: int | None = None,
) -> int:
    """Receive and commit batches until ``stop`` is set; return how many commits were made.

    ``stop`` is only checked between batches: a batch already being written is
    finished (it takes milliseconds) before the loop exits.
    """
    drop_unfinished_head(client, target)
    commits = 0
    while not stop.is_set() and (max_rounds is None or commits < max_rounds):
        messages = source.receive(stop)
        if not messages:
            continue
        write_batch(client, target, messages)
        commits += 1
    return commits


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM (pod deletion) and SIGINT only request a stop; nothing is interrupted."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("Received %s, stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def connect(pachd_address: str | None) -> PfsClient:
    """An explicit address wins; otherwise read the config pachd mounts into spout pods."""
    import python_pachyderm  # Imported here so the pure parts load without the client.

    client: PfsClient
    if pachd_address:
        client = python_pachyderm.Client.new_from_pachd_address(pachd_address)
    else:
        # No arguments: $PACH_CONFIG, then /pachctl/config.json (the worker's
        # sidecar address and the pipeline's token in a spout pod).
        client = python_pachyderm.Client()
    return client


def main() -> int:
    try:
        configure_logging()
        settings = ConsumerSettings.from_env(os.environ)
    except SettingsError as err:
        logging.basicConfig(format=LOG_FORMAT)
        log.error("Invalid configuration: %s", err)
        return 2
    stop = threading.Event()
    install_signal_handlers(stop)
    client = connect(settings.pachd_address)
    source = EmulatedSource(settings.interval_min, settings.interval_max, settings.message_sizes)
    log.info(
        "Consumer started: target %s, interval %d-%d s, message sizes %s",
        settings.target,
        settings.interval_min,
        settings.interval_max,
        ",".join(str(size) for size in settings.message_sizes),
    )
    try:
        commits = run(client, settings.target, source, stop)
    except Exception:
        # Non-zero exit: Kubernetes restarts the worker; the log says why.
        log.exception("Consumer failed writing to %s", settings.target)
        return 1
    log.info("Consumer stopped cleanly after %d commits", commits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
