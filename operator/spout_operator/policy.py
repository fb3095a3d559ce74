"""What SpoutPipelines that use a connection may declare: the connection's `spec.policy`.

pachd creates worker pods in its own namespace with its own (admin) token, so anything a
SpoutPipeline declares is done with pachd's rights, not its author's. Without a check, anyone
who may edit a namespace could mount any Secret of pachd's namespace, patch the worker pod
onto the host, run as root, use any registry, ask for any resources and write into another
namespace's pachd project. The admin who owns a connection says here what its tenants may
ask for; the operator refuses the rest before anything is sent to pachd.

Safe defaults: a connection that says nothing about a dangerous capability (Secrets of pachd's
namespace, pod patches, root, GPUs, a project not named after the namespace, a spout Service
reachable from outside the cluster, node selection, priority classes, tolerations, egress,
s3Out) does not grant it. Images and cpu/memory ceilings stay open when unset (they cost, they
do not escalate); a spout Service of type ClusterIP is allowed.

Pure: no I/O, only the standard library and the typed spec.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, DecimalException
from enum import StrEnum
from typing import Any, TypeVar

from spout_operator.spec import DEFAULT_PROJECT, PipelineTemplate, SpoutPipelineSpec

E = TypeVar("E", bound=StrEnum)


class PolicyError(ValueError):
    """A connection's spec.policy cannot be understood (the connection is unusable)."""


@dataclass(frozen=True)
class Violation:
    """One thing a SpoutPipeline declares that its connection's policy does not allow.

    `rule`: the policy field that refuses it (policy.images, policy.podPatch.capabilities, ...);
    `field`: where in the SpoutPipeline's spec (spout.transform.image, processor.podPatch[1]);
    `message`: what is wrong, after the field."""

    rule: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.field} {self.message}"


# --- Quantities ---------------------------------------------------------------------------------

# Kubernetes quantity grammar: a decimal number, then an exponent (e3) or one suffix. An
# exponent is tried before the suffix "E" (exa), as resource.ParseQuantity does: "1e3" is 1000,
# "1E" is 10**18.
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)
_SUFFIXES: dict[str | None, Decimal] = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{binary: Decimal(1024**power) for power, binary in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
}


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ("500m", "2Gi", "1G", "1e3", 0.5) as an exact Decimal.

    Numbers are read through their decimal text, so 0.1 is exactly 1/10, not its float."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"not a quantity: {value!r}")
    text = str(value) if isinstance(value, str) else repr(value)
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    try:
        number = Decimal(match["number"])
        if match["exponent"] is not None:
            scaled: Decimal = number.scaleb(int(match["exponent"]))
            return scaled
        return number * _SUFFIXES[match["suffix"]]
    except (DecimalException, ValueError):  # an absurd exponent overflows
        raise ValueError(f"not a quantity: {value!r}") from None


@dataclass(frozen=True)
class Quantity:
    """A ceiling as the admin wrote it (for messages) and its value (for comparisons)."""

    text: str
    value: Decimal

    def __str__(self) -> str:
        return self.text


# --- The policy ---------------------------------------------------------------------------------


class ProjectMode(StrEnum):
    PER_NAMESPACE = "PerNamespace"  # only the project named after the namespace
    SHARED = "Shared"  # that one, and the projects listed in projects.names


class ServiceType(StrEnum):
    """Kubernetes Service types pachd 2.6 makes for spout.service."""

    CLUSTER_IP = "ClusterIP"  # inside the cluster only
    NODE_PORT = "NodePort"  # a port on every node: reachable from wherever the nodes are
    LOAD_BALANCER = "LoadBalancer"  # a cloud load balancer, often a public address (and a bill)


# What a connection that says nothing about services grants: inside the cluster only.
DEFAULT_SERVICE_TYPES = frozenset({ServiceType.CLUSTER_IP})
# pachd's default for a spout.service without a type (setPipelineDefaults).
PACHD_DEFAULT_SERVICE_TYPE = ServiceType.NODE_PORT
ANY = "*"


class PodCapability(StrEnum):
    """Pod-spec changes a podPatch never makes unless the policy names them.

    Each reaches past what a tenant could do in their own namespace: the node, other pods'
    processes, pachd's service account, or root."""

    HOST_NETWORK = "HostNetwork"  # hostNetwork, or a hostPort on the node's address
    HOST_PID = "HostPID"
    HOST_IPC = "HostIPC"
    HOST_PATH = "HostPath"  # a volume from the node's filesystem
    PRIVILEGED = "Privileged"  # privileged, procMount Unmasked, Windows hostProcess
    ALLOW_PRIVILEGE_ESCALATION = "AllowPrivilegeEscalation"
    CAPABILITIES = "Capabilities"  # securityContext.capabilities.add
    SERVICE_ACCOUNT = "ServiceAccount"  # another (or the default) service account, token automount
    RUN_AS_ROOT = "RunAsRoot"  # runAsUser/runAsGroup 0, runAsNonRoot false
    SECURITY_CONTEXT = "SecurityContext"  # removing pachd's securityContext, Unconfined profiles, SELinux
    VOLUMES = "Volumes"  # volume sources beyond emptyDir/configMap/secret/downwardAPI/projected


@dataclass(frozen=True)
class ImageRule:
    allowed: tuple[str, ...] | None = None  # None: any image
    require_digest: bool = False

    def matches(self, reference: str) -> bool:
        return self.allowed is None or any(_image_pattern(p).fullmatch(reference) for p in self.allowed)


@dataclass(frozen=True)
class PodPatchRule:
    allowed: bool = False
    paths: tuple[str, ...] | None = None  # JSON Pointer prefixes, "*" one segment; None: any path
    capabilities: frozenset[PodCapability] = frozenset()


@dataclass(frozen=True)
class Ceilings:
    """Per-worker ceilings for one of resourceRequests/resourceLimits. None: no ceiling,
    except gpu: a connection that names no GPU ceiling grants none."""

    cpu: Quantity | None = None
    memory: Quantity | None = None
    disk: Quantity | None = None
    gpu: int = 0

    def of(self, kind: str) -> Quantity | None:
        """The ceiling for cpu, memory or disk, or the GPU count as a Quantity."""
        if kind == "gpu":
            return Quantity(str(self.gpu), Decimal(self.gpu))
        ceiling: Quantity | None = getattr(self, kind)
        return ceiling


@dataclass(frozen=True)
class ResourceRule:
    requests: Ceilings = field(default_factory=Ceilings)
    limits: Ceilings = field(default_factory=Ceilings)
    max_parallelism: int | None = None
    gpu_types: tuple[str, ...] | None = None  # None: any GPU resource name (within the counts)


@dataclass(frozen=True)
class ProjectRule:
    mode: ProjectMode = ProjectMode.PER_NAMESPACE
    names: tuple[str, ...] = ()  # Shared only: projects every namespace of the connection may use
    allow_default: bool = False  # pachd's `default` project, e.g. for a sandbox


@dataclass(frozen=True)
class SchedulingRule:
    """Where worker pods may be placed. Each is refused unless listed: a nodeSelector picks
    nodes (ones kept for other teams by label), a priority class can preempt other pods, a
    toleration lets a pod onto tainted (dedicated, GPU) nodes."""

    node_selector: tuple[tuple[str, tuple[str, ...]], ...] = ()  # key -> allowed values ("*": any)
    priority_class_names: tuple[str, ...] = ()
    toleration_keys: tuple[str, ...] = ()  # "*": any key, and a toleration without a key

    def node_selector_values(self, key: str) -> tuple[str, ...] | None:
        return dict(self.node_selector).get(key)


@dataclass(frozen=True)
class EgressRule:
    allowed: bool = False
    urls: tuple[str, ...] | None = None  # patterns, "*" any characters; None: any URL


@dataclass(frozen=True)
class Policy:
    """A connection's spec.policy; Policy() is what a connection without one grants."""

    images: ImageRule = field(default_factory=ImageRule)
    secrets: frozenset[str] = frozenset()  # Secrets of pachd's namespace transform.secrets may name
    image_pull_secrets: frozenset[str] = frozenset()
    pod_patch: PodPatchRule = field(default_factory=PodPatchRule)
    allow_root: bool = False
    resources: ResourceRule = field(default_factory=ResourceRule)
    projects: ProjectRule = field(default_factory=ProjectRule)
    service_types: frozenset[ServiceType] = DEFAULT_SERVICE_TYPES
    scheduling: SchedulingRule = field(default_factory=SchedulingRule)
    egress: EgressRule = field(default_factory=EgressRule)
    s3_out: bool = False


# The keys each level of spec.policy may hold. Unknown keys are refused rather than ignored:
# a misspelt restriction (`image:` for `images:`) must not silently leave everything open.
POLICY_KEYS = frozenset(
    {
        "images",
        "secrets",
        "imagePullSecrets",
        "podPatch",
        "user",
        "resources",
        "projects",
        "services",
        "scheduling",
        "egress",
        "s3Out",
    }
)
SERVICES_KEYS = frozenset({"types"})
SCHEDULING_KEYS = frozenset({"nodeSelector", "priorityClassNames", "tolerationKeys"})
EGRESS_KEYS = frozenset({"allowed", "urls"})
S3_OUT_KEYS = frozenset({"allowed"})
IMAGES_KEYS = frozenset({"allowed", "requireDigest"})
POD_PATCH_KEYS = frozenset({"allowed", "paths", "capabilities"})
USER_KEYS = frozenset({"allowRoot"})
RESOURCES_KEYS = frozenset({"requests", "limits", "maxParallelism", "gpuTypes"})
CEILING_KEYS = frozenset({"cpu", "memory", "disk", "gpu"})
PROJECTS_KEYS = frozenset({"mode", "names", "allowDefault"})
_PROJECT_NAME = re.compile(r"[a-zA-Z0-9_-]+")


def parse_policy(raw: Any, where: str) -> Policy:
    """The typed form of a connection's spec.policy (None or absent: the safe defaults).

    `where` names the connection in errors, e.g. "ClusterPachdConnection shared"."""
    body = _object(raw, f"{where}: policy", POLICY_KEYS)
    images = _object(body.get("images"), f"{where}: policy.images", IMAGES_KEYS)
    patch = _object(body.get("podPatch"), f"{where}: policy.podPatch", POD_PATCH_KEYS)
    user = _object(body.get("user"), f"{where}: policy.user", USER_KEYS)
    return Policy(
        images=ImageRule(
            allowed=_patterns(images.get("allowed"), f"{where}: policy.images.allowed"),
            require_digest=_bool(images.get("requireDigest"), f"{where}: policy.images.requireDigest"),
        ),
        secrets=frozenset(_names(body.get("secrets"), f"{where}: policy.secrets")),
        image_pull_secrets=frozenset(
            _names(body.get("imagePullSecrets"), f"{where}: policy.imagePullSecrets")
        ),
        pod_patch=PodPatchRule(
            allowed=_bool(patch.get("allowed"), f"{where}: policy.podPatch.allowed"),
            paths=_pointer_patterns(patch.get("paths"), f"{where}: policy.podPatch.paths"),
            capabilities=frozenset(
                _enum(PodCapability, c, f"{where}: policy.podPatch.capabilities")
                for c in _names(patch.get("capabilities"), f"{where}: policy.podPatch.capabilities")
            ),
        ),
        allow_root=_bool(user.get("allowRoot"), f"{where}: policy.user.allowRoot"),
        resources=_resources(body.get("resources"), f"{where}: policy.resources"),
        projects=_projects(body.get("projects"), f"{where}: policy.projects"),
        service_types=_service_types(body.get("services"), f"{where}: policy.services"),
        scheduling=_scheduling(body.get("scheduling"), f"{where}: policy.scheduling"),
        egress=_egress(body.get("egress"), f"{where}: policy.egress"),
        s3_out=_bool(
            _object(body.get("s3Out"), f"{where}: policy.s3Out", S3_OUT_KEYS).get("allowed"),
            f"{where}: policy.s3Out.allowed",
        ),
    )


def _service_types(raw: Any, where: str) -> frozenset[ServiceType]:
    """Unset: ClusterIP only. An empty list: no spout Service at all."""
    body = _object(raw, where, SERVICES_KEYS)
    if body.get("types") is None:
        return DEFAULT_SERVICE_TYPES
    return frozenset(_enum(ServiceType, t, f"{where}.types") for t in _names(body["types"], f"{where}.types"))


def _scheduling(raw: Any, where: str) -> SchedulingRule:
    body = _object(raw, where, SCHEDULING_KEYS)
    selector = body.get("nodeSelector")
    if selector is None:
        selector = {}
    if not isinstance(selector, Mapping):
        raise PolicyError(f"{where}.nodeSelector must map label keys to lists of values, got {selector!r}")
    pairs = []
    for key, values in sorted(selector.items()):
        allowed = _names(values, f"{where}.nodeSelector.{key}")
        if not allowed:
            raise PolicyError(f'{where}.nodeSelector.{key} is empty: list values, or ["*"] for any value')
        pairs.append((str(key), allowed))
    return SchedulingRule(
        node_selector=tuple(pairs),
        priority_class_names=_names(body.get("priorityClassNames"), f"{where}.priorityClassNames"),
        toleration_keys=_names(body.get("tolerationKeys"), f"{where}.tolerationKeys"),
    )


def _egress(raw: Any, where: str) -> EgressRule:
    body = _object(raw, where, EGRESS_KEYS)
    urls = body.get("urls")
    patterns = None if urls is None else _names(urls, f"{where}.urls")
    if patterns == ():
        raise PolicyError(f"{where}.urls is empty: list at least one pattern, or omit it to allow any URL")
    return EgressRule(allowed=_bool(body.get("allowed"), f"{where}.allowed"), urls=patterns)


def _object(raw: Any, where: str, keys: frozenset[str]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where} must be an object, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in keys)
    if unknown:
        raise PolicyError(
            f"{where} has unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(keys))})"
        )
    return raw


def _bool(raw: Any, where: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise PolicyError(f"{where} must be true or false, got {raw!r}")
    return raw


def _names(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise PolicyError(f"{where} must be a list of non-empty strings, got {raw!r}")
    return tuple(raw)


def _patterns(raw: Any, where: str) -> tuple[str, ...] | None:
    """Image patterns; unset means any image, and an empty list is refused rather than read
    as either "none" or "any"."""
    if raw is None:
        return None
    patterns = _names(raw, where)
    if not patterns:
        raise PolicyError(f"{where} is empty: list at least one pattern, or omit it to allow any image")
    # Patterns match fully qualified references; "busybox:*" or "team/*" would never match
    # (docker.io/library/busybox:1), so the admin is told rather than left wondering.
    for pattern in patterns:
        if not _names_registry(pattern):
            raise PolicyError(
                f"{where}: {pattern!r} names no registry; patterns match the fully qualified reference "
                "(e.g. docker.io/library/busybox:*, registry.example.com/team/*)"
            )
    return patterns


def _names_registry(pattern: str) -> bool:
    """Whether an image pattern starts with a registry host (or a wildcard standing for one)."""
    if pattern == "*":
        return True
    host, slash, _ = pattern.partition("/")
    return bool(slash) and (host == "localhost" or any(c in host for c in ".:*"))


def _pointer_patterns(raw: Any, where: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    patterns = _names(raw, where)
    bad = [p for p in patterns if not p.startswith("/")]
    if bad or not patterns:
        raise PolicyError(f"{where} must list JSON Pointers starting with '/', got {raw!r}")
    return patterns


def _int(raw: Any, where: str, default: int | None) -> int | None:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise PolicyError(f"{where} must be a non-negative integer, got {raw!r}")
    return raw


def _quantity(raw: Any, where: str) -> Quantity | None:
    if raw is None:
        return None
    try:
        value = parse_quantity(raw)
    except ValueError:
        raise PolicyError(f"{where} is not a Kubernetes quantity: {raw!r}") from None
    if value < 0:
        raise PolicyError(f"{where} must not be negative, got {raw!r}")
    return Quantity(str(raw), value)


def _ceilings(raw: Any, where: str) -> Ceilings:
    body = _object(raw, where, CEILING_KEYS)
    return Ceilings(
        cpu=_quantity(body.get("cpu"), f"{where}.cpu"),
        memory=_quantity(body.get("memory"), f"{where}.memory"),
        disk=_quantity(body.get("disk"), f"{where}.disk"),
        gpu=_int(body.get("gpu"), f"{where}.gpu", 0) or 0,
    )


def _resources(raw: Any, where: str) -> ResourceRule:
    body = _object(raw, where, RESOURCES_KEYS)
    gpu_types = body.get("gpuTypes")
    return ResourceRule(
        requests=_ceilings(body.get("requests"), f"{where}.requests"),
        limits=_ceilings(body.get("limits"), f"{where}.limits"),
        max_parallelism=_int(body.get("maxParallelism"), f"{where}.maxParallelism", None),
        gpu_types=None if gpu_types is None else _names(gpu_types, f"{where}.gpuTypes"),
    )


def _projects(raw: Any, where: str) -> ProjectRule:
    body = _object(raw, where, PROJECTS_KEYS)
    mode = _enum(ProjectMode, body.get("mode") or ProjectMode.PER_NAMESPACE.value, f"{where}.mode")
    names = _names(body.get("names"), f"{where}.names")
    bad = [n for n in names if not _PROJECT_NAME.fullmatch(n)]
    if bad:
        raise PolicyError(f"{where}.names: not pachd project names: {', '.join(bad)}")
    # Listing names under PerNamespace would read as a grant that does nothing; say so.
    if names and mode is not ProjectMode.SHARED:
        raise PolicyError(f"{where}.names is only read with mode {ProjectMode.SHARED}; set mode: Shared")
    return ProjectRule(
        mode=mode, names=names, allow_default=_bool(body.get("allowDefault"), f"{where}.allowDefault")
    )


def _enum(kind: type[E], raw: Any, where: str) -> E:
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise PolicyError(f"{where}: {raw!r} is not one of {allowed}") from None


# --- Projects -----------------------------------------------------------------------------------


def allowed_projects(policy: Policy, namespace: str) -> tuple[str, ...]:
    """The pachd projects SpoutPipelines of `namespace` may use through the connection.

    The project named after the namespace is always one: namespace names are unique in the
    cluster, so by default no two namespaces share a project."""
    rule = policy.projects
    allowed = [namespace]
    if rule.mode is ProjectMode.SHARED:
        allowed.extend(n for n in rule.names if n not in allowed)
    if rule.allow_default and DEFAULT_PROJECT not in allowed:
        allowed.append(DEFAULT_PROJECT)
    return tuple(allowed)


def project_allowed(policy: Policy, namespace: str, project: str) -> bool:
    return project in allowed_projects(policy, namespace)


def own_project(policy: Policy, namespace: str, project: str) -> bool:
    """Whether `project` is the namespace's own (named after it, and not one the policy
    shares): the operator creates it in pachd, since no admin was asked to."""
    shared = policy.projects.names if policy.projects.mode is ProjectMode.SHARED else ()
    return project == namespace and project not in shared and project != DEFAULT_PROJECT


# --- The check ----------------------------------------------------------------------------------


def violations(policy: Policy, spec: SpoutPipelineSpec, namespace: str) -> list[Violation]:
    """Everything in `spec` that `policy` does not allow for SpoutPipelines of `namespace`
    (empty: allowed). All are reported at once, so one edit can fix them all."""
    found: list[Violation] = []
    if not project_allowed(policy, namespace, spec.project):
        allowed = ", ".join(allowed_projects(policy, namespace))
        found.append(
            Violation(
                "policy.projects",
                "project",
                f"{_q(spec.project)} is not a project namespace {namespace} may use (allowed: {allowed})",
            )
        )
    for role, template in (("spout", spec.spout), ("processor", spec.processor)):
        found.extend(_template_violations(policy, template, role))
    return found


def summary(found: Sequence[Violation]) -> str:
    """One message for a status condition: every violation, separated by "; "."""
    return "; ".join(str(v) for v in found)


def _template_violations(policy: Policy, template: PipelineTemplate, role: str) -> Iterator[Violation]:
    transform = template.transform
    yield from _image_violations(policy.images, transform.get("image"), f"{role}.transform.image")
    for i, secret in enumerate(transform.get("secrets") or ()):
        name = secret.get("name") if isinstance(secret, Mapping) else secret
        yield from _secret_violations(
            policy.secrets, name, f"{role}.transform.secrets[{i}].name", "policy.secrets"
        )
    for i, name in enumerate(transform.get("imagePullSecrets") or ()):
        yield from _secret_violations(
            policy.image_pull_secrets,
            name,
            f"{role}.transform.imagePullSecrets[{i}]",
            "policy.imagePullSecrets",
        )
    user = transform.get("user")
    if user is not None and not policy.allow_root and is_root_user(str(user)):
        yield Violation(
            "policy.user.allowRoot", f"{role}.transform.user", f"{_q(user)} runs the code as root (uid 0)"
        )
    for option in ("resourceRequests", "resourceLimits"):
        yield from _resource_violations(policy.resources, template.options.get(option), f"{role}.{option}")
    for option in ("sidecarResourceRequests", "sidecarResourceLimits"):
        # pachd's sidecar runs in the same pod: its resources count against the same ceilings.
        yield from _resource_violations(policy.resources, template.options.get(option), f"{role}.{option}")
    yield from _parallelism_violations(policy.resources, template.options.get("parallelismSpec"), role)
    if template.options.get("podPatch") not in (None, ""):
        yield from _pod_patch_violations(policy, template.options["podPatch"], f"{role}.podPatch")
    yield from _service_violations(policy, template.options.get("service"), role)
    yield from _scheduling_violations(policy.scheduling, template.options, role)
    yield from _egress_violations(policy, template.options.get("egress"), role)
    if template.options.get("s3Out") is True and not policy.s3_out:
        yield Violation(
            "policy.s3Out",
            f"{role}.s3Out",
            "is true, and this connection allows no s3Out (s3Out.allowed): the workers would serve "
            "pachd's S3 gateway on their pods",
        )


# --- Spout services, scheduling, egress ---------------------------------------------------------


def _service_violations(policy: Policy, service: Any, role: str) -> Iterator[Violation]:
    if not isinstance(service, Mapping):
        return
    written = service.get("type")
    effective = written or PACHD_DEFAULT_SERVICE_TYPE.value
    if effective in {t.value for t in policy.service_types}:
        return
    granted = ", ".join(sorted(t.value for t in policy.service_types)) or "none"
    unset = f" (unset means {PACHD_DEFAULT_SERVICE_TYPE}, pachd's default)" if not written else ""
    reach = (
        ""
        if effective == ServiceType.CLUSTER_IP
        else ": it makes the spout reachable from outside the cluster"
    )
    yield Violation(
        "policy.services.types",
        f"{role}.service.type",
        f"{_q(effective)}{unset} is not a Service type this connection allows ({granted}){reach}",
    )


def _scheduling_violations(
    rule: SchedulingRule, options: Mapping[str, Any], role: str
) -> Iterator[Violation]:
    scheduling = options.get("schedulingSpec")
    if isinstance(scheduling, Mapping):
        selector = scheduling.get("nodeSelector")
        for key, value in selector.items() if isinstance(selector, Mapping) else ():
            allowed = rule.node_selector_values(str(key))
            where = f"{role}.schedulingSpec.nodeSelector[{_q(key)}]"
            if allowed is None:
                granted = ", ".join(k for k, _ in rule.node_selector) or "none"
                yield Violation(
                    "policy.scheduling.nodeSelector",
                    where,
                    f"selects nodes by a label this connection does not allow (allowed keys: {granted})",
                )
            elif ANY not in allowed and value not in allowed:
                yield Violation(
                    "policy.scheduling.nodeSelector",
                    where,
                    f"{_q(value)} is not an allowed value ({', '.join(allowed)})",
                )
        priority = scheduling.get("priorityClassName")
        if priority not in (None, "") and priority not in rule.priority_class_names:
            granted = ", ".join(rule.priority_class_names) or "none"
            yield Violation(
                "policy.scheduling.priorityClassNames",
                f"{role}.schedulingSpec.priorityClassName",
                f"{_q(priority)} is not a priority class this connection allows ({granted})",
            )
    tolerations = options.get("tolerations")
    for i, toleration in enumerate(tolerations if isinstance(tolerations, list) else ()):
        key = toleration.get("key") if isinstance(toleration, Mapping) else None
        if ANY in rule.toleration_keys or (key and key in rule.toleration_keys):
            continue
        granted = ", ".join(rule.toleration_keys) or "none"
        what = _q(key) if key else "a toleration without a key (it tolerates every taint)"
        yield Violation(
            "policy.scheduling.tolerationKeys",
            f"{role}.tolerations[{i}].key",
            f"{what} is not a taint key this connection lets pods tolerate ({granted})",
        )


def _egress_violations(policy: Policy, egress: Any, role: str) -> Iterator[Violation]:
    if not isinstance(egress, Mapping) or not egress:
        return
    rule = policy.egress
    if not rule.allowed:
        yield Violation(
            "policy.egress",
            f"{role}.egress",
            "is set, and this connection allows no egress (egress.allowed): it copies the output "
            "outside pachd",
        )
        return
    targets = [
        (path, url)
        for path, url in (
            ("URL", egress.get("URL")),
            ("objectStorage.url", (egress.get("objectStorage") or {}).get("url")),
            ("sqlDatabase.url", (egress.get("sqlDatabase") or {}).get("url")),
        )
        if url
    ]
    if rule.urls is not None:
        patterns = ", ".join(rule.urls)
        if not targets:
            yield Violation("policy.egress.urls", f"{role}.egress", f"names no URL to hold to ({patterns})")
        for path, url in targets:
            if not any(_url_pattern(p).fullmatch(str(url)) for p in rule.urls):
                yield Violation(
                    "policy.egress.urls",
                    f"{role}.egress.{path}",
                    f"{_q(url)} does not match any allowed pattern ({patterns})",
                )
    secret = (egress.get("sqlDatabase") or {}).get("secret")
    if isinstance(secret, Mapping):
        yield from _secret_violations(
            policy.secrets, secret.get("name"), f"{role}.egress.sqlDatabase.secret.name", "policy.secrets"
        )


def _url_pattern(pattern: str) -> re.Pattern[str]:
    """`*` matches any characters: "s3://team-bucket/*" is everything in that bucket."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


# --- Images -------------------------------------------------------------------------------------

# The reference grammar of distribution/reference (without IPv6 hosts): a reference outside it
# could be read differently by whoever pulls it than by the pattern match here.
_HOST = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?:(?P<host>{_HOST})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)


def normalize_image(reference: str) -> str | None:
    """The fully qualified form of an image reference, the one patterns are matched against
    ("busybox:1" -> "docker.io/library/busybox:1"), or None if it is not a valid reference.

    A first component without ".", ":" or being "localhost" is a Docker Hub path, not a
    registry: "team/app" is docker.io/team/app, so a pattern "team/*" never matches it."""
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        return None
    host, path = match["host"], match["path"]
    if host is not None and not ("." in host or ":" in host or host == "localhost"):
        host, path = None, f"{host}/{path}"  # "team/app": the first component is a path
        if not re.fullmatch(_COMPONENT, path.partition("/")[0]):
            return None  # e.g. "UPPER/app": no registry, and not a valid path either
    if host is None or host.lower() == "index.docker.io":
        host = "docker.io"
    host = host.lower()
    if host == "docker.io" and "/" not in path:
        path = f"library/{path}"
    tag = f":{match['tag']}" if match["tag"] else ""
    digest = f"@{match['digest']}" if match["digest"] else ""
    return f"{host}/{path}{tag}{digest}"


def _image_pattern(pattern: str) -> re.Pattern[str]:
    """`*` matches within one path component; a trailing `*` matches the rest of the
    reference. So "registry.example.com/team/*" is everything under that prefix, while
    "*.example.com/*" cannot be satisfied by "evil.io/x.example.com/y"."""
    body, trailing = (pattern[:-1], ".*") if pattern.endswith("*") else (pattern, "")
    return re.compile("[^/]*".join(re.escape(part) for part in body.split("*")) + trailing)


def _image_violations(rule: ImageRule, image: Any, where: str) -> Iterator[Violation]:
    if rule.allowed is None and not rule.require_digest:
        return
    normalized = normalize_image(image) if isinstance(image, str) else None
    if normalized is None:
        yield Violation("policy.images", where, f"{_q(image)} is not a valid image reference")
        return
    if not rule.matches(normalized):
        allowed = ", ".join(rule.allowed or ())
        shown = _q(image) if normalized == image else f"{_q(image)} ({normalized})"
        yield Violation("policy.images", where, f"{shown} does not match any allowed pattern ({allowed})")
    if rule.require_digest and "@" not in normalized:
        yield Violation(
            "policy.images.requireDigest", where, f"{_q(image)} names no digest (write image@sha256:...)"
        )


# --- Secrets, users -----------------------------------------------------------------------------


def _secret_violations(allowed: frozenset[str], name: Any, where: str, rule: str) -> Iterator[Violation]:
    if not isinstance(name, str) or name not in allowed:
        granted = ", ".join(sorted(allowed)) or "none"
        yield Violation(
            rule, where, f"{_q(name)} is not a Secret of pachd's namespace this connection allows ({granted})"
        )


_NUMBER = re.compile(r"[+-]?[0-9]+")


def is_root_user(user: str) -> bool:
    """Whether a transform.user (`user[:group]`) runs as uid 0: "root", "0", "0:0", "root:x",
    "00", "+0". A name is compared without case or surrounding spaces, to be safe."""
    name = user.partition(":")[0].strip()
    if _NUMBER.fullmatch(name):
        return int(name) == 0
    return name.casefold() == "root"


# --- Resources ----------------------------------------------------------------------------------


def _resource_violations(rule: ResourceRule, raw: Any, where: str) -> Iterator[Violation]:
    if not isinstance(raw, Mapping):
        return
    side = "requests" if where.endswith("Requests") else "limits"
    ceilings = rule.requests if side == "requests" else rule.limits
    for kind in ("cpu", "memory", "disk"):
        if raw.get(kind) is not None:
            yield from _over(
                ceilings.of(kind), raw[kind], f"policy.resources.{side}.{kind}", f"{where}.{kind}"
            )
    gpu = raw.get("gpu")
    if isinstance(gpu, Mapping) and gpu.get("number"):
        yield from _over(
            ceilings.of("gpu"), gpu["number"], f"policy.resources.{side}.gpu", f"{where}.gpu.number"
        )
        yield from _gpu_type_violations(rule, gpu.get("type"), f"{where}.gpu.type")


def _gpu_type_violations(rule: ResourceRule, gpu_type: Any, where: str) -> Iterator[Violation]:
    allowed = {t.casefold() for t in rule.gpu_types or ()}
    if rule.gpu_types is not None and not (isinstance(gpu_type, str) and gpu_type.casefold() in allowed):
        yield Violation(
            "policy.resources.gpuTypes",
            where,
            f"{_q(gpu_type)} is not an allowed GPU ({', '.join(rule.gpu_types)})",
        )


def _over(ceiling: Quantity | None, asked: Any, rule: str, where: str) -> Iterator[Violation]:
    if ceiling is None:
        return
    try:
        value = parse_quantity(asked)
    except ValueError:
        yield Violation(
            rule, where, f"{_q(asked)} is not a quantity, so it cannot be held to the ceiling {ceiling}"
        )
        return
    if value > ceiling.value:
        yield Violation(rule, where, f"{_q(asked)} is over the ceiling {ceiling}")


def _parallelism_violations(rule: ResourceRule, raw: Any, role: str) -> Iterator[Violation]:
    if rule.max_parallelism is None or not isinstance(raw, Mapping) or raw.get("constant") is None:
        return
    constant = raw["constant"]
    if isinstance(constant, bool) or not isinstance(constant, int) or constant > rule.max_parallelism:
        yield Violation(
            "policy.resources.maxParallelism",
            f"{role}.parallelismSpec.constant",
            f"{_q(constant)} is over the ceiling {rule.max_parallelism}",
        )


# --- Pod patches --------------------------------------------------------------------------------
#
# Pachyderm applies podPatch (RFC 6902) to the worker pod spec's JSON, then decodes the result
# with Go's encoding/json, which matches keys without regard to case (and folds the long s
# U+017F to "s", the Kelvin sign U+212A to "k", as casefold() does). So keys and pointer
# segments are compared casefolded, and every node of every value is scanned: a value can be
# a whole subtree ({"op": "replace", "path": "", "value": {...}}).

_REMOVED = object()  # the value of a node a `remove` op takes away
_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
_SAFE_VOLUME_SOURCES = frozenset(
    {"name", "emptydir", "configmap", "secret", "downwardapi", "projected", "hostpath"}
)
_CONTAINER_LISTS = frozenset({"containers", "initcontainers", "ephemeralcontainers"})
# Settings pachd writes on a worker pod that keep it contained. A write that replaces one of
# them, or an ancestor of one (a whole container, the whole spec), takes pachd's value away
# whatever it writes instead; its own nested values are scanned as well.
_PROTECTED = {
    ("serviceaccountname",): PodCapability.SERVICE_ACCOUNT,
    ("securitycontext",): PodCapability.SECURITY_CONTEXT,
    ("containers", "*", "securitycontext"): PodCapability.SECURITY_CONTEXT,
    ("initcontainers", "*", "securitycontext"): PodCapability.SECURITY_CONTEXT,
}


@dataclass(frozen=True)
class _Node:
    """One node a patch op writes or removes (`value` _REMOVED), with its path from the pod
    spec root as written; or, with `replaces` set, a protected setting the op replaces."""

    op: int
    path: tuple[str, ...]
    value: Any
    replaces: PodCapability | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The path as Go's decoder reads it: without case."""
        return tuple(token.casefold() for token in self.path)


class _BadPatch(ValueError):
    pass


def _pod_patch_violations(policy: Policy, raw: Any, where: str) -> Iterator[Violation]:
    rule = policy.pod_patch
    if not rule.allowed:
        yield Violation(
            "policy.podPatch", where, "is set, and this connection allows no pod patch (podPatch.allowed)"
        )
        return
    try:
        ops = _decode_patch(raw)
    except _BadPatch as err:
        yield Violation("policy.podPatch", where, f"cannot be checked: {err}")
        return
    for i, op in enumerate(ops):
        for pointer in (op["path"], op.get("from")):
            if pointer is not None and rule.paths is not None and not _path_allowed(rule.paths, pointer):
                yield Violation(
                    "policy.podPatch.paths",
                    f"{where}[{i}]",
                    f"{op['op']} {_q(pointer)} is outside the allowed paths ({', '.join(rule.paths)})",
                )
    nodes = list(_nodes(ops))
    reported: set[tuple[int, PodCapability]] = set()
    for node in nodes:
        for capability in _capabilities(node):
            if capability not in rule.capabilities and (node.op, capability) not in reported:
                reported.add((node.op, capability))
                yield Violation(
                    "policy.podPatch.capabilities",
                    f"{where}[{node.op}]",
                    f"{_describe(ops[node.op], node)}: needs capability {capability}, "
                    "which this connection does not grant",
                )
        yield from _patch_node_violations(policy, node, f"{where}[{node.op}]")


def _decode_patch(raw: Any) -> list[Mapping[str, Any]]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw, object_pairs_hook=_unique_keys)
        except ValueError as err:
            raise _BadPatch(f"not JSON ({err})") from None
    if not isinstance(raw, list):
        raise _BadPatch("a JSON Patch is a list of operations")
    for op in raw:
        if not isinstance(op, Mapping) or op.get("op") not in _OPS or not isinstance(op.get("path"), str):
            raise _BadPatch(f"not a JSON Patch operation: {_q(op)}")
        if op["op"] in ("move", "copy"):
            # The value comes from the pod spec itself (where transform.env and cmd put strings
            # the tenant chose), so it cannot be checked here.
            raise _BadPatch(f"{op['op']} takes its value from the pod spec, which cannot be checked; use add")
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise _BadPatch(f"{op['op']} {op['path']!r} has no value")
        _pointer(op["path"])
    return list(raw)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse a duplicate key: which one a decoder keeps is not something to rely on."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _pointer(path: str) -> tuple[str, ...]:
    """RFC 6901 tokens, unescaped ("" is the whole pod spec)."""
    if path == "":
        return ()
    if not path.startswith("/"):
        raise _BadPatch(f"path {path!r} is not a JSON Pointer")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/"))


def _path_allowed(patterns: tuple[str, ...], path: str) -> bool:
    tokens = tuple(t.casefold() for t in _pointer(path))
    for pattern in patterns:
        wanted = tuple(t.casefold() for t in _pointer(pattern))
        if len(tokens) >= len(wanted) and all(w in ("*", t) for w, t in zip(wanted, tokens, strict=False)):
            return True
    return False


def _nodes(ops: list[Mapping[str, Any]]) -> Iterator[_Node]:
    for i, op in enumerate(ops):
        path = _pointer(op["path"])
        keys = tuple(t.casefold() for t in path)
        if op["op"] == "remove":
            yield _Node(i, path, _REMOVED)
        elif op["op"] in ("add", "replace"):
            yield from _walk(i, path, op["value"])
            if _replaces(op["op"], keys):
                for protected, capability in _PROTECTED.items():
                    if len(keys) <= len(protected) and all(
                        p in ("*", k) for p, k in zip(protected, keys, strict=False)
                    ):
                        yield _Node(i, protected, None, replaces=capability)


def _replaces(op: str, keys: tuple[str, ...]) -> bool:
    """Whether a write replaces what is at `keys`: `replace` does; `add` does on an object
    member, not when it inserts into a list ("-" or an index: a new container is new)."""
    if op == "replace":
        return True
    return not (keys and (keys[-1] == "-" or keys[-1].isdigit()))


def _walk(op: int, path: tuple[str, ...], value: Any) -> Iterator[_Node]:
    yield _Node(op, path, value)
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from _walk(op, (*path, str(key)), child)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk(op, (*path, str(index)), child)


def _on(value: Any) -> bool:
    """Whether a boolean setting is written as anything but off (false, or removed)."""
    return value is not False and value is not None and value is not _REMOVED


def _capabilities(node: _Node) -> set[PodCapability]:
    if node.replaces is not None:
        return {node.replaces}
    keys, value = node.keys, node.value
    last = keys[-1] if keys else ""
    found: set[PodCapability] = set()
    simple = {
        "hostnetwork": PodCapability.HOST_NETWORK,
        "hostpid": PodCapability.HOST_PID,
        "hostipc": PodCapability.HOST_IPC,
        "privileged": PodCapability.PRIVILEGED,
        "hostprocess": PodCapability.PRIVILEGED,
    }
    if last in simple and _on(value):
        found.add(simple[last])
    if last == "hostport" and value not in (0, None, _REMOVED):
        found.add(PodCapability.HOST_NETWORK)
    if last == "hostpath" and value is not _REMOVED:
        found.add(PodCapability.HOST_PATH)
    if last == "procmount" and value not in ("Default", None, _REMOVED):
        found.add(PodCapability.PRIVILEGED)
    # Unset, allowPrivilegeEscalation is true: removing pachd's false grants it too.
    if last == "allowprivilegeescalation" and value is not False:
        found.add(PodCapability.ALLOW_PRIVILEGE_ESCALATION)
    # capabilities.add itself, an item of it ("add/-"), or a securityContext holding one
    added = any(k == "capabilities" and keys[j + 1 : j + 2] == ("add",) for j, k in enumerate(keys))
    if added and value not in (None, [], _REMOVED):
        found.add(PodCapability.CAPABILITIES)
    if (
        last in ("serviceaccountname", "serviceaccount", "automountserviceaccounttoken")
        and value is not False
    ):
        found.add(PodCapability.SERVICE_ACCOUNT)
    zero = isinstance(value, int | float) and not isinstance(value, bool) and value == 0
    if last in ("runasuser", "runasgroup") and (value is _REMOVED or zero):
        found.add(PodCapability.RUN_AS_ROOT)
    if last == "runasnonroot" and value is not True:
        found.add(PodCapability.RUN_AS_ROOT)
    found |= _security_context_capabilities(keys, value)
    if (
        len(keys) >= 3
        and keys[0] == "volumes"
        and keys[2] not in _SAFE_VOLUME_SOURCES
        and value is not _REMOVED
    ):
        found.add(PodCapability.VOLUMES)
    return found


def _security_context_capabilities(keys: tuple[str, ...], value: Any) -> set[PodCapability]:
    last = keys[-1] if keys else ""
    parent = keys[-2] if len(keys) > 1 else ""
    weakened = (
        (value is _REMOVED and ("securitycontext" in keys or last in ("seccompprofile", "apparmorprofile")))
        or (
            parent in ("seccompprofile", "apparmorprofile")
            and last == "type"
            and str(value).casefold() == "unconfined"
        )
        or (last == "selinuxoptions" and value is not _REMOVED)
        or (last == "capabilities" and value is _REMOVED)
    )
    return {PodCapability.SECURITY_CONTEXT} if weakened else set()


def _patch_node_violations(policy: Policy, node: _Node, where: str) -> Iterator[Violation]:
    """What a patch writes that other rules govern: images, Secrets and resources."""
    keys, value = node.keys, node.value
    if node.replaces is not None or value is _REMOVED or not keys:
        return
    last = keys[-1]
    parent = keys[-2] if len(keys) > 1 else ""
    if last == "image" and keys[0] in _CONTAINER_LISTS:
        yield from _image_violations(policy.images, value, f"{where} {_display(node.path)}")
    # volumes[].secret.secretName, projected sources' secret.name, env valueFrom.secretKeyRef
    # and envFrom[].secretRef: the same Secrets transform.secrets may name, no others.
    if (parent, last) in (
        ("secret", "secretname"),
        ("secret", "name"),
        ("secretkeyref", "name"),
        ("secretref", "name"),
    ):
        yield from _secret_violations(
            policy.secrets, value, f"{where} {_display(node.path)}", "policy.secrets"
        )
    if last == "name" and len(keys) >= 3 and keys[-3] == "imagepullsecrets":
        yield from _secret_violations(
            policy.image_pull_secrets, value, f"{where} {_display(node.path)}", "policy.imagePullSecrets"
        )
    yield from _patched_resource_violations(policy.resources, node, f"{where} {_display(node.path)}")


def _patched_resource_violations(rule: ResourceRule, node: _Node, where: str) -> Iterator[Violation]:
    """A container's (or the pod's) resources.requests/limits written by the patch: cpu,
    memory and ephemeral-storage against their ceilings, any other resource (nvidia.com/gpu,
    an extended resource, hugepages) against the GPU count."""
    keys = node.keys
    if "resources" not in keys:
        return
    at = len(keys) - 1 - keys[::-1].index("resources")
    rest = keys[at + 1 :]
    if len(rest) != 2 or rest[0] not in ("requests", "limits"):
        return
    side, name = rest
    ceilings = rule.requests if side == "requests" else rule.limits
    kind = {"cpu": "cpu", "memory": "memory", "ephemeral-storage": "disk"}.get(name, "gpu")
    yield from _over(ceilings.of(kind), node.value, f"policy.resources.{side}.{kind}", where)
    if kind == "gpu":
        yield from _gpu_type_violations(rule, node.path[-1], where)


def _q(value: Any) -> str:
    """A value in a message as JSON writes it: "evil.io/x:1", 0, true."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _display(path: tuple[str, ...]) -> str:
    """A path as a JSON Pointer again ("nvidia.com/gpu" is one token: nvidia.com~1gpu)."""
    return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in path)


def _describe(op: Mapping[str, Any], node: _Node) -> str:
    """e.g. `add '/volumes/-' writes /volumes/-/hostpath`."""
    if node.replaces is not None:
        return f"{op['op']} {_q(op['path'])} replaces pachd's {_display(node.path)}"
    written = "removes" if node.value is _REMOVED else "writes"
    return f"{op['op']} {_q(op['path'])} {written} {_display(node.path)}"
