"""The typed form of a SpoutPipeline's spec.

The API server has already checked the structural schema; this module turns the
dict into frozen dataclasses, applies defaults, and catches what a schema cannot
(e.g. the two pipelines sharing one name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from spout_operator.names import CLUSTER_CONNECTION, NAMESPACED_CONNECTION

# Pipeline-spec fields a user may set on either pipeline, passed to pachd as written
# (camelCase, as in Pachyderm's pipeline JSON).
COMMON_PIPELINE_FIELDS = (
    "description",
    "resourceRequests",
    "resourceLimits",
    "sidecarResourceRequests",
    "sidecarResourceLimits",
    "podPatch",
    "metadata",
    "schedulingSpec",
    "tolerations",
)
PROCESSOR_ONLY_FIELDS = (
    "parallelismSpec",
    "autoscaling",
    "datumTries",
    "datumTimeout",
    "jobTimeout",
    "datumSetSpec",
    "reprocessSpec",
    "egress",
    "s3Out",
)
# The spout's `service` goes inside pachd's `spout` field (`spout: {service: ...}`), never at the
# top level, where pachd reads `service` as a service pipeline.
SPOUT_ONLY_FIELDS = ("service",)
# Fields holding a Go duration ("30s", "1h2m"), as pachctl reads them.
DURATION_FIELDS = ("datumTimeout", "jobTimeout")

DEFAULT_GLOB = "/*"
DEFAULT_PROJECT = "default"
DEFAULT_CONNECTION = "default"

E = TypeVar("E", bound="StrEnum")


class SpecError(ValueError):
    """The spec is structurally valid but cannot be rendered into pipelines."""


class RunState(StrEnum):
    RUNNING = "Running"
    STOPPED = "Stopped"


class DeletionPolicy(StrEnum):
    DELETE = "Delete"
    ORPHAN = "Orphan"


@dataclass(frozen=True)
class ConnectionRef:
    """Which admin-owned connection reaches the pachd holding the pipelines.

    Only a name: the address and token live in the connection, never in a SpoutPipeline.
    A PachdConnection is looked up in the resource's own namespace."""

    kind: str = CLUSTER_CONNECTION
    name: str = DEFAULT_CONNECTION

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class PipelineTemplate:
    """One pipeline as the user wrote it: its name, transform and the optional knobs."""

    name: str
    transform: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)


MAX_BACKOFF_S = 3600.0


@dataclass(frozen=True)
class AutoRestart:
    """spec.autoRestart, with its defaults (autorestart.py decides when)."""

    after_s: float = 120.0  # failing this long before the first restart
    max_restarts: int = 5
    backoff_s: float = 60.0  # before the second restart; doubled for each one after

    def wait_after(self, restarts: int) -> float:
        """How long after restart number `restarts` (1-based) the next one may come."""
        return min(self.backoff_s * 2.0 ** max(0, restarts - 1), MAX_BACKOFF_S)


@dataclass(frozen=True)
class SpoutPipelineSpec:
    connection: ConnectionRef
    project: str
    state: RunState
    deletion_policy: DeletionPolicy
    spout: PipelineTemplate
    processor: PipelineTemplate
    glob: str
    auto_restart: AutoRestart | None = None  # None: never restarted automatically

    @property
    def running(self) -> bool:
        return self.state is RunState.RUNNING


def parse(spec: Mapping[str, Any], resource_name: str) -> SpoutPipelineSpec:
    """Turn a SpoutPipeline `.spec` into a typed spec with defaults filled in."""
    spout_raw = _mapping(spec, "spout", required=True)
    processor_raw = _mapping(spec, "processor", required=True)
    spout = _template(
        spout_raw, "spout", default_name=resource_name, allowed=COMMON_PIPELINE_FIELDS + SPOUT_ONLY_FIELDS
    )
    processor = _template(
        processor_raw,
        "processor",
        default_name=f"{resource_name}-processor",
        allowed=COMMON_PIPELINE_FIELDS + PROCESSOR_ONLY_FIELDS,
    )
    if spout.name == processor.name:
        raise SpecError(f"spout and processor must have different names, both are {spout.name!r}")
    glob = str(processor_raw.get("glob") or DEFAULT_GLOB)
    if not glob.startswith("/"):
        raise SpecError(f"processor.glob must start with '/', got {glob!r}")
    return SpoutPipelineSpec(
        connection=connection_ref(_mapping(spec, "connectionRef")),
        project=str(spec.get("project") or DEFAULT_PROJECT),
        state=_enum(RunState, spec.get("state"), RunState.RUNNING, "state"),
        deletion_policy=_enum(
            DeletionPolicy, spec.get("deletionPolicy"), DeletionPolicy.DELETE, "deletionPolicy"
        ),
        spout=spout,
        processor=processor,
        glob=glob,
        auto_restart=_auto_restart(_mapping(spec, "autoRestart")),
    )


def _auto_restart(raw: Mapping[str, Any]) -> AutoRestart | None:
    if not raw.get("enabled"):
        return None
    defaults = AutoRestart()
    try:
        policy = AutoRestart(
            after_s=float(raw.get("afterSeconds", defaults.after_s)),
            max_restarts=int(raw.get("maxRestarts", defaults.max_restarts)),
            backoff_s=float(raw.get("backoffSeconds", defaults.backoff_s)),
        )
    except (TypeError, ValueError):
        raise SpecError("autoRestart: afterSeconds, maxRestarts and backoffSeconds must be numbers") from None
    if policy.after_s < 0 or policy.backoff_s < 0 or policy.max_restarts < 1:
        raise SpecError("autoRestart: seconds must be >= 0 and maxRestarts >= 1")
    return policy


def _mapping(parent: Mapping[str, Any], key: str, required: bool = False) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        if required:
            raise SpecError(f"{key} is required")
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{key} must be an object, got {type(value).__name__}")
    return value


def _template(
    raw: Mapping[str, Any], where: str, default_name: str, allowed: tuple[str, ...]
) -> PipelineTemplate:
    transform = _mapping(raw, "transform", required=True)
    if not transform.get("image"):
        raise SpecError(f"{where}.transform.image is required")
    if not transform.get("cmd"):
        raise SpecError(f"{where}.transform.cmd is required")
    options = {key: raw[key] for key in allowed if raw.get(key) not in (None, "", {}, [])}
    for key in DURATION_FIELDS:
        if key in options:
            duration_seconds(options[key], f"{where}.{key}")  # refused here, not by pachd later
    return PipelineTemplate(name=str(raw.get("name") or default_name), transform=transform, options=options)


# Go's time.ParseDuration, without a sign (a negative timeout means nothing): one or more
# <number><unit>, units ns, us (or µs), ms, s, m, h. "0" alone is Go's zero.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+|0")
_UNIT_SECONDS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "μs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
# google.protobuf.Duration's range, in seconds.
_MAX_DURATION_SECONDS = Decimal(315_576_000_000)


def duration_seconds(value: Any, where: str) -> Decimal:
    """A Go duration ("30s", "1h2m", "1.5h", "250ms") as exact seconds, the way pachctl reads
    datumTimeout/jobTimeout from a pipeline spec."""
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise SpecError(f'{where} must be a duration such as "30s", "10m" or "1h30m", got {value!r}')
    total = sum(
        (Decimal(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value)),
        Decimal(0),
    )
    if total > _MAX_DURATION_SECONDS:
        raise SpecError(f"{where} is longer than a protobuf Duration can hold, got {value!r}")
    return total.quantize(Decimal("1e-9"))


def connection_ref(raw: Mapping[str, Any]) -> ConnectionRef:
    kind = str(raw.get("kind") or CLUSTER_CONNECTION)
    if kind not in (CLUSTER_CONNECTION, NAMESPACED_CONNECTION):
        raise SpecError(
            f"connectionRef.kind must be {CLUSTER_CONNECTION} or {NAMESPACED_CONNECTION}, got {kind!r}"
        )
    return ConnectionRef(kind=kind, name=str(raw.get("name") or DEFAULT_CONNECTION))


def _enum(kind: type[E], value: Any, default: E, where: str) -> E:
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise SpecError(f"{where} must be one of {allowed}, got {value!r}") from None
