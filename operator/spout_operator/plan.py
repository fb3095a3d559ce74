"""Decide what to do with one pipeline: desired spec against what pachd holds.

Pure. pachd bumps a pipeline's version and restarts its workers on every
update, identical or not, so the plan asks for an update only when a field the
operator manages differs after pachd's own defaults are applied to the desired
side.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from spout_operator.names import PipelineSpec
from spout_operator.observed import ObservedPipeline
from spout_operator.render import owner_of, pipeline_name

# The top-level pipeline-spec fields the operator renders; everything else that pachd
# stores (salt, createdAt, outputBranch, workerRc, ...) is pachd's business.
MANAGED_FIELDS = (
    "pipeline",
    "description",
    "transform",
    "spout",
    "input",
    "parallelismSpec",
    "autoscaling",
    "resourceRequests",
    "resourceLimits",
    "datumTries",
    "podPatch",
    "metadata",
    "sidecarResourceRequests",
    "sidecarResourceLimits",
    "schedulingSpec",
    "tolerations",
    "datumTimeout",
    "jobTimeout",
    "datumSetSpec",
    "reprocessSpec",
    "egress",
    "s3Out",
)

# Mirrors setPipelineDefaults / setInputDefaults in pachd's PPS API server.
DEFAULT_USER_IMAGE = "ubuntu:20.04"
DEFAULT_DATUM_TRIES = 3
DEFAULT_REPROCESS_SPEC = "until_success"
DEFAULT_SPOUT_SERVICE_TYPE = "NodePort"


class Step(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    START = "start"
    STOP = "stop"


@dataclass(frozen=True)
class PipelinePlan:
    name: str
    steps: tuple[Step, ...] = ()
    changed_fields: tuple[str, ...] = ()
    foreign_owner: str | None = None  # the pipeline exists but another owner's mark is on it

    @property
    def foreign(self) -> bool:
        return self.foreign_owner is not None


def with_pachd_defaults(spec: PipelineSpec) -> PipelineSpec:
    """The spec as pachd will store it, for the fields the operator manages."""
    result = copy.deepcopy(spec)
    transform = result.setdefault("transform", {})
    if not transform.get("image"):
        transform["image"] = DEFAULT_USER_IMAGE
    if not result.get("datumTries"):
        result["datumTries"] = DEFAULT_DATUM_TRIES
    if not result.get("reprocessSpec"):
        result["reprocessSpec"] = DEFAULT_REPROCESS_SPEC
    service = (result.get("spout") or {}).get("service")
    if service is not None and not service.get("type"):
        service["type"] = DEFAULT_SPOUT_SERVICE_TYPE
    pfs = result.get("input", {}).get("pfs")
    if pfs is not None:
        pfs.setdefault("branch", "master")
        pfs.setdefault("name", pfs["repo"])
        pfs.setdefault("repoType", "user")
        if pfs.get("glob"):
            pfs["glob"] = _clean_path(pfs["glob"])
    return result


def _clean_path(path: str) -> str:
    # pachd's pfsfile.CleanPath: rooted, no trailing slash, no "." or ".." segments.
    return posixpath.normpath("/" + path.lstrip("/"))


def changed_fields(desired: PipelineSpec, stored: PipelineSpec) -> tuple[str, ...]:
    """Managed fields whose stored value differs from the desired one (both canonical)."""
    return tuple(f for f in MANAGED_FIELDS if _present(desired.get(f)) != _present(stored.get(f)))


def _present(value: Any) -> Any:
    return None if value in (None, {}, [], "") else value


def plan_pipeline(
    desired: PipelineSpec, observed: ObservedPipeline | None, running: bool, owner: str
) -> PipelinePlan:
    name = pipeline_name(desired)
    if observed is None:
        return PipelinePlan(name, (Step.CREATE,) if running else (Step.CREATE, Step.STOP))
    stored_owner = owner_of(observed.spec)
    if stored_owner != owner:
        return PipelinePlan(name, foreign_owner=stored_owner or "(no owner mark)")
    steps: list[Step] = []
    changed = changed_fields(desired, observed.spec)
    if changed:
        steps.append(Step.UPDATE)
    if running and observed.stopped:
        steps.append(Step.START)
    elif not running and (changed or not observed.stopped):
        # An update may restart a stopped pipeline; stopping again is a no-op otherwise.
        steps.append(Step.STOP)
    return PipelinePlan(name, tuple(steps), changed)
