"""Render a typed spec into the two pipeline specs the operator wants in pachd.

Output is Pachyderm's pipeline-spec JSON vocabulary (camelCase), the same form
as upstream's spout.json / processor.json, so it can be read, diffed and sent
to pachd as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from spout_operator.names import MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, PipelineSpec
from spout_operator.spec import (
    DURATION_FIELDS,
    SPOUT_ONLY_FIELDS,
    PipelineTemplate,
    SpoutPipelineSpec,
    duration_seconds,
)


@dataclass(frozen=True)
class DesiredPair:
    spout: PipelineSpec
    processor: PipelineSpec

    def in_creation_order(self) -> tuple[PipelineSpec, PipelineSpec]:
        """The processor reads the spout's output repo, so the spout must exist first."""
        return (self.spout, self.processor)

    def in_deletion_order(self) -> tuple[PipelineSpec, PipelineSpec]:
        return (self.processor, self.spout)


def pipeline_name(spec: PipelineSpec) -> str:
    return str(spec["pipeline"]["name"])


def owner_of(spec: PipelineSpec) -> str | None:
    annotations = spec.get("metadata", {}).get("annotations", {})
    owner = annotations.get(OWNER_ANNOTATION)
    return str(owner) if owner is not None else None


def render(spec: SpoutPipelineSpec, owner: str) -> DesiredPair:
    spout = _pipeline(spec.spout, spec.project, owner)
    # pachd 2.6 (pps.proto CreatePipelineRequest.spout): the port a spout listens on is
    # `spout.service`, exposed by pachd through a Kubernetes Service.
    service = spec.spout.options.get("service")
    spout["spout"] = {"service": dict(service)} if service else {}
    processor = _pipeline(spec.processor, spec.project, owner)
    processor["input"] = {
        "pfs": {"project": spec.project, "repo": spec.spout.name, "branch": "master", "glob": spec.glob}
    }
    return DesiredPair(spout=spout, processor=processor)


def _pipeline(template: PipelineTemplate, project: str, owner: str) -> PipelineSpec:
    rendered: PipelineSpec = {
        "pipeline": {"name": template.name, "project": {"name": project}},
        "transform": dict(template.transform),
        **{
            key: value
            for key, value in template.options.items()
            if key != "metadata" and key not in SPOUT_ONLY_FIELDS
        },
    }
    for key in DURATION_FIELDS:
        if key in rendered:
            rendered[key] = protobuf_duration(duration_seconds(rendered[key], key))
    user_metadata = template.options.get("metadata", {})
    rendered["metadata"] = {
        "labels": {**user_metadata.get("labels", {}), MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {**user_metadata.get("annotations", {}), OWNER_ANNOTATION: owner},
    }
    return rendered


def protobuf_duration(seconds: Decimal) -> str:
    """A google.protobuf.Duration in its JSON form ("3720s", "0.25s"): what python-pachyderm's
    parser takes (it refuses Go's "1h2m", which pachctl accepts) and what pachd's stored spec
    reads back as."""
    text = format(seconds.quantize(Decimal("1e-9")), "f").rstrip("0").rstrip(".")
    return f"{text}s"


def worker_rc_name(project: str, pipeline: str, version: int) -> str:
    """The name pachd 2.6 gives a pipeline version's ReplicationController (ppsutil.PipelineRcName):
    `<project>-<pipeline>-v<version>`, lowercased, `_` turned into `-`."""
    return f"{project.replace('_', '-').lower()}-{pipeline.replace('_', '-').lower()}-v{version}"


def push_address(spec: SpoutPipelineSpec, pachd_namespace: str, spout_version: int | None) -> str | None:
    """Where producers push into a spout with `spout.service`: `<service>.<namespace>.svc:<port>`,
    or None without a service (or before pachd has a version of the spout).

    pachd 2.6 (createWorkerSvcAndRc) makes the Service `<rc name>-user` in its namespace, port
    externalPort -> targetPort internalPort (also the nodePort for NodePort). The name carries
    the spout's version, so the address changes with every update of the spout."""
    service = spec.spout.options.get("service")
    if not service or spout_version is None:
        return None
    name = worker_rc_name(spec.project, spec.spout.name, spout_version) + "-user"
    return f"{name}.{pachd_namespace}.svc:{int(service['externalPort'])}"
