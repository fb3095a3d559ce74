"""What the operator needs from a pachd: the `Pachd` protocol, its errors and `Endpoint`.

Pure types. The gateway implements the protocol over gRPC, the fencing wrapper on top of
it, and tests with fakes; the reconciler and controller only ever see the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from spout_operator.names import PipelineKey, PipelineSpec
from spout_operator.observed import ObservedPipeline

DEFAULT_PORT = 30650

Snapshot = dict[PipelineKey, ObservedPipeline]  # every pipeline of one pachd, from one listing


class PachdError(Exception):
    """Base of the errors a pachd call raises."""


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


class Pachd(Protocol):
    """One pachd, as a pass reads and changes it. Every call is blocking and bounded by a
    deadline; failures raise PachdUnavailable (retry later) or PachdRejected (do not)."""

    def canonical(self, spec: PipelineSpec) -> PipelineSpec:
        """The spec as pachd stores and lists it, so a desired and an observed spec compare."""
        ...

    def inspect(self, name: str, project: str) -> ObservedPipeline | None: ...

    def list_pipelines(self) -> list[ObservedPipeline]: ...

    def snapshot(self, not_before: float) -> Snapshot:
        """Every pipeline from one listing shared by passes, started at or after `not_before`."""
        ...

    def create(self, spec: PipelineSpec, update: bool) -> None: ...

    def ensure_project(self, project: str) -> None:
        """Create the project unless pachd has it already."""
        ...

    def start(self, name: str, project: str) -> None: ...

    def stop(self, name: str, project: str) -> None: ...

    def delete(self, name: str, project: str) -> None: ...


class Pachds(Protocol):
    """Where a pass finds the Pachd of an endpoint (the gateway pool)."""

    def get(self, endpoint: Endpoint) -> Pachd: ...
