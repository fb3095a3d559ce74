"""Writes to pachd only while this replica leads (leader election's fence).

A pass that began as the leader stops writing to pachd the moment the Lease is lost;
reads go through, so status can still say what pachd holds.
"""

from __future__ import annotations

from collections.abc import Callable

from spout_operator import metrics
from spout_operator.names import PipelineSpec
from spout_operator.observed import ObservedPipeline
from spout_operator.pachd_api import Pachd, PachdUnavailable, Snapshot


class Fenced:
    """A Pachd whose writes go through only while `leading()` says so."""

    def __init__(self, pachd: Pachd, leading: Callable[[], bool]) -> None:
        self._pachd, self._leading = pachd, leading

    def _fence(self) -> None:
        if not self._leading():
            metrics.WRITES_REFUSED.inc()
            raise PachdUnavailable("not the leader: this replica no longer holds the Lease")

    def canonical(self, spec: PipelineSpec) -> PipelineSpec:
        return self._pachd.canonical(spec)

    def inspect(self, name: str, project: str) -> ObservedPipeline | None:
        return self._pachd.inspect(name, project)

    def list_pipelines(self) -> list[ObservedPipeline]:
        return self._pachd.list_pipelines()

    def snapshot(self, not_before: float) -> Snapshot:
        return self._pachd.snapshot(not_before)

    def create(self, spec: PipelineSpec, update: bool) -> None:
        self._fence()
        self._pachd.create(spec, update)

    def ensure_project(self, project: str) -> None:
        self._fence()
        self._pachd.ensure_project(project)

    def start(self, name: str, project: str) -> None:
        self._fence()
        self._pachd.start(name, project)

    def stop(self, name: str, project: str) -> None:
        self._fence()
        self._pachd.stop(name, project)

    def delete(self, name: str, project: str) -> None:
        self._fence()
        self._pachd.delete(name, project)
