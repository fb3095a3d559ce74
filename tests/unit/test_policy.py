"""Unit tests of policy: what a connection's spec.policy lets its tenants' pipelines declare.

Each escalation a namespace editor could attempt through pachd is refused with the rule and the
field that stop it; the forms the policy does allow pass."""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from spout_operator.policy import (
    CEILING_KEYS,
    EGRESS_KEYS,
    IMAGES_KEYS,
    POD_PATCH_KEYS,
    POLICY_KEYS,
    PROJECTS_KEYS,
    RESOURCES_KEYS,
    S3_OUT_KEYS,
    SCHEDULING_KEYS,
    SERVICES_KEYS,
    USER_KEYS,
    PodCapability,
    Policy,
    PolicyError,
    ProjectMode,
    SchedulingRule,
    ServiceType,
    Violation,
    allowed_projects,
    is_root_user,
    normalize_image,
    parse_policy,
    parse_quantity,
    project_allowed,
    summary,
    violations,
)
from spout_operator.spec import SpoutPipelineSpec, parse

NAMESPACE = "team-a"
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/team/spout:1"


def make(changes: dict[str, Any] | None = None, project: str = NAMESPACE) -> SpoutPipelineSpec:
    """A valid spec in project `project`, with dotted paths set ("spout.transform.user")."""
    raw: dict[str, Any] = {
        "project": project,
        "spout": {"transform": {"image": IMAGE, "cmd": ["spout"]}},
        "processor": {"transform": {"image": IMAGE, "cmd": ["process"]}},
    }
    for path, value in (changes or {}).items():
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)
    return parse(raw, "events")


def patch(*ops: dict[str, Any]) -> str:
    return json.dumps(list(ops))


def found(policy: Policy, spec: SpoutPipelineSpec, namespace: str = NAMESPACE) -> set[tuple[str, str]]:
    return {(v.rule, v.field) for v in violations(policy, spec, namespace)}


PATCHES_ALLOWED = parse_policy({"podPatch": {"allowed": True}}, "test")


# --- safe defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}])
def test_no_policy_is_the_safe_default(raw: Any) -> None:
    policy = parse_policy(raw, "test")

    assert policy == Policy()
    assert policy.secrets == frozenset()
    assert policy.pod_patch.allowed is False
    assert policy.allow_root is False
    assert policy.resources.requests.gpu == policy.resources.limits.gpu == 0
    assert policy.projects.mode is ProjectMode.PER_NAMESPACE
    assert allowed_projects(policy, NAMESPACE) == (NAMESPACE,)


def test_a_plain_pipeline_in_its_own_project_passes_the_default_policy() -> None:
    spec = make(
        {
            "spout.transform.image": "anything.io/at/all:latest",  # images stay open when unset
            "processor.resourceRequests": {"cpu": 64, "memory": "512Gi"},  # so do cpu/memory ceilings
            "processor.parallelismSpec": {"constant": 1000},
            "spout.transform.user": "1000",
        }
    )

    assert violations(Policy(), spec, NAMESPACE) == []


# --- each escalation is refused by default, with the rule and the field ---------------------------

ESCALATIONS = [
    pytest.param(
        {"spout.transform.secrets": [{"name": "pachd-auth-token", "mountPath": "/s"}]},
        {("policy.secrets", "spout.transform.secrets[0].name")},
        id="secret-of-pachd-namespace",
    ),
    pytest.param(
        {"processor.transform.secrets": [{"name": "ok"}, {"name": "team-b-db", "envVar": "X", "key": "k"}]},
        {
            ("policy.secrets", "processor.transform.secrets[0].name"),
            ("policy.secrets", "processor.transform.secrets[1].name"),
        },
        id="each-secret-of-pachd-namespace",
    ),
    pytest.param(
        {"spout.transform.imagePullSecrets": ["team-b-registry"]},
        {("policy.imagePullSecrets", "spout.transform.imagePullSecrets[0]")},
        id="image-pull-secret",
    ),
    pytest.param(
        {"spout.podPatch": patch({"op": "add", "path": "/tolerations", "value": []})},
        {("policy.podPatch", "spout.podPatch")},
        id="any-pod-patch",
    ),
    pytest.param(
        {"spout.transform.user": "root"}, {("policy.user.allowRoot", "spout.transform.user")}, id="root"
    ),
    pytest.param(
        {"processor.transform.user": "0"}, {("policy.user.allowRoot", "processor.transform.user")}, id="uid-0"
    ),
    pytest.param(
        {"spout.transform.user": "0:0"}, {("policy.user.allowRoot", "spout.transform.user")}, id="0:0"
    ),
    pytest.param(
        {"spout.transform.user": "root:staff"},
        {("policy.user.allowRoot", "spout.transform.user")},
        id="root:grp",
    ),
    pytest.param(
        {"processor.resourceLimits": {"gpu": {"type": "nvidia.com/gpu", "number": 1}}},
        {("policy.resources.limits.gpu", "processor.resourceLimits.gpu.number")},
        id="gpu-limit",
    ),
    pytest.param(
        {"processor.resourceRequests": {"gpu": {"type": "nvidia.com/gpu", "number": 2}}},
        {("policy.resources.requests.gpu", "processor.resourceRequests.gpu.number")},
        id="gpu-request",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), ESCALATIONS)
def test_an_escalation_is_refused_by_a_connection_that_says_nothing(
    changes: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    assert found(Policy(), make(changes)) == expected


def test_another_namespaces_project_and_the_default_project_are_refused() -> None:
    assert found(Policy(), make(project="team-b")) == {("policy.projects", "project")}
    assert found(Policy(), make(project="default")) == {("policy.projects", "project")}
    assert found(Policy(), make(project="team-b"), namespace="team-b") == set()


# --- granted forms pass ---------------------------------------------------------------------------


def test_named_secrets_pass_and_others_still_do_not() -> None:
    policy = parse_policy({"secrets": ["shared-db"], "imagePullSecrets": ["registry"]}, "test")
    spec = make(
        {
            "spout.transform.secrets": [
                {"name": "shared-db", "mountPath": "/db"},
                {"name": "pachd-auth-token"},
            ],
            "spout.transform.imagePullSecrets": ["registry", "shared-db"],
        }
    )

    assert found(policy, spec) == {
        ("policy.secrets", "spout.transform.secrets[1].name"),
        # An image pull secret is granted on its own list, not by being a granted Secret.
        ("policy.imagePullSecrets", "spout.transform.imagePullSecrets[1]"),
    }


# --- root -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["root", "0", "0:0", "root:root", "root:1000", "00", "+0", " root ", "ROOT"])
def test_root_in_each_spelling(user: str) -> None:
    assert is_root_user(user)
    assert found(Policy(), make({"spout.transform.user": user})) == {
        ("policy.user.allowRoot", "spout.transform.user")
    }
    assert (
        found(parse_policy({"user": {"allowRoot": True}}, "t"), make({"spout.transform.user": user})) == set()
    )


@pytest.mark.parametrize("user", ["1000", "1000:0", "nobody", "rootless", "10", "1000:root", "app"])
def test_users_other_than_root_pass(user: str) -> None:
    assert not is_root_user(user)
    assert found(Policy(), make({"spout.transform.user": user})) == set()


# --- images -----------------------------------------------------------------------------------------

IMAGES = parse_policy(
    {"images": {"allowed": ["registry.example.com/team/*", "docker.io/library/busybox:*"]}}, "t"
)


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/team/spout:1",
        "registry.example.com/team/sub/path:2",
        "registry.example.com/team/app@sha256:" + "a" * 64,
        "busybox:1.36",
        "docker.io/busybox:1.36",
        "index.docker.io/library/busybox:1",
    ],
)
def test_images_matching_a_pattern_pass(image: str) -> None:
    assert found(IMAGES, make({"spout.transform.image": image})) == set()


@pytest.mark.parametrize(
    "image",
    [
        "evil.io/x:1",
        "registry.example.com/other/app:1",
        "registry.example.com.evil.io/team/app:1",
        "registry.example.com/teamx/app:1",
        "team/spout:1",  # docker.io/team/spout, not a registry called "team"
        "busybox",  # no tag: docker.io/library/busybox does not match busybox:*
        "evil.io/library/busybox:1",
    ],
)
def test_a_foreign_image_is_refused(image: str) -> None:
    result = violations(IMAGES, make({"spout.transform.image": image}), NAMESPACE)

    assert [(v.rule, v.field) for v in result] == [("policy.images", "spout.transform.image")]
    assert (
        "does not match any allowed pattern (registry.example.com/team/*, docker.io/library/busybox:*)"
        in str(result[0])
    )


def test_a_star_inside_a_pattern_does_not_cross_a_path_separator() -> None:
    policy = parse_policy({"images": {"allowed": ["*.example.com/*"]}}, "t")

    assert found(policy, make({"spout.transform.image": "registry.example.com/app:1"})) == set()
    assert found(policy, make({"spout.transform.image": "evil.io/x.example.com/app:1"})) == {
        ("policy.images", "spout.transform.image")
    }


@pytest.mark.parametrize(
    "image", ["Registry.example.com/UPPER:1", "a/../b:1", "x:1 ; rm", "reg.io/app:1@sha256:short"]
)
def test_an_invalid_reference_is_refused_when_images_are_restricted(image: str) -> None:
    assert found(IMAGES, make({"spout.transform.image": image})) == {
        ("policy.images", "spout.transform.image")
    }


def test_a_tag_is_refused_when_digests_are_required() -> None:
    policy = parse_policy({"images": {"requireDigest": True}}, "t")
    digest = "registry.example.com/team/app@sha256:" + "0" * 64

    assert found(policy, make({"spout.transform.image": digest})) == {
        ("policy.images.requireDigest", "processor.transform.image")  # IMAGE has a tag only
    }
    assert (
        found(policy, make({"spout.transform.image": digest, "processor.transform.image": digest})) == set()
    )


def test_the_denial_message_names_the_rule_the_field_and_the_patterns() -> None:
    policy = parse_policy({"images": {"allowed": ["registry.example.com/*"]}}, "t")
    [violation] = violations(policy, make({"spout.transform.image": "evil.io/x:1"}), NAMESPACE)

    assert str(violation) == (
        'policy.images: spout.transform.image "evil.io/x:1" does not match any allowed pattern '
        "(registry.example.com/*)"
    )


@pytest.mark.parametrize(
    ("reference", "normalized"),
    [
        ("busybox", "docker.io/library/busybox"),
        ("busybox:1", "docker.io/library/busybox:1"),
        ("team/app:1", "docker.io/team/app:1"),
        ("localhost/app", "localhost/app"),
        ("localhost:5000/app:1", "localhost:5000/app:1"),
        ("Reg.Example.com/a/b:v1", "reg.example.com/a/b:v1"),
        ("UPPER/app", None),
        ("", None),
    ],
)
def test_normalize_image(reference: str, normalized: str | None) -> None:
    assert normalize_image(reference) == normalized


# --- ceilings -------------------------------------------------------------------------------------

CEILINGS = parse_policy(
    {
        "resources": {
            "requests": {"cpu": "2", "memory": "2Gi", "disk": "10Gi", "gpu": 1},
            "limits": {"cpu": "4000m", "memory": "4G"},
            "maxParallelism": 10,
            "gpuTypes": ["nvidia.com/gpu"],
        }
    },
    "t",
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"processor.resourceRequests": {"cpu": 3}},
            {("policy.resources.requests.cpu", "processor.resourceRequests.cpu")},
        ),
        (
            {"processor.resourceRequests": {"cpu": 2.001}},
            {("policy.resources.requests.cpu", "processor.resourceRequests.cpu")},
        ),
        (
            {"spout.resourceRequests": {"memory": "3Gi"}},
            {("policy.resources.requests.memory", "spout.resourceRequests.memory")},
        ),
        # 2Gi is 2147483648 bytes, over 2G = 2000000000 in the limit below... and requests: 2.5G > 2Gi.
        (
            {"spout.resourceRequests": {"memory": "2.5G"}},
            {("policy.resources.requests.memory", "spout.resourceRequests.memory")},
        ),
        (
            {"spout.resourceLimits": {"memory": "4Gi"}},
            {("policy.resources.limits.memory", "spout.resourceLimits.memory")},
        ),
        ({"spout.resourceLimits": {"cpu": 5}}, {("policy.resources.limits.cpu", "spout.resourceLimits.cpu")}),
        (
            {"spout.resourceRequests": {"disk": "11Gi"}},
            {("policy.resources.requests.disk", "spout.resourceRequests.disk")},
        ),
        (
            {"processor.resourceRequests": {"gpu": {"type": "nvidia.com/gpu", "number": 2}}},
            {("policy.resources.requests.gpu", "processor.resourceRequests.gpu.number")},
        ),
        (
            {"processor.resourceRequests": {"gpu": {"type": "amd.com/gpu", "number": 1}}},
            {("policy.resources.gpuTypes", "processor.resourceRequests.gpu.type")},
        ),
        (
            # No GPU ceiling for limits: the default 0 holds there.
            {"processor.resourceLimits": {"gpu": {"type": "nvidia.com/gpu", "number": 1}}},
            {("policy.resources.limits.gpu", "processor.resourceLimits.gpu.number")},
        ),
        (
            {"processor.parallelismSpec": {"constant": 11}},
            {("policy.resources.maxParallelism", "processor.parallelismSpec.constant")},
        ),
    ],
)
def test_over_a_ceiling_is_refused(changes: dict[str, Any], expected: set[tuple[str, str]]) -> None:
    assert found(CEILINGS, make(changes)) == expected


def test_at_or_under_every_ceiling_passes() -> None:
    spec = make(
        {
            "processor.resourceRequests": {
                "cpu": 2,
                "memory": "2147483648",
                "disk": "10Gi",
                "gpu": {"type": "nvidia.com/gpu", "number": 1},
            },
            "processor.resourceLimits": {"cpu": 4, "memory": "3.9G"},
            "spout.resourceRequests": {"cpu": 0.5, "memory": "2G"},
            "processor.parallelismSpec": {"constant": 10},
        }
    )

    assert found(CEILINGS, spec) == set()


# --- quantities -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("1", Decimal(1)),
        ("2Gi", Decimal(2 * 1024**3)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("1E", Decimal(10**18)),  # exa, not an exponent
        ("1.5Ki", Decimal(1536)),
        ("100n", Decimal("1e-7")),
        ("3u", Decimal("3e-6")),
        ("2k", Decimal(2000)),
        ("1Ei", Decimal(1024**6)),
        (".5", Decimal("0.5")),
        ("+1M", Decimal(10**6)),
        ("-1", Decimal(-1)),
        (2, Decimal(2)),
        (0.1, Decimal("0.1")),
        (1e-05, Decimal("0.00001")),
    ],
)
def test_parse_quantity(text: str | int | float, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "Gi", "1gi", "1KB", "1 Gi", " 1", "1.2.3", "1e", "1e3Gi", "0x10", "1K", "abc", "1e99999999", True],
)
def test_parse_quantity_refuses_what_kubernetes_refuses(text: Any) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)


def test_quantities_compare_by_value() -> None:
    assert parse_quantity("2Gi") > parse_quantity("2G")
    assert parse_quantity("1000m") == parse_quantity("1")
    assert parse_quantity("1e3") == parse_quantity("1k")


# --- pod patches ------------------------------------------------------------------------------------

HOST_PATH = {"name": "root", "hostPath": {"path": "/"}}
# A table of cases for one parametrized test: rows alike in shape are different cases, each
# with its own id, kept as data (the logic they share is the test below, written once).
DANGEROUS_PATCHES = [
    pytest.param(
        {"op": "add", "path": "/hostNetwork", "value": True}, PodCapability.HOST_NETWORK, id="hostNetwork"
    ),
    pytest.param(
        {"op": "add", "path": "/HOSTNETWORK", "value": True}, PodCapability.HOST_NETWORK, id="any-case"
    ),
    # Go's decoder folds U+017F (long s) to "s": this key sets hostNetwork.
    pytest.param(
        {"op": "add", "path": "/ho\u017ftNetwork", "value": True}, PodCapability.HOST_NETWORK, id="fold"
    ),
    pytest.param({"op": "replace", "path": "/hostPID", "value": True}, PodCapability.HOST_PID, id="hostPID"),
    pytest.param({"op": "add", "path": "/hostIPC", "value": True}, PodCapability.HOST_IPC, id="hostIPC"),
    pytest.param(
        {"op": "add", "path": "/containers/0/ports/-", "value": {"containerPort": 80, "hostPort": 80}},
        PodCapability.HOST_NETWORK,
        id="hostPort",
    ),
    pytest.param(
        {"op": "add", "path": "/volumes/-", "value": HOST_PATH}, PodCapability.HOST_PATH, id="hostPath"
    ),
    pytest.param(
        {"op": "add", "path": "/volumes/0/hostPath", "value": {"path": "/etc"}},
        PodCapability.HOST_PATH,
        id="hostPath-path",
    ),
    pytest.param(
        {"op": "add", "path": "/containers/0/securityContext/privileged", "value": True},
        PodCapability.PRIVILEGED,
        id="privileged",
    ),
    pytest.param(
        {
            "op": "add",
            "path": "/containers/-",
            "value": {"name": "x", "image": IMAGE, "securityContext": {"privileged": True}},
        },
        PodCapability.PRIVILEGED,
        id="privileged-nested-container",
    ),
    pytest.param(
        {"op": "add", "path": "/containers/0/securityContext/procMount", "value": "Unmasked"},
        PodCapability.PRIVILEGED,
        id="procMount",
    ),
    pytest.param(
        {"op": "add", "path": "/containers/0/securityContext/allowPrivilegeEscalation", "value": True},
        PodCapability.ALLOW_PRIVILEGE_ESCALATION,
        id="allowPrivilegeEscalation",
    ),
    pytest.param(
        {"op": "remove", "path": "/containers/0/securityContext/allowPrivilegeEscalation"},
        PodCapability.ALLOW_PRIVILEGE_ESCALATION,
        id="remove-allowPrivilegeEscalation",
    ),
    pytest.param(
        {"op": "add", "path": "/containers/0/securityContext/capabilities/add/-", "value": "SYS_ADMIN"},
        PodCapability.CAPABILITIES,
        id="capability",
    ),
    pytest.param(
        {
            "op": "add",
            "path": "/initContainers/-",
            "value": {
                "name": "i",
                "image": IMAGE,
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
            },
        },
        PodCapability.CAPABILITIES,
        id="capability-nested",
    ),
    pytest.param(
        {"op": "replace", "path": "/serviceAccountName", "value": "pachyderm"},
        PodCapability.SERVICE_ACCOUNT,
        id="serviceAccountName",
    ),
    pytest.param(
        {"op": "add", "path": "/serviceAccount", "value": "pachyderm"},
        PodCapability.SERVICE_ACCOUNT,
        id="serviceAccount",
    ),
    pytest.param(
        {"op": "remove", "path": "/serviceAccountName"}, PodCapability.SERVICE_ACCOUNT, id="remove-sa"
    ),
    pytest.param(
        {"op": "add", "path": "/automountServiceAccountToken", "value": True},
        PodCapability.SERVICE_ACCOUNT,
        id="automount",
    ),
    pytest.param(
        {"op": "add", "path": "/securityContext/runAsUser", "value": 0},
        PodCapability.RUN_AS_ROOT,
        id="runAsUser-0",
    ),
    pytest.param(
        {"op": "add", "path": "/securityContext/runAsNonRoot", "value": False},
        PodCapability.RUN_AS_ROOT,
        id="runAsNonRoot",
    ),
    pytest.param(
        {"op": "remove", "path": "/securityContext"},
        PodCapability.SECURITY_CONTEXT,
        id="remove-securityContext",
    ),
    pytest.param(
        {"op": "replace", "path": "/securityContext", "value": {}},
        PodCapability.SECURITY_CONTEXT,
        id="replace-securityContext",
    ),
    pytest.param(
        {"op": "replace", "path": "/containers/0", "value": {"name": "user", "image": IMAGE}},
        PodCapability.SECURITY_CONTEXT,
        id="replace-container",
    ),
    pytest.param(
        {"op": "add", "path": "/securityContext/seccompProfile", "value": {"type": "Unconfined"}},
        PodCapability.SECURITY_CONTEXT,
        id="seccomp-unconfined",
    ),
    pytest.param(
        {
            "op": "add",
            "path": "/volumes/-",
            "value": {"name": "n", "nfs": {"server": "10.0.0.1", "path": "/"}},
        },
        PodCapability.VOLUMES,
        id="nfs-volume",
    ),
    pytest.param(
        {
            "op": "add",
            "path": "/volumes/-",
            "value": {"name": "d", "persistentVolumeClaim": {"claimName": "team-b-data"}},
        },
        PodCapability.VOLUMES,
        id="pvc-volume",
    ),
]


@pytest.mark.parametrize(("op", "capability"), DANGEROUS_PATCHES)
def test_a_dangerous_pod_patch_needs_its_capability(op: dict[str, Any], capability: PodCapability) -> None:
    spec = make({"processor.podPatch": patch({"op": "add", "path": "/tolerations", "value": []}, op)})
    result = violations(PATCHES_ALLOWED, spec, NAMESPACE)

    assert ("policy.podPatch.capabilities", "processor.podPatch[1]") in {(v.rule, v.field) for v in result}
    assert any(f"needs capability {capability}," in str(v) for v in result), summary(result)
    # Granting every capability the patch needs lets it through.
    needed = {c for c in PodCapability if any(f"needs capability {c}," in str(v) for v in result)}
    granted = parse_policy({"podPatch": {"allowed": True, "capabilities": sorted(needed)}}, "t")
    assert found(granted, spec) == set()


def test_a_whole_spec_replace_is_scanned_to_the_leaves() -> None:
    spec_value = {
        "containers": [
            {
                "name": "user",
                "image": "evil.io/x:1",
                "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                "env": [
                    {"name": "T", "valueFrom": {"secretKeyRef": {"name": "pachd-auth-token", "key": "t"}}}
                ],
                "resources": {"limits": {"nvidia.com/gpu": 8}},
            }
        ],
        "hostNetwork": True,
        "hostPID": True,
        "volumes": [HOST_PATH, {"name": "s", "secret": {"secretName": "team-b-db"}}],
    }
    policy = parse_policy(
        {"podPatch": {"allowed": True}, "images": {"allowed": ["registry.example.com/*"]}}, "t"
    )
    result = violations(
        policy, make({"spout.podPatch": patch({"op": "replace", "path": "", "value": spec_value})}), NAMESPACE
    )
    text = summary(result)

    for capability in (
        "HostNetwork",
        "HostPID",
        "HostPath",
        "Privileged",
        "Capabilities",
        "ServiceAccount",
        "SecurityContext",
    ):
        assert f"needs capability {capability}," in text
    rules = {(v.rule, v.field.split(" ")[0]) for v in result}
    assert ("policy.images", "spout.podPatch[0]") in rules
    assert ("policy.secrets", "spout.podPatch[0]") in rules
    assert ("policy.resources.limits.gpu", "spout.podPatch[0]") in rules
    assert "spout.podPatch[0] /containers/0/env/0/valueFrom/secretKeyRef/name" in text
    assert "spout.podPatch[0] /volumes/1/secret/secretName" in text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"op": "add"}), "list of operations"),
        (json.dumps([{"op": "frobnicate", "path": "/x"}]), "not a JSON Patch operation"),
        (json.dumps([{"op": "add", "path": "x", "value": 1}]), "not a JSON Pointer"),
        (json.dumps([{"op": "add", "path": "/x"}]), "has no value"),
        (
            json.dumps([{"op": "copy", "from": "/containers/0/env/0/value", "path": "/serviceAccountName"}]),
            "copy",
        ),
        (json.dumps([{"op": "move", "from": "/a", "path": "/b"}]), "move"),
        ('[{"op": "add", "path": "/hostNetwork", "value": false, "value": true}]', "duplicate key"),
    ],
)
def test_a_pod_patch_that_cannot_be_checked_is_refused(raw: str, message: str) -> None:
    [violation] = violations(PATCHES_ALLOWED, make({"spout.podPatch": raw}), NAMESPACE)

    assert (violation.rule, violation.field) == ("policy.podPatch", "spout.podPatch")
    assert message in violation.message


@pytest.mark.parametrize(
    "op",
    [
        {"op": "add", "path": "/tolerations", "value": [{"key": "gpu", "operator": "Exists"}]},
        {"op": "add", "path": "/nodeSelector", "value": {"pool": "batch"}},
        {"op": "add", "path": "/containers/0/env/-", "value": {"name": "A", "value": "b"}},
        {"op": "add", "path": "/containers/0/securityContext/privileged", "value": False},
        {"op": "add", "path": "/hostNetwork", "value": False},
        {"op": "add", "path": "/securityContext/runAsUser", "value": 1000},
        {"op": "add", "path": "/securityContext/runAsNonRoot", "value": True},
        {"op": "add", "path": "/containers/0/securityContext/capabilities/drop/-", "value": "NET_RAW"},
        {"op": "add", "path": "/volumes/-", "value": {"name": "scratch", "emptyDir": {}}},
        {"op": "add", "path": "/containers/0/resources/limits/cpu", "value": "500m"},
        {"op": "test", "path": "/hostNetwork", "value": True},
        {"op": "remove", "path": "/tolerations/0"},
    ],
)
def test_a_harmless_pod_patch_passes_when_patches_are_allowed(op: dict[str, Any]) -> None:
    spec = make({"spout.podPatch": patch(op), "processor.podPatch": patch(op)})

    assert found(PATCHES_ALLOWED, spec) == set()
    assert found(Policy(), spec) == {
        ("policy.podPatch", "spout.podPatch"),
        ("policy.podPatch", "processor.podPatch"),
    }


def test_a_pod_patch_stays_within_the_allowed_paths() -> None:
    policy = parse_policy(
        {"podPatch": {"allowed": True, "paths": ["/tolerations", "/containers/*/resources"]}}, "t"
    )
    inside = patch(
        {"op": "add", "path": "/tolerations/-", "value": {"key": "k", "operator": "Exists"}},
        {"op": "add", "path": "/Containers/0/resources/limits/cpu", "value": "1"},
    )
    outside = patch(
        {"op": "add", "path": "/tolerations", "value": []},
        {"op": "add", "path": "/nodeName", "value": "control-plane-1"},
    )

    assert found(policy, make({"spout.podPatch": inside})) == set()
    assert found(policy, make({"spout.podPatch": outside})) == {
        ("policy.podPatch.paths", "spout.podPatch[1]")
    }


def test_a_pod_patch_is_held_to_the_other_rules() -> None:
    policy = parse_policy(
        {
            "podPatch": {"allowed": True},
            "images": {"allowed": ["registry.example.com/*"]},
            "secrets": ["shared"],
            "imagePullSecrets": ["pull"],
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        },
        "t",
    )
    refused = patch(
        {"op": "add", "path": "/containers/0/image", "value": "evil.io/x:1"},
        {
            "op": "add",
            "path": "/volumes/-",
            "value": {"name": "p", "projected": {"sources": [{"secret": {"name": "other"}}]}},
        },
        {"op": "add", "path": "/containers/0/envFrom/-", "value": {"secretRef": {"name": "other"}}},
        {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "other"}},
        {"op": "add", "path": "/containers/0/resources/limits", "value": {"cpu": "2", "memory": "2Gi"}},
    )
    allowed = patch(
        {"op": "add", "path": "/containers/0/image", "value": "registry.example.com/x:1"},
        {"op": "add", "path": "/volumes/-", "value": {"name": "s", "secret": {"secretName": "shared"}}},
        {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "pull"}},
        {"op": "add", "path": "/containers/0/resources/limits", "value": {"cpu": "1000m", "memory": "1Gi"}},
    )

    assert {
        (v.rule, v.field.split(" ")[0])
        for v in violations(policy, make({"spout.podPatch": refused}), NAMESPACE)
    } == {
        ("policy.images", "spout.podPatch[0]"),
        ("policy.secrets", "spout.podPatch[1]"),
        ("policy.secrets", "spout.podPatch[2]"),
        ("policy.imagePullSecrets", "spout.podPatch[3]"),
        ("policy.resources.limits.cpu", "spout.podPatch[4]"),
        ("policy.resources.limits.memory", "spout.podPatch[4]"),
    }
    assert found(policy, make({"spout.podPatch": allowed})) == set()


def test_a_pod_patch_message_names_the_op_and_what_it_writes() -> None:
    spec = make({"spout.podPatch": patch({"op": "add", "path": "/volumes/-", "value": HOST_PATH})})
    [violation] = violations(PATCHES_ALLOWED, spec, NAMESPACE)

    assert str(violation) == (
        'policy.podPatch.capabilities: spout.podPatch[0] add "/volumes/-" writes /volumes/-/hostPath: '
        "needs capability HostPath, which this connection does not grant"
    )


# --- projects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "namespace", "project", "allowed"),
    [
        (None, "team-a", "team-a", True),
        (None, "team-a", "team-b", False),
        (None, "team-a", "default", False),
        ({"allowDefault": True}, "team-a", "default", True),
        ({"allowDefault": True}, "team-a", "team-b", False),
        ({"mode": "Shared", "names": ["analytics"]}, "team-a", "analytics", True),
        ({"mode": "Shared", "names": ["analytics"]}, "team-b", "analytics", True),
        ({"mode": "Shared", "names": ["analytics"]}, "team-a", "team-b", False),
        ({"mode": "Shared", "names": ["analytics"]}, "team-a", "team-a", True),
        ({"mode": "Shared", "names": ["analytics"]}, "team-a", "default", False),
        ({"mode": "Shared", "names": ["default"]}, "team-a", "default", True),
    ],
)
def test_projects(raw: Any, namespace: str, project: str, allowed: bool) -> None:
    policy = parse_policy({"projects": raw} if raw is not None else None, "t")

    assert project_allowed(policy, namespace, project) is allowed
    expected = set() if allowed else {("policy.projects", "project")}
    assert found(policy, make(project=project), namespace) == expected


def test_the_project_denial_lists_what_the_namespace_may_use() -> None:
    policy = parse_policy({"projects": {"allowDefault": True}}, "t")
    [violation] = violations(policy, make(project="team-b"), NAMESPACE)

    assert str(violation) == (
        'policy.projects: project "team-b" is not a project namespace team-a may use '
        "(allowed: team-a, default)"
    )


# --- parse_policy errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("open", "policy must be an object"),
        ({"image": {"allowed": ["reg.io/*"]}}, "unknown field(s) image"),
        ({"images": {"allowed": []}}, "policy.images.allowed is empty"),
        ({"images": {"allowed": "x/*"}}, "policy.images.allowed must be a list"),
        ({"images": {"allowed": ["busybox:*"]}}, "'busybox:*' names no registry"),
        ({"images": {"allowed": ["team/*"]}}, "'team/*' names no registry"),
        ({"images": {"requireDigest": "yes"}}, "policy.images.requireDigest must be true or false"),
        ({"secrets": [""]}, "policy.secrets must be a list of non-empty strings"),
        ({"podPatch": {"allowed": 1}}, "policy.podPatch.allowed must be true or false"),
        ({"podPatch": {"capabilities": ["Root"]}}, "'Root' is not one of HostNetwork"),
        ({"podPatch": {"paths": ["tolerations"]}}, "policy.podPatch.paths must list JSON Pointers"),
        ({"user": {"allowRoot": "true"}}, "policy.user.allowRoot must be true or false"),
        (
            {"resources": {"requests": {"cpu": "lots"}}},
            "policy.resources.requests.cpu is not a Kubernetes quantity",
        ),
        (
            {"resources": {"limits": {"memory": "-1Gi"}}},
            "policy.resources.limits.memory must not be negative",
        ),
        (
            {"resources": {"limits": {"gpu": -1}}},
            "policy.resources.limits.gpu must be a non-negative integer",
        ),
        (
            {"resources": {"maxParallelism": True}},
            "policy.resources.maxParallelism must be a non-negative integer",
        ),
        ({"resources": {"requests": {"cpus": "1"}}}, "unknown field(s) cpus"),
        ({"projects": {"mode": "Open"}}, "'Open' is not one of PerNamespace, Shared"),
        ({"projects": {"names": ["shared"]}}, "names is only read with mode Shared"),
        ({"projects": {"mode": "Shared", "names": ["a/b"]}}, "not pachd project names: a/b"),
    ],
)
def test_parse_policy_refuses_invalid_input(raw: Any, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(raw, "ClusterPachdConnection shared")

    assert str(caught.value).startswith("ClusterPachdConnection shared: policy")
    assert message in str(caught.value)


def test_parse_policy_reads_every_field() -> None:
    policy = parse_policy(
        {
            "images": {"allowed": ["registry.example.com/*"], "requireDigest": True},
            "secrets": ["a"],
            "imagePullSecrets": ["b"],
            "podPatch": {"allowed": True, "paths": ["/tolerations"], "capabilities": ["HostPath"]},
            "user": {"allowRoot": True},
            "resources": {
                "requests": {"cpu": "1", "gpu": 2},
                "maxParallelism": 4,
                "gpuTypes": ["nvidia.com/gpu"],
            },
            "projects": {"mode": "Shared", "names": ["x"], "allowDefault": True},
        },
        "t",
    )

    assert policy.images.allowed == ("registry.example.com/*",)
    assert policy.images.require_digest is True
    assert policy.secrets == {"a"}
    assert policy.image_pull_secrets == {"b"}
    assert policy.pod_patch.paths == ("/tolerations",)
    assert policy.pod_patch.capabilities == {PodCapability.HOST_PATH}
    assert policy.allow_root is True
    assert policy.resources.requests.cpu is not None
    assert policy.resources.requests.cpu.value == 1
    assert policy.resources.requests.gpu == 2
    assert policy.resources.limits.cpu is None
    assert policy.resources.max_parallelism == 4
    assert policy.resources.gpu_types == ("nvidia.com/gpu",)
    assert allowed_projects(policy, NAMESPACE) == (NAMESPACE, "x", "default")


def test_a_violation_reads_as_rule_field_message() -> None:
    violation = Violation(
        "policy.user.allowRoot", "spout.transform.user", '"root" runs the code as root (uid 0)'
    )

    assert (
        str(violation) == 'policy.user.allowRoot: spout.transform.user "root" runs the code as root (uid 0)'
    )
    assert summary([violation, violation]) == f"{violation}; {violation}"


# --- the CRDs describe what the parser reads --------------------------------------------------------


def policy_schema(file: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / file).read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]["properties"]["policy"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("file", ["pachdconnections.yaml", "clusterpachdconnections.yaml"])
def test_the_crd_policy_schema_has_the_fields_the_parser_reads(file: str) -> None:
    schema = policy_schema(file)
    props = schema["properties"]

    assert set(props) == POLICY_KEYS
    assert set(props["images"]["properties"]) == IMAGES_KEYS
    assert set(props["podPatch"]["properties"]) == POD_PATCH_KEYS
    assert set(props["user"]["properties"]) == USER_KEYS
    assert set(props["resources"]["properties"]) == RESOURCES_KEYS
    assert set(props["resources"]["properties"]["requests"]["properties"]) == CEILING_KEYS
    assert set(props["resources"]["properties"]["limits"]["properties"]) == CEILING_KEYS
    assert set(props["projects"]["properties"]) == PROJECTS_KEYS
    assert props["podPatch"]["properties"]["capabilities"]["items"]["enum"] == [
        c.value for c in PodCapability
    ]
    assert props["projects"]["properties"]["mode"]["enum"] == [m.value for m in ProjectMode]
    # No schema default: an unset field must reach the parser unset, which is its safe default.
    assert not has_default(schema)


def has_default(node: Any) -> bool:
    if isinstance(node, dict):
        return any((key == "default" and "type" in node) or has_default(v) for key, v in node.items())
    return isinstance(node, list) and any(has_default(v) for v in node)


def test_both_connection_kinds_have_the_same_policy_schema() -> None:
    assert policy_schema("pachdconnections.yaml") == policy_schema("clusterpachdconnections.yaml")


@pytest.mark.parametrize("text", ["500m", "2", "2Gi", "1G", "1e3", ".5", "1.5Ki"])
def test_the_crd_quantity_pattern_accepts_what_the_parser_accepts(text: str) -> None:
    pattern = policy_schema("pachdconnections.yaml")["properties"]["resources"]["properties"]["requests"][
        "properties"
    ]["cpu"]["pattern"]
    assert re.search(pattern, text)
    assert parse_quantity(text) >= 0


# --- issue 22: spout services, scheduling, tolerations, egress, s3Out, sidecar resources ------------

SERVICE = {"internalPort": 8080, "externalPort": 30080}
# A table of cases for one parametrized test: rows alike in shape are different cases, each
# with its own id, kept as data (the logic they share is the test below, written once).
NEW_FIELD_ESCALATIONS = [
    pytest.param(
        {"spout.service": {**SERVICE, "type": "NodePort"}},
        ("policy.services.types", "spout.service.type"),
        '"NodePort" is not a Service type this connection allows (ClusterIP): it makes the spout '
        "reachable from outside the cluster",
        id="service-nodeport",
    ),
    pytest.param(
        {"spout.service": {**SERVICE, "type": "LoadBalancer"}},
        ("policy.services.types", "spout.service.type"),
        '"LoadBalancer" is not a Service type',
        id="service-loadbalancer",
    ),
    pytest.param(
        {"spout.service": SERVICE},
        ("policy.services.types", "spout.service.type"),
        '"NodePort" (unset means NodePort, pachd\'s default) is not a Service type',
        id="service-without-type-is-nodeport",
    ),
    pytest.param(
        {"spout.schedulingSpec": {"nodeSelector": {"pool": "finance"}}},
        ("policy.scheduling.nodeSelector", 'spout.schedulingSpec.nodeSelector["pool"]'),
        "selects nodes by a label this connection does not allow (allowed keys: none)",
        id="node-selector",
    ),
    pytest.param(
        {"processor.schedulingSpec": {"priorityClassName": "system-cluster-critical"}},
        ("policy.scheduling.priorityClassNames", "processor.schedulingSpec.priorityClassName"),
        '"system-cluster-critical" is not a priority class this connection allows (none)',
        id="priority-class",
    ),
    pytest.param(
        {"processor.tolerations": [{"key": "nvidia.com/gpu", "operator": "EXISTS"}]},
        ("policy.scheduling.tolerationKeys", "processor.tolerations[0].key"),
        '"nvidia.com/gpu" is not a taint key this connection lets pods tolerate (none)',
        id="toleration",
    ),
    pytest.param(
        {"spout.tolerations": [{"operator": "EXISTS"}]},
        ("policy.scheduling.tolerationKeys", "spout.tolerations[0].key"),
        "a toleration without a key (it tolerates every taint) is not a taint key",
        id="toleration-of-everything",
    ),
    pytest.param(
        {"processor.egress": {"URL": "s3://attacker/loot"}},
        ("policy.egress", "processor.egress"),
        "is set, and this connection allows no egress (egress.allowed): it copies the output outside pachd",
        id="egress",
    ),
    pytest.param(
        {"processor.s3Out": True},
        ("policy.s3Out", "processor.s3Out"),
        "is true, and this connection allows no s3Out (s3Out.allowed)",
        id="s3out",
    ),
]


@pytest.mark.parametrize(("changes", "expected", "message"), NEW_FIELD_ESCALATIONS)
def test_each_new_field_is_refused_by_a_connection_that_says_nothing(
    changes: dict[str, Any], expected: tuple[str, str], message: str
) -> None:
    found_now = violations(Policy(), make(changes), NAMESPACE)
    assert {(v.rule, v.field) for v in found_now} == {expected}
    assert message in found_now[0].message
    assert str(found_now[0]).startswith(f"{expected[0]}: {expected[1]} ")


GRANTS = parse_policy(
    {
        "services": {"types": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "scheduling": {
            "nodeSelector": {"pool": ["finance", "batch"], "topology.kubernetes.io/zone": ["*"]},
            "priorityClassNames": ["spouts"],
            "tolerationKeys": ["dedicated", "nvidia.com/gpu"],
        },
        "egress": {"allowed": True, "urls": ["s3://team-bucket/*", "postgres://db.team.svc:5432/*"]},
        "s3Out": {"allowed": True},
        "secrets": ["team-db"],
    },
    "test",
)


@pytest.mark.parametrize(
    "changes",
    [
        {"spout.service": SERVICE},
        {"spout.service": {**SERVICE, "type": "LoadBalancer"}},
        {"spout.schedulingSpec": {"nodeSelector": {"pool": "batch", "topology.kubernetes.io/zone": "eu-1a"}}},
        {"processor.schedulingSpec": {"priorityClassName": "spouts"}},
        {"processor.tolerations": [{"key": "dedicated", "operator": "EQUAL", "value": "x"}]},
        {"processor.egress": {"URL": "s3://team-bucket/out"}},
        {"processor.egress": {"objectStorage": {"url": "s3://team-bucket/a/b"}}},
        {
            "processor.egress": {
                "sqlDatabase": {
                    "url": "postgres://db.team.svc:5432/results",
                    "secret": {"name": "team-db", "key": "password"},
                }
            }
        },
        {"processor.s3Out": True},
    ],
    ids=lambda c: next(iter(c.values())).__repr__()[:40],
)
def test_each_new_field_passes_when_the_policy_allows_it(changes: dict[str, Any]) -> None:
    assert violations(GRANTS, make(changes), NAMESPACE) == []


def test_a_clusterip_service_passes_the_default_policy() -> None:
    assert violations(Policy(), make({"spout.service": {**SERVICE, "type": "ClusterIP"}}), NAMESPACE) == []


def test_an_empty_service_type_list_allows_no_service() -> None:
    policy = parse_policy({"services": {"types": []}}, "test")
    found_now = violations(policy, make({"spout.service": {**SERVICE, "type": "ClusterIP"}}), NAMESPACE)
    assert [(v.rule, v.field) for v in found_now] == [("policy.services.types", "spout.service.type")]
    assert "(none)" in found_now[0].message


@pytest.mark.parametrize(
    ("changes", "expected", "message"),
    [
        (
            {"spout.schedulingSpec": {"nodeSelector": {"pool": "finance-secret"}}},
            ("policy.scheduling.nodeSelector", 'spout.schedulingSpec.nodeSelector["pool"]'),
            '"finance-secret" is not an allowed value (finance, batch)',
        ),
        (
            {"spout.schedulingSpec": {"nodeSelector": {"kubernetes.io/hostname": "node-7"}}},
            ("policy.scheduling.nodeSelector", 'spout.schedulingSpec.nodeSelector["kubernetes.io/hostname"]'),
            "allowed keys: pool, topology.kubernetes.io/zone",
        ),
        (
            {"spout.schedulingSpec": {"priorityClassName": "system-node-critical"}},
            ("policy.scheduling.priorityClassNames", "spout.schedulingSpec.priorityClassName"),
            "(spouts)",
        ),
        (
            {"spout.tolerations": [{"key": "dedicated", "operator": "EXISTS"}, {"operator": "EXISTS"}]},
            ("policy.scheduling.tolerationKeys", "spout.tolerations[1].key"),
            "a toleration without a key",
        ),
        (
            {"processor.egress": {"URL": "s3://team-bucket-evil/x"}},
            ("policy.egress.urls", "processor.egress.URL"),
            '"s3://team-bucket-evil/x" does not match any allowed pattern',
        ),
        (
            {"processor.egress": {"sqlDatabase": {"url": "postgres://elsewhere:5432/db"}}},
            ("policy.egress.urls", "processor.egress.sqlDatabase.url"),
            "does not match any allowed pattern",
        ),
        (
            {
                "processor.egress": {
                    "sqlDatabase": {
                        "url": "postgres://db.team.svc:5432/x",
                        "secret": {"name": "pachd-auth-token", "key": "auth-token"},
                    }
                }
            },
            ("policy.secrets", "processor.egress.sqlDatabase.secret.name"),
            "is not a Secret of pachd's namespace this connection allows (team-db)",
        ),
    ],
)
def test_what_the_policy_does_not_list_is_still_refused(
    changes: dict[str, Any], expected: tuple[str, str], message: str
) -> None:
    found_now = violations(GRANTS, make(changes), NAMESPACE)
    assert [(v.rule, v.field) for v in found_now] == [expected]
    assert message in found_now[0].message


def test_a_star_toleration_key_allows_any_toleration() -> None:
    policy = parse_policy({"scheduling": {"tolerationKeys": ["*"]}}, "test")
    spec = make({"spout.tolerations": [{"operator": "EXISTS"}, {"key": "x", "operator": "EXISTS"}]})
    assert violations(policy, spec, NAMESPACE) == []


@pytest.mark.parametrize("side", ["Requests", "Limits"])
def test_sidecar_resources_are_held_to_the_same_ceilings(side: str) -> None:
    kind = side.lower()
    policy = parse_policy({"resources": {kind: {"cpu": "1", "memory": "1Gi"}}}, "test")
    spec = make({f"spout.sidecarResource{side}": {"cpu": 4, "memory": "512Mi"}})
    assert found(policy, spec) == {(f"policy.resources.{kind}.cpu", f"spout.sidecarResource{side}.cpu")}
    gpu = make({f"processor.sidecarResource{side}": {"gpu": {"type": "nvidia.com/gpu", "number": 1}}})
    assert found(Policy(), gpu) == {
        (f"policy.resources.{kind}.gpu", f"processor.sidecarResource{side}.gpu.number")
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"services": {"types": ["ExternalName"]}}, "policy.services.types: 'ExternalName' is not one of"),
        ({"services": {"type": ["NodePort"]}}, "policy.services has unknown field(s) type"),
        ({"scheduling": {"nodeSelector": {"pool": []}}}, "policy.scheduling.nodeSelector.pool is empty"),
        ({"scheduling": {"nodeSelector": ["pool"]}}, "policy.scheduling.nodeSelector must map"),
        ({"scheduling": {"tolerations": ["x"]}}, "policy.scheduling has unknown field(s) tolerations"),
        ({"egress": {"allowed": "yes"}}, "policy.egress.allowed must be true or false"),
        ({"egress": {"allowed": True, "urls": []}}, "policy.egress.urls is empty"),
        ({"s3Out": True}, "policy.s3Out must be an object"),
    ],
)
def test_a_bad_new_rule_makes_the_policy_unusable(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_policy(raw, "test")


def test_the_defaults_of_the_new_rules() -> None:
    policy = Policy()
    assert {t.value for t in policy.service_types} == {"ClusterIP"}
    assert policy.scheduling == SchedulingRule()
    assert policy.egress.allowed is False and policy.s3_out is False


@pytest.mark.parametrize("file", ["pachdconnections.yaml", "clusterpachdconnections.yaml"])
def test_the_crd_policy_schema_has_the_new_rules(file: str) -> None:
    props = policy_schema(file)["properties"]
    assert set(props["services"]["properties"]) == SERVICES_KEYS
    assert props["services"]["properties"]["types"]["items"]["enum"] == [t.value for t in ServiceType]
    assert set(props["scheduling"]["properties"]) == SCHEDULING_KEYS
    assert set(props["egress"]["properties"]) == EGRESS_KEYS
    assert set(props["s3Out"]["properties"]) == S3_OUT_KEYS
