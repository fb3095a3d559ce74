"""PachdConnection and ClusterPachdConnection, as values: parsed, who may use one, its status.

A SpoutPipeline only names a connection (spec.connectionRef); the address, the TLS roots
and the auth token live in the connection, which an admin owns. So no tenant chooses where
a token goes, and no tenant names a Secret that the operator then sends somewhere:

- a PachdConnection serves SpoutPipelines of its own namespace and reads Secrets and
  ConfigMaps there only;
- a ClusterPachdConnection serves the namespaces it lists or selects, and reads Secrets and
  ConfigMaps of the operator's own namespace only;
- a token Secret must carry TOKEN_LABEL: only someone able to write (hence read) that Secret
  can mark it, so a connection can never be used to send out any other Secret's value.

Pure: resolver.py does the Kubernetes reads, connection_checks.py asks pachd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spout_operator.conditions import Condition, render_conditions
from spout_operator.names import (
    CLUSTER_CONNECTION,
    CLUSTER_PLURAL,
    GROUP,
    NAMESPACED_CONNECTION,
    NAMESPACED_PLURAL,
)
from spout_operator.policy import Policy, PolicyError, parse_policy

PLURALS = {NAMESPACED_CONNECTION: NAMESPACED_PLURAL, CLUSTER_CONNECTION: CLUSTER_PLURAL}
TOKEN_LABEL = f"{GROUP}/pachd-auth-token"  # value "true": this Secret may be sent to its pachd
DEFAULT_TOKEN_KEY = "auth-token"
DEFAULT_CA_KEY = "ca.crt"
SECRET_READER_ROLE = "spout-operator-connection-reader"  # the ClusterRole to bind per namespace


class ConnectionProblem(Exception):
    """A SpoutPipeline cannot use its connection. Its message names objects, never values.

    `permanent`: the connection, Secret or permission is missing or invalid (an admin must
    act), as opposed to an API server that failed to answer."""

    def __init__(self, condition_reason: str, message: str, permanent: bool = True) -> None:
        super().__init__(message)
        self.condition_reason = condition_reason
        self.permanent = permanent


@dataclass(frozen=True)
class KeyRef:
    """One key of a Secret or ConfigMap in the namespace the connection reads from."""

    kind: str  # Secret or ConfigMap
    name: str
    key: str


@dataclass(frozen=True)
class LabelSelector:
    match_labels: Mapping[str, str]
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...]  # key, operator, values

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: every term must hold; an empty selector matches everything."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, operator, values in self.match_expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class ConnectionSpec:
    kind: str
    name: str
    secrets_namespace: str  # the only namespace whose Secrets/ConfigMaps it may read
    address: str
    tls: bool
    ca: KeyRef | None
    token: KeyRef | None
    # ClusterPachdConnection only: who may use it (PachdConnection: its own namespace).
    namespaces: tuple[str, ...] = ()
    namespace_selector: LabelSelector | None = None
    policy: Policy = field(default_factory=Policy)  # what SpoutPipelines using it may declare

    @property
    def needs_namespace_labels(self) -> bool:
        selector = self.namespace_selector
        return self.kind == CLUSTER_CONNECTION and bool(
            selector is not None and (selector.match_labels or selector.match_expressions)
        )

    def allows(self, namespace: str, labels: Mapping[str, str] | None = None) -> bool:
        """Whether SpoutPipelines of `namespace` may use this connection."""
        if self.kind == NAMESPACED_CONNECTION:
            return namespace == self.secrets_namespace
        if namespace in self.namespaces:
            return True
        return self.namespace_selector is not None and self.namespace_selector.matches(labels or {})


def parse_connection(kind: str, body: Mapping[str, Any], operator_namespace: str) -> ConnectionSpec:
    """The typed form of a connection object; ConnectionProblem(ConnectionInvalid) if unusable."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    name = str(meta.get("name", ""))
    where = f"{kind} {name}"
    secrets_namespace = str(meta.get("namespace") or "") if kind == NAMESPACED_CONNECTION else ""
    if kind == CLUSTER_CONNECTION:
        secrets_namespace = operator_namespace
    address = str(spec.get("address") or "")
    if not address:
        raise ConnectionProblem("ConnectionInvalid", f"{where} has no address")
    tls_raw = spec.get("tls") or {}
    ca = None
    if tls_raw.get("caSecretRef") and tls_raw.get("caConfigMapRef"):
        raise ConnectionProblem("ConnectionInvalid", f"{where}: set caSecretRef or caConfigMapRef, not both")
    for field_name, ca_kind in (("caSecretRef", "Secret"), ("caConfigMapRef", "ConfigMap")):
        ref = tls_raw.get(field_name)
        if ref:
            ca = KeyRef(
                ca_kind, _required(ref, "name", f"{where} tls.{field_name}"), ref.get("key") or DEFAULT_CA_KEY
            )
    token = None
    token_raw = spec.get("authTokenSecretRef")
    if token_raw:
        token_name = _required(token_raw, "name", f"{where} authTokenSecretRef")
        token = KeyRef("Secret", token_name, str(token_raw.get("key") or DEFAULT_TOKEN_KEY))
    namespaces: tuple[str, ...] = ()
    selector = None
    if kind == CLUSTER_CONNECTION:
        namespaces = tuple(str(n) for n in spec.get("namespaces") or ())
        if spec.get("namespaceSelector") is not None:
            selector = parse_selector(spec["namespaceSelector"], where)
    try:
        policy = parse_policy(spec.get("policy"), where)
    except PolicyError as err:
        raise ConnectionProblem("ConnectionInvalid", str(err)) from None
    return ConnectionSpec(
        kind=kind,
        name=name,
        secrets_namespace=secrets_namespace,
        address=address,
        tls=bool(tls_raw.get("enabled")) or ca is not None or address.startswith(("grpcs://", "https://")),
        ca=ca,
        token=token,
        namespaces=namespaces,
        namespace_selector=selector,
        policy=policy,
    )


def parse_selector(raw: Mapping[str, Any], where: str) -> LabelSelector:
    expressions = []
    for term in raw.get("matchExpressions") or ():
        operator = str(term.get("operator"))
        values = tuple(str(v) for v in term.get("values") or ())
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ConnectionProblem("ConnectionInvalid", f"{where}: unknown selector operator {operator!r}")
        if (operator in ("In", "NotIn")) != bool(values):
            raise ConnectionProblem(
                "ConnectionInvalid", f"{where}: operator {operator} and its values disagree"
            )
        expressions.append((str(term.get("key")), operator, values))
    labels = {str(k): str(v) for k, v in (raw.get("matchLabels") or {}).items()}
    return LabelSelector(labels, tuple(expressions))


def _required(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not value:
        raise ConnectionProblem("ConnectionInvalid", f"{where}.{key} is required")
    return str(value)


@dataclass(frozen=True)
class CheckResult:
    ready: bool
    reason: str
    message: str
    version: str = ""


def connection_status(
    result: CheckResult, generation: int, previous: Mapping[str, Any], now: str
) -> dict[str, Any]:
    """The `.status` of a connection (pure). Holds no token, only what pachd answered."""
    condition = Condition("Ready", result.ready, result.reason, result.message)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": render_conditions([condition], previous.get("conditions"), now, generation),
    }
    if result.version:
        status["pachdVersion"] = result.version
    return status
