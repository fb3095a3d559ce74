"""The pachd gateway: blocking gRPC calls to pachd, and the pool of channels they use.

The only module that imports python_pachyderm (with spec_streams.py, which follows spec
repos on the event loop through the channel settings defined here). Calls go through the
generated stubs on a channel of our own so every call carries a deadline: one slow pachd
must never hold a worker thread for long. gRPC errors become the outcomes the reconciler
cares about: pachd unreachable (retry later), spec rejected (report, wait for a new
spec), pipeline missing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import python_pachyderm
from google.protobuf import json_format
from google.protobuf.empty_pb2 import Empty
from python_pachyderm.proto.v2.auth import auth_pb2, auth_pb2_grpc
from python_pachyderm.proto.v2.pfs import pfs_pb2, pfs_pb2_grpc
from python_pachyderm.proto.v2.pps import pps_pb2, pps_pb2_grpc
from python_pachyderm.proto.v2.version.versionpb import version_pb2_grpc

from spout_operator import metrics, tracing
from spout_operator.names import PipelineKey, PipelineSpec
from spout_operator.observed import ObservedPipeline
from spout_operator.pachd_api import Endpoint, PachdError, PachdRejected, PachdUnavailable, Snapshot

_STATE_PREFIX = "PIPELINE_"
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_WRITES = {"CreatePipeline", "StartPipeline", "StopPipeline", "DeletePipeline"}
# Writes in flight per pachd. Concurrent writes slow each other down inside pachd (48 pairs
# repaired on 6 pachds at once, unbounded: 0.9-2 s a write on average), so a burst finishes
# sooner in a queue; but a queue of one waits behind any slow write (a StartPipeline racing
# pachd's own deletion of that pipeline took 4.1 s and held up every repair queued behind it).
WRITE_LANES = 2
# A spec commit this soon after the operator's own write of the pipeline is that write's.
OWN_WRITE_S = 1.0

log = logging.getLogger(__name__)

# Told which pipelines a new listing shows changed since the one before, and when it started.
ListingChanged = Callable[[set[PipelineKey], float], None]


def credentials(endpoint: Endpoint) -> grpc.ChannelCredentials | None:
    """TLS credentials for the endpoint (its own CA bundle, else the system's); None: plain."""
    if not endpoint.secure:
        return None
    return grpc.ssl_channel_credentials(root_certificates=endpoint.ca_bundle)


def auth_metadata(endpoint: Endpoint) -> list[tuple[str, str]]:
    """The call metadata carrying the endpoint's token, sent on its own channel only."""
    return [("authn-token", endpoint.auth_token)] if endpoint.auth_token else []


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


@contextlib.contextmanager
def timed(method: str) -> Iterator[None]:
    """Count one call to pachd and time it by method and gRPC status code (OK when it
    returned; the error's code, else UNKNOWN, when it raised)."""
    metrics.PACHD_CALLS.labels(method).inc()
    started = time.monotonic()
    code = "OK"
    try:
        with tracing.step(f"pachd {method}"):
            yield
    except grpc.RpcError as err:
        code = err.code().name if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN.name
        raise
    except BaseException:
        code = grpc.StatusCode.UNKNOWN.name
        raise
    finally:
        metrics.PACHD_CALL_SECONDS.labels(method, code).observe(time.monotonic() - started)


def _fingerprint(pipeline: ObservedPipeline) -> tuple[int, str, bool]:
    return (pipeline.version, pipeline.state, pipeline.stopped)


def changed_pipelines(before: Snapshot, after: Snapshot) -> set[PipelineKey]:
    """The pipelines two listings disagree on: appeared, gone, updated, stopped or started,
    or moved between pachd's states."""
    return {
        key
        for key in before.keys() | after.keys()
        if key not in before or key not in after or _fingerprint(before[key]) != _fingerprint(after[key])
    }


class Gateway:
    """A connection to one pachd (implements pachd_api.Pachd). Thread-safe: gRPC channels
    and stubs are."""

    def __init__(
        self, endpoint: Endpoint, timeout_s: float = 10.0, listing_changed: ListingChanged | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._listing_changed = listing_changed
        target, secure = endpoint.target, credentials(endpoint)
        self._channel = (
            grpc.insecure_channel(target) if secure is None else grpc.secure_channel(target, secure)
        )
        self._pps = pps_pb2_grpc.APIStub(self._channel)
        self._version = version_pb2_grpc.APIStub(self._channel)
        self._auth = auth_pb2_grpc.APIStub(self._channel)
        self._pfs = pfs_pb2_grpc.APIStub(self._channel)
        self._metadata = auth_metadata(endpoint)
        self._snapshot: Snapshot | None = None
        self._snapshot_error: PachdError | None = None
        self._snapshot_taken = -math.inf  # when the listing started; never
        self._snapshot_lock = threading.Lock()
        # (project, name) -> when its last write ended (inf: still in flight)
        self._written_at: dict[PipelineKey, float] = {}
        self._last_write: dict[PipelineKey, float] = {}  # the same, kept OWN_WRITE_S (spec streams)
        self._write_lanes = threading.BoundedSemaphore(WRITE_LANES)  # each held for one write call
        self._written_lock = threading.Lock()  # not the snapshot's: writes never wait on a listing

    def __repr__(self) -> str:  # the Endpoint's repr leaves the token out
        return f"Gateway({self.endpoint!r})"

    def close(self) -> None:
        self._channel.close()

    @property
    def answering(self) -> bool:
        """Whether its last listing succeeded (False before the first)."""
        return self._snapshot is not None

    def _call(self, method: str, request: Any) -> Any:
        if method not in _WRITES:
            return self._send(method, request)
        # WRITE_LANES writes at a time per pachd, the rest queue. The wait is bounded: behind
        # a pachd that has stopped answering, a queued write fails as the calls in front will.
        if not self._write_lanes.acquire(timeout=self.timeout_s):
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
            self._write_lanes.release()

    def wrote(self, key: PipelineKey, within_s: float = OWN_WRITE_S) -> bool:
        """Whether a write of ours to the pipeline is in flight or ended within `within_s`."""
        with self._written_lock:
            ended = self._last_write.get(key)
        return ended is not None and time.monotonic() - ended <= within_s

    def _send(self, method: str, request: Any) -> Any:
        try:
            with timed(method):
                return getattr(self._pps, method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise _translate(err) from None

    # --- the connection itself --------------------------------------------------------

    def version(self) -> str:
        """pachd's version, e.g. 2.6.0: proves the address answers as a pachd."""
        try:
            with timed("GetVersion"):
                info = self._version.GetVersion(Empty(), timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise _translate(err) from None
        return f"{info.major}.{info.minor}.{info.micro}{info.additional}"

    def auth_check(self) -> str | None:
        """Who pachd takes the token for; None when pachd has auth off (no token needed).

        Raises PachdRejected when pachd refuses the token (or its absence)."""
        try:
            with timed("WhoAmI"):
                who = self._auth.WhoAmI(
                    auth_pb2.WhoAmIRequest(), timeout=self.timeout_s, metadata=self._metadata
                )
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None  # "the auth service is not activated"
            raise _translate(err) from None
        return str(who.username)

    # --- reads ----------------------------------------------------------------------

    def canonical(self, spec: PipelineSpec) -> PipelineSpec:
        return canonical(spec)

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
        try:
            # A server stream: its errors surface while reading it, and its time is the reading.
            with timed("ListPipeline"):
                stream: Iterable[Any] = self._pps.ListPipeline(
                    request, timeout=self.timeout_s, metadata=self._metadata
                )
                return [_observed(info) for info in stream]
        except grpc.RpcError as err:
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

    def ensure_project(self, project: str) -> None:
        """CreateProject, where pachd does not have it yet (ALREADY_EXISTS is success)."""
        metrics.PACHD_WRITES.inc()
        request = pfs_pb2.CreateProjectRequest(
            project=pfs_pb2.Project(name=project), description="made by spout-operator for its namespace"
        )
        try:
            with timed("CreateProject"):
                self._pfs.CreateProject(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            translated = _translate(err)
            if "already exists" not in str(translated):
                raise translated from None

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
    its own address, and a rotated token gets a channel of its own. Each `get` closes what
    is no longer wanted (one mechanism, no timer): a gateway nobody asked for within
    `idle_s`, and one superseded by a new token or CA for the same address as soon as a call
    on it must have finished (its deadline has passed). Every resource asks for its gateway
    at each sweep and every connection at each check, so `idle_s` is set well above both
    intervals (Settings.gateway_idle_s), and churn over many endpoints keeps no channel for
    each one ever seen."""

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
            self._evict(now, endpoint)
            metrics.PACHD_CHANNELS.set(len(self._by_endpoint))
            return gateway

    def _evict(self, now: float, current: Endpoint) -> None:
        # A write waits up to one deadline for its slot, then runs for up to one more.
        in_flight_s = 2 * self._timeout_s + 1
        place = (current.address, current.tls)
        for endpoint, (gateway, asked) in list(self._by_endpoint.items()):
            superseded = endpoint != current and (endpoint.address, endpoint.tls) == place
            idle = now - asked
            if idle > self._idle_s or (superseded and idle > in_flight_s):
                gateway.close()
                del self._by_endpoint[endpoint]

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def answering(self) -> list[Endpoint]:
        """The pachds whose last listing succeeded, each through the endpoint last asked for
        at its address: one whose token or CA was replaced is never listed again."""
        with self._lock:
            newest: dict[tuple[str, bool], tuple[float, Endpoint]] = {}
            for endpoint, (_, asked) in self._by_endpoint.items():
                place = (endpoint.address, endpoint.tls)
                if place not in newest or asked > newest[place][0]:
                    newest[place] = (asked, endpoint)
            return [e for _, e in newest.values() if self._by_endpoint[e][0].answering]

    def find(self, endpoint: Endpoint) -> Gateway | None:
        """The open gateway of `endpoint`, if any. Not a use: it may still close when idle."""
        with self._lock:
            found = self._by_endpoint.get(endpoint)
        return None if found is None else found[0]

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
