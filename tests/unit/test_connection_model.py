"""Connections without a cluster: parsing, who may use one, what Secrets are read where,
the status they get, the deletion rule and the gateway pool (fake Kubernetes APIs)."""

from __future__ import annotations

import base64
import time
from types import SimpleNamespace
from typing import Any

import kubernetes
import pytest
from spout_operator import gateway as gateway_module
from spout_operator.connection_checks import check
from spout_operator.connection_model import (
    TOKEN_LABEL,
    CheckResult,
    ConnectionProblem,
    KeyRef,
    connection_status,
    parse_connection,
)
from spout_operator.gateway import Gateway, Gateways
from spout_operator.observed import ObservedPipeline
from spout_operator.ownership import finish_without_pachd, managed_entry, recorded_connection, wrote_to_pachd
from spout_operator.pachd_api import Endpoint, PachdRejected, PachdUnavailable
from spout_operator.plan import PipelinePlan, Step
from spout_operator.reconcile import Outcome
from spout_operator.resolver import Resolver
from spout_operator.spec import ConnectionRef

OPERATOR_NS = "spout-operator-system"
TOKEN = "tok-3f9a-very-secret"


def cluster(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "shared"}, "spec": {"address": "grpc://pachd:30650", **spec}}


def namespaced(namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "mine", "namespace": namespace}, "spec": {"address": "pachd:1650", **spec}}


# --- parsing and policy ---------------------------------------------------------------------


def test_cluster_connection_reads_secrets_of_the_operator_namespace_only() -> None:
    spec = parse_connection("ClusterPachdConnection", cluster(authTokenSecretRef={"name": "t"}), OPERATOR_NS)
    assert spec.secrets_namespace == OPERATOR_NS
    assert spec.token == KeyRef("Secret", "t", "auth-token")


def test_namespaced_connection_reads_its_own_namespace_only() -> None:
    spec = parse_connection("PachdConnection", namespaced(authTokenSecretRef={"name": "t"}), OPERATOR_NS)
    assert spec.secrets_namespace == "team-a"
    assert spec.allows("team-a") and not spec.allows("team-b")


@pytest.mark.parametrize(
    ("policy", "namespace", "labels", "allowed"),
    [
        ({}, "anything", {}, False),  # says nothing: nobody may
        ({"namespaces": ["a", "b"]}, "b", {}, True),
        ({"namespaces": ["a"]}, "c", {}, False),
        ({"namespaceSelector": {}}, "c", {}, True),  # {} matches every namespace
        ({"namespaceSelector": {"matchLabels": {"team": "data"}}}, "c", {"team": "data"}, True),
        ({"namespaceSelector": {"matchLabels": {"team": "data"}}}, "c", {"team": "web"}, False),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]}},
            "c",
            {"tier": "x"},
            True,
        ),
        (
            {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]
                }
            },
            "c",
            {"tier": "x"},
            False,
        ),
        ({"namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "Exists"}]}}, "c", {}, False),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}},
            "c",
            {},
            True,
        ),
        ({"namespaces": ["a"], "namespaceSelector": {"matchLabels": {"x": "y"}}}, "a", {}, True),
    ],
)
def test_which_namespaces_a_cluster_connection_allows(
    policy: dict[str, Any], namespace: str, labels: dict[str, str], allowed: bool
) -> None:
    spec = parse_connection("ClusterPachdConnection", cluster(**policy), OPERATOR_NS)
    assert spec.allows(namespace, labels) is allowed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"address": ""}, "has no address"),
        ({"authTokenSecretRef": {"key": "x"}}, "authTokenSecretRef.name is required"),
        ({"tls": {"caSecretRef": {"name": "a"}, "caConfigMapRef": {"name": "b"}}}, "not both"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}}, "disagree"),
    ],
)
def test_unusable_connections_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConnectionProblem, match=message) as caught:
        parse_connection("ClusterPachdConnection", cluster(**spec), OPERATOR_NS)
    assert caught.value.condition_reason == "ConnectionInvalid"


@pytest.mark.parametrize(
    ("spec", "tls"),
    [
        ({}, False),
        ({"tls": {"enabled": True}}, True),
        ({"tls": {"caConfigMapRef": {"name": "ca"}}}, True),  # a CA bundle means TLS
        ({"address": "grpcs://pachd:443"}, True),
    ],
)
def test_tls(spec: dict[str, Any], tls: bool) -> None:
    assert parse_connection("ClusterPachdConnection", cluster(**spec), OPERATOR_NS).tls is tls


# --- what was created, and deletion ---------------------------------------------------------


def observed(name: str) -> ObservedPipeline:
    return ObservedPipeline(name, 1, "RUNNING", False)


def plan(name: str, steps: tuple[Step, ...] = (), foreign: bool = False) -> PipelinePlan:
    return PipelinePlan(name=name, steps=steps, foreign_owner="x/y" if foreign else None)


@pytest.mark.parametrize(
    ("outcome", "wrote"),
    [
        (Outcome(("s", "p"), (), {}, errors={"s": PachdUnavailable("down")}), False),  # never reachable
        (Outcome(("s", "p"), (plan("s"), plan("p")), {"s": None, "p": None}), False),
        (Outcome(("s", "p"), (plan("s", (Step.CREATE,)),), {"s": None}, applied=(("s", Step.CREATE),)), True),
        # a create that timed out may have landed
        (
            Outcome(
                ("s", "p"), (plan("s", (Step.CREATE,)),), {"s": None}, errors={"s": PachdUnavailable("x")}
            ),
            True,
        ),
        # a create pachd refused (e.g. an unknown project) left nothing behind
        (
            Outcome(("s", "p"), (plan("s", (Step.CREATE,)),), {"s": None}, errors={"s": PachdRejected("no")}),
            False,
        ),
        (Outcome(("s", "p"), (plan("s"), plan("p")), {"s": observed("s"), "p": None}), True),
        # someone else's pipeline under our name is not ours to delete
        (Outcome(("s", "p"), (plan("s", foreign=True),), {"s": observed("s")}), False),
    ],
)
def test_wrote_to_pachd(outcome: Outcome, wrote: bool) -> None:
    assert wrote_to_pachd(outcome) is wrote


def test_managed_entry_round_trips() -> None:
    ref = ConnectionRef("PachdConnection", "mine")
    entry = managed_entry(ref, "pachd:1650")
    assert recorded_connection({"managed": entry}) == ref
    assert recorded_connection({}) is None


@pytest.mark.parametrize(
    ("managed", "permanent", "terminating", "waited", "finish"),
    [
        (False, False, False, 0, True),  # nothing created: at once
        (True, True, False, 999, False),  # connection gone, namespace stays: wait (or Orphan)
        (True, True, True, 0, True),  # namespace going, its connection/Secret with it: at once
        (True, False, True, 10, False),  # namespace going, pachd slow: a bounded wait
        (True, False, True, 61, True),
        (True, False, False, 999, False),
    ],
)
def test_when_deletion_may_finish_without_pachd(
    managed: bool, permanent: bool, terminating: bool, waited: float, finish: bool
) -> None:
    assert finish_without_pachd(managed, permanent, terminating, waited, grace_s=60) is finish


# --- status ---------------------------------------------------------------------------------


def test_connection_status_keeps_transition_time_while_ready_holds() -> None:
    first = connection_status(CheckResult(True, "Connected", "ok", "2.6.0"), 3, {}, "t1")
    again = connection_status(CheckResult(True, "Connected", "ok", "2.6.0"), 3, first, "t2")
    assert again == first
    assert first["pachdVersion"] == "2.6.0" and first["observedGeneration"] == 3
    down = connection_status(CheckResult(False, "Unreachable", "gone"), 3, first, "t3")
    assert down["conditions"][0]["lastTransitionTime"] == "t3"


class FakeGateway:
    def __init__(self, version: Exception | str = "2.6.0", auth: Exception | str | None = None) -> None:
        self._version, self._auth = version, auth

    def version(self) -> str:
        if isinstance(self._version, Exception):
            raise self._version
        return self._version

    def auth_check(self) -> str | None:
        if isinstance(self._auth, Exception):
            raise self._auth
        return self._auth


@pytest.mark.parametrize(
    ("gateway", "ready", "reason"),
    [
        (FakeGateway(), True, "Connected"),
        (FakeGateway(auth="robot:spout"), True, "Connected"),
        (FakeGateway(version=PachdUnavailable("pachd unreachable (unavailable)")), False, "Unreachable"),
        (FakeGateway(auth=PachdRejected("provided auth token is corrupted")), False, "AuthRejected"),
    ],
)
def test_check(gateway: FakeGateway, ready: bool, reason: str) -> None:
    spec = parse_connection("ClusterPachdConnection", cluster(), OPERATOR_NS)
    result = check(spec, Endpoint(spec.address, auth_token=TOKEN), gateway)  # type: ignore[arg-type]
    assert (result.ready, result.reason) == (ready, reason)
    assert TOKEN not in result.message


# --- Kubernetes reads (fake APIs) ------------------------------------------------------------


def api_error(status: int) -> kubernetes.client.ApiException:
    return kubernetes.client.ApiException(status=status, reason={403: "Forbidden", 404: "Not Found"}[status])


class FakeCore:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], Any] = {}
        self.config_maps: dict[tuple[str, str], Any] = {}
        self.namespaces: dict[str, Any] = {}
        self.forbidden: set[str] = set()  # namespaces whose Secrets the operator may not read
        self.reads: list[tuple[str, str, str]] = []

    def secret(
        self, namespace: str, name: str, value: str, labelled: bool = True, key: str = "auth-token"
    ) -> None:
        labels = {TOKEN_LABEL: "true"} if labelled else {}
        self.secrets[(namespace, name)] = SimpleNamespace(
            metadata=SimpleNamespace(labels=labels), data={key: base64.b64encode(value.encode()).decode()}
        )

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.reads.append(("Secret", namespace, name))
        if namespace in self.forbidden:
            raise api_error(403)
        if (namespace, name) not in self.secrets:
            raise api_error(404)
        return self.secrets[(namespace, name)]

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        self.reads.append(("ConfigMap", namespace, name))
        if (namespace, name) not in self.config_maps:
            raise api_error(404)
        return self.config_maps[(namespace, name)]

    def read_namespace(self, name: str) -> Any:
        self.reads.append(("Namespace", "", name))
        if name not in self.namespaces:
            raise api_error(404)
        return self.namespaces[name]


class FakeCustom:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> Any:
        if (plural, ns, name) not in self.objects:
            raise api_error(404)
        return self.objects[(plural, ns, name)]

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> Any:
        return self.get_namespaced_custom_object(group, version, "", plural, name)


@pytest.fixture
def apis() -> tuple[FakeCore, FakeCustom, Resolver]:
    core, custom = FakeCore(), FakeCustom()
    return core, custom, Resolver(core, custom, OPERATOR_NS)


def add_cluster(custom: FakeCustom, name: str = "default", **spec: Any) -> None:
    custom.objects[("clusterpachdconnections", "", name)] = {
        "metadata": {"name": name},
        "spec": {"address": "grpc://pachd:30650", **spec},
    }


def test_endpoint_carries_the_token_of_the_connections_own_secret(apis: Any) -> None:
    core, custom, resolver = apis
    add_cluster(custom, namespaceSelector={}, authTokenSecretRef={"name": "tok"})
    core.secret(OPERATOR_NS, "tok", TOKEN + "\n")
    core.secret("tenant", "tok", "the tenant's own value")  # same name elsewhere: never read
    endpoint = resolver.endpoint(ConnectionRef(), "tenant")
    assert endpoint == Endpoint("grpc://pachd:30650", False, TOKEN)
    assert ("Secret", "tenant", "tok") not in core.reads
    assert TOKEN not in repr(endpoint)


def test_a_namespace_not_allowed_reads_no_secret(apis: Any) -> None:
    core, custom, resolver = apis
    add_cluster(custom, namespaces=["team-a"], authTokenSecretRef={"name": "tok"})
    core.secret(OPERATOR_NS, "tok", TOKEN)
    with pytest.raises(ConnectionProblem, match="does not allow namespace intruder") as caught:
        resolver.endpoint(ConnectionRef(), "intruder")
    assert caught.value.condition_reason == "ConnectionNotAllowed"
    assert [r for r in core.reads if r[0] == "Secret"] == []


def test_namespace_selector_reads_the_namespace_labels(apis: Any) -> None:
    core, custom, resolver = apis
    add_cluster(custom, namespaceSelector={"matchLabels": {"team": "data"}})
    core.namespaces["data-1"] = SimpleNamespace(metadata=SimpleNamespace(labels={"team": "data"}))
    core.namespaces["web-1"] = SimpleNamespace(metadata=SimpleNamespace(labels={"team": "web"}))
    assert resolver.endpoint(ConnectionRef(), "data-1").address == "grpc://pachd:30650"
    with pytest.raises(ConnectionProblem):
        resolver.endpoint(ConnectionRef(), "web-1")


def test_an_unlabelled_secret_is_never_sent(apis: Any) -> None:
    """A connection pointed at some other Secret of its namespace (a database password, a
    ServiceAccount token) must not make the operator send that value to pachd."""
    core, custom, resolver = apis
    custom.objects[("pachdconnections", "team-a", "mine")] = namespaced(authTokenSecretRef={"name": "db"})
    core.secret("team-a", "db", TOKEN, labelled=False)
    with pytest.raises(ConnectionProblem, match=TOKEN_LABEL) as caught:
        resolver.endpoint(ConnectionRef("PachdConnection", "mine"), "team-a")
    assert caught.value.condition_reason == "ConnectionSecretNotLabeled"
    assert TOKEN not in str(caught.value)


def test_a_pachd_connection_serves_its_own_namespace_only(apis: Any) -> None:
    _, custom, resolver = apis
    custom.objects[("pachdconnections", "team-a", "mine")] = namespaced()
    assert resolver.endpoint(ConnectionRef("PachdConnection", "mine"), "team-a").address == "pachd:1650"
    with pytest.raises(ConnectionProblem, match="not found") as caught:  # looked up in team-b
        resolver.endpoint(ConnectionRef("PachdConnection", "mine"), "team-b")
    assert caught.value.condition_reason == "ConnectionNotFound"


@pytest.mark.parametrize(
    ("setup", "reason", "message"),
    [
        (
            lambda core: None,
            "ConnectionSecretNotFound",
            "Secret tok (key auth-token) in namespace team-a not found",
        ),
        (
            lambda core: core.forbidden.add("team-a"),
            "ConnectionForbidden",
            "spout-operator-connection-reader",
        ),
        (
            lambda core: core.secret("team-a", "tok", TOKEN, key="other"),
            "ConnectionSecretInvalid",
            "no such key",
        ),
        (lambda core: core.secret("team-a", "tok", "  "), "ConnectionSecretInvalid", "is empty"),
    ],
)
def test_secret_problems_name_the_secret_never_a_value(
    apis: Any, setup: Any, reason: str, message: str
) -> None:
    core, custom, resolver = apis
    custom.objects[("pachdconnections", "team-a", "mine")] = namespaced(authTokenSecretRef={"name": "tok"})
    setup(core)
    with pytest.raises(ConnectionProblem) as caught:
        resolver.endpoint(ConnectionRef("PachdConnection", "mine"), "team-a")
    assert caught.value.condition_reason == reason
    assert message in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_ca_bundle_from_a_config_map_or_a_secret(apis: Any) -> None:
    core, custom, resolver = apis
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    core.config_maps[(OPERATOR_NS, "ca")] = SimpleNamespace(data={"ca.crt": pem}, binary_data=None)
    add_cluster(custom, "cm", namespaceSelector={}, tls={"caConfigMapRef": {"name": "ca"}})
    endpoint = resolver.endpoint(ConnectionRef(name="cm"), "x")
    assert endpoint.ca_bundle == pem.encode() and endpoint.secure
    core.secret(OPERATOR_NS, "ca-secret", pem, labelled=False, key="ca.crt")  # CA: no label needed
    add_cluster(custom, "sec", namespaceSelector={}, tls={"caSecretRef": {"name": "ca-secret"}})
    assert resolver.endpoint(ConnectionRef(name="sec"), "x").ca_bundle == pem.encode()


def test_reads_are_shared_within_a_sweep_and_fresh_after_rotation(apis: Any) -> None:
    core, custom, resolver = apis
    add_cluster(custom, namespaceSelector={}, authTokenSecretRef={"name": "tok"})
    core.secret(OPERATOR_NS, "tok", "old-token")
    sweep = time.monotonic()
    first = [resolver.endpoint(ConnectionRef(), "x", not_before=sweep) for _ in range(5)]
    assert len([r for r in core.reads if r[0] == "Secret"]) == 1  # one read for the sweep's passes
    core.secret(OPERATOR_NS, "tok", "new-token")  # rotated
    after = resolver.endpoint(ConnectionRef(), "x", not_before=time.monotonic())  # the next pass
    assert first[0].auth_token == "old-token" and after.auth_token == "new-token"


# --- gateways -------------------------------------------------------------------------------


def test_pool_keys_gateways_by_endpoint_token_included(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Gateways(timeout_s=0.1, idle_s=60)
    try:
        a = pool.get(Endpoint("127.0.0.1:9", auth_token=TOKEN))
        assert pool.get(Endpoint("127.0.0.1:9", auth_token=TOKEN)) is a
        other_address = pool.get(Endpoint("127.0.0.2:9", auth_token=TOKEN))
        assert other_address is not a and other_address.endpoint.address == "127.0.0.2:9"
        rotated = pool.get(Endpoint("127.0.0.1:9", auth_token="b"))
        assert rotated is not a and len(pool) == 3
        assert TOKEN not in repr(a) and TOKEN not in repr(pool.__dict__)
    finally:
        pool.close()


def test_pool_closes_a_superseded_gateway_once_its_calls_are_over(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[Endpoint] = []
    monkeypatch.setattr(Gateway, "close", lambda self: closed.append(self.endpoint))
    clock = [1000.0]
    monkeypatch.setattr(gateway_module.time, "monotonic", lambda: clock[0])
    pool = Gateways(timeout_s=1.0, idle_s=100)
    old, new = Endpoint("127.0.0.1:9", auth_token="old"), Endpoint("127.0.0.1:9", auth_token="new")
    pool.get(old)
    clock[0] += 1
    pool.get(new)
    assert closed == []  # a call on the old one may still be running
    clock[0] += 3.5  # past two deadlines
    pool.get(new)
    assert closed == [old] and len(pool) == 1
    pool.get(Endpoint("127.0.0.3:9"))
    clock[0] += 101  # idle: closed whoever it belongs to
    pool.get(new)
    assert Endpoint("127.0.0.3:9") in closed


def test_endpoint_repr_holds_no_token_or_ca() -> None:
    endpoint = Endpoint("pachd:1", True, TOKEN, b"PEM")
    assert TOKEN not in repr(endpoint) and "PEM" not in repr(endpoint)
    assert TOKEN not in str(endpoint)
