"""The pachd gateway: the only module that talks to pachd (and imports python_pachyderm).

Calls go through python-pachyderm's generated PPS stubs on a channel of our own so
every call carries a deadline: one slow pachd must never hold a worker thread for
long. gRPC errors are translated into the three outcomes the reconciler cares
about: pachd unreachable (retry later), spec rejected (report, wait for a new
spec), pipeline missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
import python_pachyderm
from google.protobuf import json_format
from google.protobuf.empty_pb2 import Empty
from python_pachyderm.proto.v2.auth import auth_pb2, auth_pb2_grpc
from python_pachyderm.proto.v2.pfs import pfs_pb2, pfs_pb2_grpc
from python_pachyderm.proto.v2.pps import pps_pb2, pps_pb2_grpc
from python_pachyderm.proto.v2.version.versionpb import version_pb2_grpc

from spout_operator import metrics
from spout_operator.observed import ObservedPipeline
from spout_operator.render import PipelineSpec

DEFAULT_PORT = 30650
_STATE_PREFIX = "PIPELINE_"
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_WRITES = {"CreatePipeline", "StartPipeline", "StopPipeline", "DeletePipeline"}
# A spec commit this soon after the operator's own write of the pipeline is that write's.
OWN_WRITE_S = 1.0

log = logging.getLogger(__name__)

PipelineKey = tuple[str, str]  # (project, name)
Snapshot = dict[PipelineKey, ObservedPipeline]  # (project, name) -> pipeline
# Told which pipelines a new listing shows changed since the one before, and when it started.
ListingChanged = Callable[[set[tuple[str, str]], float], None]


class PachdError(Exception):
    """Base of the errors the gateway raises."""


class PachdUnavailable(PachdError):
    """pachd could not be reached or did not answer in time: worth retrying."""


class PachdRejected(PachdError):
    """pachd refused the request (bad spec, limits, conflicts): retrying will not help."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class Endpoint:
    """How to reach one pachd, and the token that may be sent there (and nowhere else).

    A value: gateways are keyed by the whole endpoint, so a token is bound to its address,
    and a rotated token (or CA bundle) makes a new endpoint, hence a new channel.
    """

    address: str  # grpc://host:port or grpcs://host:port (a bare host:port means grpc)
    tls: bool = False
    auth_token: str | None = field(default=None, repr=False)  # never in logs or reprs
    ca_bundle: bytes | None = field(default=None, repr=False)  # PEM roots; None: the system's

    @property
    def target(self) -> str:
        parts = urlsplit(self.address if "://" in self.address else f"grpc://{self.address}")
        if parts.scheme not in ("grpc", "grpcs", "http", "https"):
            raise PachdRejected(f"unsupported pachd address scheme {parts.scheme!r} in {self.address!r}")
        if not parts.hostname:
            raise PachdRejected(f"pachd address {self.address!r} has no host")
        try:
            port = parts.port
        except ValueError:  # urlsplit refuses ports outside 0-65535
            raise PachdRejected(f"pachd address {self.address!r} has an invalid port") from None
        return f"{parts.hostname}:{port or DEFAULT_PORT}"

    @property
    def secure(self) -> bool:
        return self.tls or self.address.startswith(("grpcs://", "https://"))


def canonical(spec: PipelineSpec) -> PipelineSpec:
    """The spec as protobuf JSON renders it (int64 as strings, empty values dropped),
    the form observed specs come in, so the two compare field by field."""
    try:
        request = python_pachyderm.parse_dict_pipeline_spec(spec)
    except json_format.ParseError as err:
        raise PachdRejected(f"invalid pipeline spec: {err}") from None
    rendered: PipelineSpec = json_format.MessageToDict(request)
    return rendered


def _observed(info: Any) -> ObservedPipeline:
    spec: PipelineSpec = json_format.MessageToDict(info.details)
    spec["pipeline"] = json_format.MessageToDict(info.pipeline)
    state_name: str = pps_pb2.PipelineState.Name(info.state)
    return ObservedPipeline(
        name=info.pipeline.name,
        project=info.pipeline.project.name or "default",
        version=int(info.version),
        state=state_name.removeprefix(_STATE_PREFIX),
        stopped=bool(info.stopped),
        spec=spec,
        recent_error=info.details.recent_error,
        reason=info.reason,
        spec_commit=info.spec_commit.id,
    )


def _fingerprint(pipeline: ObservedPipeline) -> tuple[int, str, bool]:
    return (pipeline.version, pipeline.state, pipeline.stopped)


def changed_pipelines(before: Snapshot, after: Snapshot) -> set[tuple[str, str]]:
    """The pipelines two listings disagree on: appeared, gone, updated, stopped or started,
    or moved between pachd's states."""
    return {
        key
        for key in before.keys() | after.keys()
        if key not in before or key not in after or _fingerprint(before[key]) != _fingerprint(after[key])
    }


class Gateway:
    """A connection to one pachd. Thread-safe: gRPC channels and stubs are."""

    def __init__(
        self, endpoint: Endpoint, timeout_s: float = 10.0, listing_changed: ListingChanged | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._listing_changed = listing_changed
        target = endpoint.target
        if endpoint.secure:
            credentials = grpc.ssl_channel_credentials(root_certificates=endpoint.ca_bundle)
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self._pps = pps_pb2_grpc.APIStub(self._channel)
        self._version = version_pb2_grpc.APIStub(self._channel)
        self._auth = auth_pb2_grpc.APIStub(self._channel)
        self._metadata = [("authn-token", endpoint.auth_token)] if endpoint.auth_token else []
        self._snapshot: Snapshot | None = None
        self._snapshot_error: PachdError | None = None
        self._snapshot_taken = -math.inf  # when the listing started; never
        self._snapshot_lock = threading.Lock()
        # (project, name) -> when its last write ended (inf: still in flight)
        self._written_at: dict[tuple[str, str], float] = {}
        self._last_write: dict[tuple[str, str], float] = {}  # the same, kept OWN_WRITE_S (spec streams)
        self._write_lock = threading.Lock()  # held for the length of one write call
        self._written_lock = threading.Lock()  # not the snapshot's: writes never wait on a listing

    def __repr__(self) -> str:  # the Endpoint's repr leaves the token out
        return f"Gateway({self.endpoint!r})"

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any) -> Any:
        if method not in _WRITES:
            return self._send(method, request)
        # One write at a time per pachd: concurrent writes slow each other down inside pachd
        # (repairing 48 pairs on 6 pachds at once, a write took 0.9-2 s on average), so a
        # burst finishes sooner in a queue (the last repair ~2 s earlier). The wait is
        # bounded: behind a pachd that has stopped answering, a queued write fails as the
        # call in front of it will.
        if not self._write_lock.acquire(timeout=self.timeout_s):
            raise PachdUnavailable(f"pachd unreachable (busy): no write slot within {self.timeout_s:g}s")
        pipeline = request.pipeline  # every write request names the pipeline it changes
        key = (pipeline.project.name or "default", pipeline.name)
        try:
            metrics.PACHD_WRITES.inc()
            # In flight until it returns: a listing that runs meanwhile may or may not show it.
            with self._written_lock:
                self._written_at[key] = self._last_write[key] = math.inf
            return self._send(method, request)
        finally:
            with self._written_lock:
                ended = time.monotonic()
                self._written_at[key] = self._last_write[key] = ended
                self._last_write = {k: t for k, t in self._last_write.items() if ended - t <= OWN_WRITE_S}
            self._write_lock.release()

    def wrote(self, key: PipelineKey, within_s: float = OWN_WRITE_S) -> bool:
        """Whether a write of ours to the pipeline is in flight or ended within `within_s`."""
        with self._written_lock:
            ended = self._last_write.get(key)
        return ended is not None and time.monotonic() - ended <= within_s

    def _send(self, method: str, request: Any) -> Any:
        metrics.PACHD_CALLS.labels(method).inc()
        try:
            return getattr(self._pps, method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise _translate(err) from None

    # --- the connection itself --------------------------------------------------------

    def version(self) -> str:
        """pachd's version, e.g. 2.6.0: proves the address answers as a pachd."""
        metrics.PACHD_CALLS.labels("GetVersion").inc()
        try:
            info = self._version.GetVersion(Empty(), timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise _translate(err) from None
        return f"{info.major}.{info.minor}.{info.micro}{info.additional}"

    def auth_check(self) -> str | None:
        """Who pachd takes the token for; None when pachd has auth off (no token needed).

        Raises PachdRejected when pachd refuses the token (or its absence)."""
        metrics.PACHD_CALLS.labels("WhoAmI").inc()
        try:
            who = self._auth.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None  # "the auth service is not activated"
            raise _translate(err) from None
        return str(who.username)

    # --- reads ----------------------------------------------------------------------

    def inspect(self, name: str, project: str) -> ObservedPipeline | None:
        request = pps_pb2.InspectPipelineRequest(pipeline=_pipeline(name, project), details=True)
        try:
            return _observed(self._call("InspectPipeline", request))
        except PachdRejected as err:
            if err.not_found:
                return None
            raise

    def list_pipelines(self) -> list[ObservedPipeline]:
        """Every pipeline of this pachd, with details, in one call."""
        request = pps_pb2.ListPipelineRequest(details=True)
        stream: Iterable[Any] = self._call("ListPipeline", request)
        try:
            return [_observed(info) for info in stream]
        except grpc.RpcError as err:  # errors of a server stream surface while reading it
            raise _translate(err) from None

    def snapshot(self, not_before: float) -> Snapshot:
        """Every pipeline of this pachd from one shared listing started at or after
        `not_before` (a time.monotonic() instant: the sweep's, for drift checks).

        The periodic drift check of N resources on one pachd then costs one ListPipeline
        per sweep, not N inspections: every pass of a sweep, however late it runs, reuses
        the sweep's listing, and no pass ever judges by a listing older than its sweep. A
        pipeline written through this gateway since the listing started (or by a write still
        in flight when it started: pachd may apply it after the listing read) is left out (the
        caller inspects it), and only that one: a sweep that repairs many pipelines still
        shares one listing.

        A failed listing is shared the same way: N resources on an unreachable pachd wait
        for one deadline per sweep, not N of them in a row.
        """
        with self._snapshot_lock:
            if self._snapshot_taken < not_before:
                started = time.monotonic()
                before = self._snapshot
                try:
                    self._snapshot = {(p.project, p.name): p for p in self.list_pipelines()}
                    self._snapshot_error = None
                except PachdError as err:
                    self._snapshot, self._snapshot_error = None, err
                self._snapshot_taken = started
                if before is not None and self._snapshot is not None and self._listing_changed is not None:
                    changed = changed_pipelines(before, self._snapshot)
                    if changed:
                        self._listing_changed(changed, started)
            if self._snapshot_error is not None:
                # A copy for each caller: raising the one shared object again would chain every
                # raise's frames (and their locals) onto its traceback for as long as pachd is down.
                raise copy.copy(self._snapshot_error)
            assert self._snapshot is not None
            with self._written_lock:
                newer = {k for k, t in self._written_at.items() if t >= self._snapshot_taken}
                self._written_at = {k: self._written_at[k] for k in newer}
            if not newer:
                return self._snapshot
            return {k: p for k, p in self._snapshot.items() if k not in newer}

    # --- writes ---------------------------------------------------------------------

    def create(self, spec: PipelineSpec, update: bool) -> None:
        request = python_pachyderm.parse_dict_pipeline_spec(spec)
        request.update = update
        self._call("CreatePipeline", request)

    def start(self, name: str, project: str) -> None:
        self._call("StartPipeline", pps_pb2.StartPipelineRequest(pipeline=_pipeline(name, project)))

    def stop(self, name: str, project: str) -> None:
        self._call("StopPipeline", pps_pb2.StopPipelineRequest(pipeline=_pipeline(name, project)))

    def delete(self, name: str, project: str) -> None:
        self._call("DeletePipeline", pps_pb2.DeletePipelineRequest(pipeline=_pipeline(name, project)))


def _pipeline(name: str, project: str) -> Any:
    return pps_pb2.Pipeline(name=name, project=pfs_pb2.Project(name=project))


def _translate(err: grpc.RpcError) -> PachdError:
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else str(err)) or code.name
    if code in _UNAVAILABLE:
        # The same words whichever call failed: the status that carries them stays put
        # from one pass to the next, instead of being rewritten with each call's name.
        return PachdUnavailable(f"pachd unreachable ({code.name.lower()}): {details}")
    return PachdRejected(details, not_found=code == grpc.StatusCode.NOT_FOUND or "not found" in details)


class Gateways:
    """One gateway (gRPC channel) per distinct Endpoint, shared by every resource on it.

    Keyed by the whole Endpoint, token included: a token is only ever sent on the channel of
    its own address, and a rotated token gets a channel of its own. A gateway nobody asked for
    within `idle_s` (or `close_idle`'s) is closed, and one superseded by a new token or CA for
    the same address as soon as a call on it must have finished (its deadline has passed), so
    churn over many endpoints does not keep a channel for each one ever seen."""

    def __init__(
        self,
        timeout_s: float,
        idle_s: float = math.inf,
        clock: Callable[[], float] | None = None,
        listing_changed: ListingChanged | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._idle_s = idle_s
        self._listing_changed = listing_changed
        self._clock = clock or (lambda: time.monotonic())  # looked up at each call
        self._by_endpoint: dict[Endpoint, tuple[Gateway, float]] = {}  # -> gateway, last asked
        self._lock = threading.Lock()

    def get(self, endpoint: Endpoint) -> Gateway:
        now = self._clock()
        with self._lock:
            found = self._by_endpoint.get(endpoint)
            gateway = (
                found[0] if found is not None else Gateway(endpoint, self._timeout_s, self._listing_changed)
            )
            self._by_endpoint[endpoint] = (gateway, now)
            self._evict(now, endpoint, self._idle_s)
            metrics.PACHD_CHANNELS.set(len(self._by_endpoint))
            return gateway

    def _evict(self, now: float, current: Endpoint | None, idle_s: float) -> int:
        # A write waits up to one deadline for its slot, then runs for up to one more.
        in_flight_s = 2 * self._timeout_s + 1
        place = None if current is None else (current.address, current.tls)
        closed = 0
        for endpoint, (gateway, asked) in list(self._by_endpoint.items()):
            superseded = endpoint != current and (endpoint.address, endpoint.tls) == place
            idle = now - asked
            if idle > idle_s or (superseded and idle > in_flight_s):
                gateway.close()
                del self._by_endpoint[endpoint]
                closed += 1
        return closed

    def close_idle(self, idle_s: float) -> int:
        """Close the gateways nobody asked for in `idle_s`; how many were closed. Every
        resource asks for its gateway at each sweep, so pick `idle_s` well above the sweep
        interval and the longest pass (a pass in flight keeps what it was given)."""
        with self._lock:
            closed = self._evict(self._clock(), None, idle_s)
            metrics.PACHD_CHANNELS.set(len(self._by_endpoint))
        return closed

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def wrote(self, endpoint: Endpoint, key: PipelineKey) -> bool:
        """Whether the operator itself just wrote the pipeline there (see Gateway.wrote)."""
        with self._lock:
            found = self._by_endpoint.get(endpoint)
        return found is not None and found[0].wrote(key)

    def close(self) -> None:
        with self._lock:
            for gateway, _ in self._by_endpoint.values():
                gateway.close()
            self._by_endpoint.clear()
            metrics.PACHD_CHANNELS.set(0)


# --- Spec repos: an update seen as it is made ----------------------------------------------
# pachd writes a pipeline's new spec as a commit to its spec repo in the update's own
# transaction, but creates the new worker RC only after its Secret and Service (1-2 s later,
# through a throttled Kubernetes client). A pfs SubscribeCommit stream on the spec repo sees
# the update within tens of milliseconds. It sends nothing for a stop or a deletion (the RC
# watch and the listings see those). The streams run on the event loop (grpc.aio): no thread each.

SPEC_STREAM_S = 600.0  # a stream is opened again after this, so a silently dead one ends
SPEC_RETRY_S = (1.0, 30.0)  # back-off between attempts while pachd refuses or is away
_KEEPALIVE = [("grpc.keepalive_time_ms", 30_000)]  # pachd 2.6 allows pings every 5 s

# Commit ids of one spec repo's stream, as pachd sends them.
SpecStream = Callable[["Endpoint", PipelineKey], AsyncIterator[str]]


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
    ) -> None:
        self._changed = changed
        self._stream = stream or self._subscribe
        # The commit of a write of the operator's own (Gateways.wrote) wakes nobody: in a burst
        # of repairs, each would cost a pass and a listing of a pachd busy with the next write.
        self._own = own
        self._wanted: dict[str, tuple[Endpoint, dict[PipelineKey, str]]] = {}  # owner -> where, heads
        self._followers: dict[tuple[Endpoint, PipelineKey], tuple[SpecFollower, asyncio.Task[None]]] = {}
        self._channels: dict[Endpoint, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

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
        for channel in list(self._channels.values()):
            await channel.close()
        self._channels.clear()

    def _drop_unwanted(self) -> None:
        wanted = {(endpoint, key) for endpoint, heads in self._wanted.values() for key in heads}
        for place in set(self._followers) - wanted:
            self._followers.pop(place)[1].cancel()
        unused = set(self._channels) - {endpoint for endpoint, _ in self._followers}
        for endpoint in unused:  # nothing is in flight on it any more: close it in the background
            closing = asyncio.get_running_loop().create_task(self._channels.pop(endpoint).close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _follow(self, endpoint: Endpoint, key: PipelineKey, follower: SpecFollower) -> None:
        delay = SPEC_RETRY_S[0]
        while True:
            heard = False
            try:
                async for commit in self._stream(endpoint, key):
                    heard = True
                    if follower.news(commit) and not self._own(endpoint, key):
                        self._changed(key)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # pachd away, the repo not there yet, the stream's deadline
                log.debug(f"Spec stream of {key[0]}/{key[1]} on {endpoint.address} ends: {err}")
            follower.reopened()
            # A stream that delivered (its history at least) is opened again at once; one that
            # did not backs off, so a pachd that is away is not asked once per pipeline each second.
            delay = SPEC_RETRY_S[0] if heard else min(2 * delay, SPEC_RETRY_S[1])
            await asyncio.sleep(0 if heard else delay)

    async def _subscribe(self, endpoint: Endpoint, key: PipelineKey) -> AsyncIterator[str]:
        channel = self._channels.get(endpoint)
        if channel is None:
            if endpoint.secure:
                credentials = grpc.ssl_channel_credentials(root_certificates=endpoint.ca_bundle)
                channel = grpc.aio.secure_channel(endpoint.target, credentials, options=_KEEPALIVE)
            else:
                channel = grpc.aio.insecure_channel(endpoint.target, options=_KEEPALIVE)
            self._channels[endpoint] = channel
        project, name = key
        # python-pachyderm 7.5 names only "user" repos: the spec repo needs the stub itself.
        repo = pfs_pb2.Repo(name=name, type="spec", project=pfs_pb2.Project(name=project))
        request = pfs_pb2.SubscribeCommitRequest(repo=repo, branch="master")
        metadata = [("authn-token", endpoint.auth_token)] if endpoint.auth_token else []
        metrics.PACHD_CALLS.labels("SubscribeCommit").inc()
        stub = pfs_pb2_grpc.APIStub(channel)
        call = stub.SubscribeCommit(request, timeout=SPEC_STREAM_S, metadata=metadata)
        try:
            async for info in call:
                yield str(info.commit.id)
        finally:
            with contextlib.suppress(Exception):
                call.cancel()
