"""A SpoutPipeline as one pass sees it: the compact copy the sweep indexes and passes read."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spout_operator.names import HANDLE_ANNOTATIONS, owner_id


@dataclass(frozen=True)
class Resource:
    """A copy: kopf updates the body it hands to handlers while a pass may still run, and
    one pass must judge by one spec."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    deleting: bool = False
    deleted_at: str = ""  # metadata.deletionTimestamp
    handles: Mapping[str, str] = field(default_factory=dict)  # the operating annotations only

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Resource:
        meta = body.get("metadata", {})
        return cls(
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            uid=str(meta.get("uid")),
            generation=int(meta.get("generation") or 0),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=copy.deepcopy(dict(body.get("status") or {})),
            deleting=bool(meta.get("deletionTimestamp")),
            deleted_at=str(meta.get("deletionTimestamp") or ""),
            handles={
                k: str(v) for k, v in (meta.get("annotations") or {}).items() if k in HANDLE_ANNOTATIONS
            },
        )

    @property
    def owner(self) -> str:
        return owner_id(self.namespace, self.name)
