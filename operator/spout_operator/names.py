"""Names every layer shares: the API group and its kinds, pipeline keys, pass triggers.

The bottom of the package: it imports nothing of ours, so any module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

GROUP = "spout-operator.dev"
VERSION = "v1alpha1"
PLURAL = "spoutpipelines"
NAMESPACED_PLURAL = "pachdconnections"
CLUSTER_PLURAL = "clusterpachdconnections"
CLUSTER_CONNECTION = "ClusterPachdConnection"
NAMESPACED_CONNECTION = "PachdConnection"
CONNECTION_KINDS = {NAMESPACED_PLURAL: NAMESPACED_CONNECTION, CLUSTER_PLURAL: CLUSTER_CONNECTION}

OWNER_ANNOTATION = f"{GROUP}/owner"
# A SpoutPipeline's operating handles (operating.py): pause, reconcile now, restart now.
PAUSED_ANNOTATION = f"{GROUP}/paused"
RECONCILE_ANNOTATION = f"{GROUP}/reconcile-requested-at"
RESTART_ANNOTATIONS = {"spout": f"{GROUP}/restart-spout", "processor": f"{GROUP}/restart-processor"}
HANDLE_ANNOTATIONS = (PAUSED_ANNOTATION, RECONCILE_ANNOTATION, *RESTART_ANNOTATIONS.values())
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "spout-operator"

PipelineKey = tuple[str, str]  # (project, pipeline name): how pachd names a pipeline
PipelineSpec = dict[str, Any]  # Pachyderm's pipeline-spec JSON (camelCase)

# Why a pass runs: a spec change, a poll while pachd starts pipelines, the periodic sweep,
# or an event that says the pipelines changed.
Trigger = Literal["change", "poll", "drift", "event"]
REPAIRS: frozenset[Trigger] = frozenset({"drift", "event"})  # passes not caused by a spec change

# The labels pachd 2.6 puts on every pipeline's worker RC, and on its pods.
WORKER_RC_SELECTOR = "app=pipeline,suite=pachyderm"
WORKER_POD_SELECTOR = "app=pipeline,suite=pachyderm,component=worker"


def owner_id(namespace: str, name: str) -> str:
    """The mark stored on each pipeline naming the resource that manages it."""
    return f"{namespace}/{name}"


def worker_pipeline(obj: Mapping[str, Any]) -> PipelineKey | None:
    """The pipeline a worker RC or pod of pachd's belongs to, from its labels."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name = labels.get("pipelineName")
    return None if not name else (labels.get("pipelineProject") or "default", name)
