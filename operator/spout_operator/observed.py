"""What pachd reports about one pipeline, in the operator's own terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ObservedPipeline:
    name: str
    version: int
    state: str  # pachd's PipelineState without the prefix: RUNNING, PAUSED, FAILURE, ...
    stopped: bool
    spec: dict[str, Any] = field(default_factory=dict)  # canonical pipeline-spec JSON
    recent_error: str = ""
    reason: str = ""
    project: str = "default"
    spec_commit: str = ""  # the commit of its spec repo that holds this version's spec
