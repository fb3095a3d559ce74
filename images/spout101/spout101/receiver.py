"""A spout that is pushed to: an HTTP endpoint on the spout's service port.

Each ``POST`` (any path but ``/healthz``) is one message: its body is committed, alone, to the
spout's output repo as ``<sha256>.txt`` (the consumer's naming, so the spout101 processor reads
it), and only once pachd reports that commit FINISHED is it answered ``201`` with the commit
id. A producer that got ``201`` knows its message is in pachd; any other answer (or none) means
it is not, and it sends again: the name is the content's hash, so a retry writes the same file.
``GET /healthz`` answers 200.

Commits are made one at a time (pachd refuses a commit on a branch while another is open), so
concurrent producers wait their turn; a failed commit is dropped, never left half-written.

Run in the spout pipeline with ``transform.cmd: [python, -m, spout101.receiver]`` and
``spout.service.internalPort`` equal to ``RECEIVER_PORT`` (default 8080). Standard library only,
besides the pachd client the consumer already uses.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from spout101.common import LOG_FORMAT, SettingsError, configure_logging, env_int
from spout101.consumer import (
    ConsumerSettings,
    PfsClient,
    Target,
    commit_messages,
    connect,
    drop_unfinished_head,
)

log = logging.getLogger("spout101.receiver")

PORT_ENV = "RECEIVER_PORT"
MAX_BYTES_ENV = "RECEIVER_MAX_BYTES"
DEFAULT_PORT = 8080
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class ReceiverSettings:
    port: int
    max_bytes: int
    target: Target
    pachd_address: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReceiverSettings:
        port = env_int(env, PORT_ENV, DEFAULT_PORT, minimum=1)
        if port > 65535:
            raise SettingsError(f"{PORT_ENV} must be a port number (1-65535), got {port}")
        max_bytes = env_int(env, MAX_BYTES_ENV, DEFAULT_MAX_BYTES, minimum=1)
        # Where to commit: the consumer's knobs (SPOUT_REPO, SPOUT_BRANCH, SPOUT_PROJECT,
        # SPOUT_PACHD_ADDRESS), defaulting to the pipeline's own output repo in a pod.
        consumer = ConsumerSettings.from_env(env)
        return cls(port, max_bytes, consumer.target, consumer.pachd_address)


def wait_finished(client: Any, target: Target, commit_id: str) -> None:
    """Block until pachd reports the commit FINISHED. FinishCommit returns once the commit is
    closed ("finishing"); pachd's compaction then finishes it. Acknowledging only after that
    means a producer's 201 names a commit every reader already sees whole."""
    from python_pachyderm.pfs import Commit  # Imported here, like the client itself.
    from python_pachyderm.proto.v2.pfs import pfs_pb2

    where = Commit(repo=target.repo, id=commit_id, project=target.project or "default")
    for _ in client.inspect_commit(where, pfs_pb2.CommitState.FINISHED):
        pass


class Committer:
    """Commits one message per commit, one commit at a time."""

    def __init__(
        self,
        client: PfsClient,
        target: Target,
        wait: Callable[[Any, Target, str], None] = wait_finished,
    ) -> None:
        self.client = client
        self.target = target
        self._wait = wait
        self._lock = threading.Lock()
        self.commits = 0

    def commit(self, message: bytes) -> tuple[str, str]:
        """Write `message` into a new commit and wait until pachd has finished it; return
        (commit id, file name)."""
        with self._lock:
            commit_id, names = commit_messages(self.client, self.target, [message])
            self._wait(self.client, self.target, commit_id)
            self.commits += 1
        return commit_id, names[0]


def handler_for(committer: Committer, max_bytes: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "spout101-receiver"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == HEALTH_PATH:
                self._answer(HTTPStatus.OK, {"status": "ok", "target": str(committer.target)})
            else:
                self._answer(HTTPStatus.NOT_FOUND, {"error": "POST a message; GET /healthz"})

        def do_POST(self) -> None:
            length_header = self.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": "send the message with a Content-Length"})
                return
            length = int(length_header)
            if length == 0:
                self._answer(HTTPStatus.BAD_REQUEST, {"error": "an empty message is not a message"})
                return
            if length > max_bytes:
                self.close_connection = True  # the body is not read
                self._answer(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    {"error": f"a message holds at most {max_bytes} bytes"},
                )
                return
            message = self.rfile.read(length)
            if len(message) != length:
                self._answer(HTTPStatus.BAD_REQUEST, {"error": "the message ended early"})
                return
            try:
                commit_id, name = committer.commit(message)
            except Exception as err:  # pachd away or refusing: not acknowledged, the producer retries
                log.exception("Could not commit a %d-byte message to %s", length, committer.target)
                self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"not committed: {err}"})
                return
            self._answer(HTTPStatus.CREATED, {"commit": commit_id, "file": name, "bytes": length})

        def _answer(self, status: HTTPStatus, body: Mapping[str, object]) -> None:
            data = json.dumps(body).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def make_server(committer: Committer, port: int, max_bytes: int, host: str = "") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), handler_for(committer, max_bytes))
    # On shutdown, wait for requests in flight: a message being committed is answered.
    server.daemon_threads = False
    server.block_on_close = True
    return server


def install_signal_handlers(server: ThreadingHTTPServer) -> None:
    """SIGTERM/SIGINT stop accepting; requests in flight finish (serve_forever returns)."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("Received %s, finishing the requests in flight", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def main() -> int:
    try:
        configure_logging()
        settings = ReceiverSettings.from_env(os.environ)
    except SettingsError as err:
        logging.basicConfig(format=LOG_FORMAT)
        log.error("Invalid configuration: %s", err)
        return 2
    client = connect(settings.pachd_address)
    drop_unfinished_head(client, settings.target)
    committer = Committer(client, settings.target)
    server = make_server(committer, settings.port, settings.max_bytes)
    install_signal_handlers(server)
    log.info("Receiver listening on port %d: one commit per message to %s", settings.port, settings.target)
    with server:
        server.serve_forever()
    log.info("Receiver stopped cleanly after %d commits", committer.commits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
