"""Render a typed spec into the two pipeline specs the operator wants in pachd.

Output is Pachyderm's pipeline-spec JSON vocabulary (camelCase), the same form
as upstream's spout.json / processor.json, so it can be read, diffed and sent
to pachd as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from spout_operator.names import MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, PipelineSpec
from spout_operator.spec import PipelineTemplate, SpoutPipelineSpec


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
    spout["spout"] = {}
    processor = _pipeline(spec.processor, spec.project, owner)
    processor["input"] = {
        "pfs": {"project": spec.project, "repo": spec.spout.name, "branch": "master", "glob": spec.glob}
    }
    return DesiredPair(spout=spout, processor=processor)


def _pipeline(template: PipelineTemplate, project: str, owner: str) -> PipelineSpec:
    rendered: PipelineSpec = {
        "pipeline": {"name": template.name, "project": {"name": project}},
        "transform": dict(template.transform),
        **{key: value for key, value in template.options.items() if key != "metadata"},
    }
    user_metadata = template.options.get("metadata", {})
    rendered["metadata"] = {
        "labels": {**user_metadata.get("labels", {}), MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {**user_metadata.get("annotations", {}), OWNER_ANNOTATION: owner},
    }
    return rendered
