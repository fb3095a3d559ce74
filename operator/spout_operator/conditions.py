"""Kubernetes conditions (metav1.Condition) as the operator writes them on its objects (pure).

Every condition carries the generation it describes, so a reader never takes an old
generation's Ready=True for the new one's, and its transition time only moves when its
status does.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def now() -> str:
    """The clock conditions are stamped with (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str


def render_conditions(
    conditions: list[Condition], previous: list[Mapping[str, Any]] | None, now: str, generation: int
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous or []}
    rendered = []
    for condition in conditions:
        status = {True: "True", False: "False", None: "Unknown"}[condition.status]
        old = before.get(condition.type, {})
        rendered.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": old.get("lastTransitionTime", now)
                if old.get("status") == status and old.get("lastTransitionTime")
                else now,
                "observedGeneration": generation,
            }
        )
    return rendered
