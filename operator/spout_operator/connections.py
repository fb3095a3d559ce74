"""PachdConnection and ClusterPachdConnection: the admin-owned way to reach a pachd.

A SpoutPipeline only names a connection (spec.connectionRef); the address, the TLS roots
and the auth token live in the connection, which an admin owns. So no tenant chooses where
a token goes, and no tenant names a Secret that the operator then sends somewhere:

- a PachdConnection serves SpoutPipelines of its own namespace and reads Secrets and
  ConfigMaps there only;
- a ClusterPachdConnection serves the namespaces it lists or selects, and reads Secrets and
  ConfigMaps of the operator's own namespace only;
- a token Secret must carry TOKEN_LABEL: only someone able to write (hence read) that Secret
  can mark it, so a connection can never be used to send out any other Secret's value.

The pure parts (parsing, namespace policy, status, the deletion rule) are separate from the
Resolver, which does the Kubernetes reads (blocking: run it in a thread pool).
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import kubernetes

from spout_operator.gateway import Endpoint, Gateway, Gateways, PachdError, PachdRejected, PachdUnavailable
from spout_operator.reconcile import Outcome
from spout_operator.render import GROUP
from spout_operator.spec import CLUSTER_CONNECTION, NAMESPACED_CONNECTION, ConnectionRef
from spout_operator.status import Condition, render_conditions

VERSION = "v1alpha1"
NAMESPACED_PLURAL = "pachdconnections"
CLUSTER_PLURAL = "clusterpachdconnections"
PLURALS = {NAMESPACED_CONNECTION: NAMESPACED_PLURAL, CLUSTER_CONNECTION: CLUSTER_PLURAL}
TOKEN_LABEL = f"{GROUP}/pachd-auth-token"  # value "true": this Secret may be sent to its pachd
DEFAULT_TOKEN_KEY = "auth-token"
DEFAULT_CA_KEY = "ca.crt"
SECRET_READER_ROLE = "spout-operator-connection-reader"  # the ClusterRole to bind per namespace
CACHE_LIMIT = 4096  # entries; a pass reads a few, so this only bounds what deleted objects leave

T = TypeVar("T")


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


# --- What the operator created, and when deletion may finish without pachd -----------------


def wrote_to_pachd(outcome: Outcome) -> bool:
    """Whether this pass may have created something in pachd: a write succeeded, one was
    attempted (a write that timed out may still have landed), or a pipeline of ours exists."""
    if outcome.applied:
        return True
    timed_out = {name for name, err in outcome.errors.items() if isinstance(err, PachdUnavailable)}
    if any(plan.steps and not plan.foreign and plan.name in timed_out for plan in outcome.plans):
        return True
    foreign = {plan.name for plan in outcome.plans if plan.foreign}
    return any(found is not None and name not in foreign for name, found in outcome.observed.items())


def managed_entry(ref: ConnectionRef, address: str) -> dict[str, Any]:
    """status.managed: where the pipelines were created, for deletion to find them."""
    return {"connectionRef": {"kind": ref.kind, "name": ref.name}, "address": address}


def recorded_connection(status: Mapping[str, Any]) -> ConnectionRef | None:
    """The connection status.managed names, or None when nothing was ever created."""
    ref = (status.get("managed") or {}).get("connectionRef")
    if not ref:
        return None
    return ConnectionRef(kind=str(ref.get("kind")), name=str(ref.get("name")))


def finish_without_pachd(
    managed: bool, permanent: bool, namespace_terminating: bool, waited_s: float, grace_s: float
) -> bool:
    """Whether a deletion that cannot reach pachd may still remove the finalizer.

    Nothing created: nothing to delete. In a namespace being deleted, its connection and
    Secret never come back (no object can be created there any more): finish at once when
    they are gone, after `grace_s` when pachd only fails to answer. Otherwise wait; the
    way out is spec.deletionPolicy: Orphan."""
    if not managed:
        return True
    if namespace_terminating:
        return permanent or waited_s >= grace_s
    return False


# --- Status of a connection -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    ready: bool
    reason: str
    message: str
    version: str = ""


def check(spec: ConnectionSpec, endpoint: Endpoint, gateway: Gateway) -> CheckResult:
    """Reachable (pachd answers its version) and the token accepted (pachd's WhoAmI)."""
    try:
        version = gateway.version()
    except PachdError as err:
        return CheckResult(False, "Unreachable", str(err))
    try:
        user = gateway.auth_check()
    except PachdRejected as err:
        return CheckResult(False, "AuthRejected", f"pachd {version} refused the token: {err}", version)
    except PachdError as err:
        return CheckResult(False, "Unreachable", str(err), version)
    if user is None:
        detail = "auth is off on pachd" + (" (the token is not needed)" if endpoint.auth_token else "")
    else:
        detail = f"token accepted as {user}"
    return CheckResult(True, "Connected", f"pachd {version} at {spec.address}: {detail}", version)


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


def checked_status(
    kind: str, body: Mapping[str, Any], resolver: Resolver, gateways: Gateways, now: str
) -> dict[str, Any] | None:
    """A connection's `.status` after one check (blocking: reads Secrets, asks pachd), or None
    when it says nothing new (a quiet check writes nothing)."""
    try:
        spec = parse_connection(kind, body, resolver.operator_namespace)
        endpoint = resolver.connection_endpoint(spec, time.monotonic())
        result = check(spec, endpoint, gateways.get(endpoint))
    except (ConnectionProblem, PachdError) as err:
        reason = err.condition_reason if isinstance(err, ConnectionProblem) else "ConnectionInvalid"
        result = CheckResult(False, reason, str(err))
    previous = body.get("status") or {}
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    new_status = connection_status(result, generation, previous, now)
    return None if all(previous.get(k) == v for k, v in new_status.items()) else new_status


# --- Kubernetes reads -----------------------------------------------------------------------


class Resolver:
    """Turns a connection reference into an Endpoint, reading the connection, the namespace's
    labels and the Secrets/ConfigMaps it names. Blocking; thread-safe.

    Reads are shared the way pachd listings are: a pass says how fresh it needs them
    (`not_before`, a time.monotonic() instant); a sweep's passes share one read per object,
    and a change handler reads afresh. So a rotated token is used from the next pass on."""

    def __init__(self, core_api: Any, custom_api: Any, operator_namespace: str) -> None:
        self._core = core_api
        self._custom = custom_api
        self.operator_namespace = operator_namespace
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._locks: dict[tuple[str, ...], threading.Lock] = {}

    def endpoint(self, ref: ConnectionRef, namespace: str, not_before: float = math.inf) -> Endpoint:
        """The endpoint SpoutPipelines of `namespace` reach through `ref`. Raises
        ConnectionProblem, before anything is sent anywhere, when they may not use it."""
        spec = self.connection(ref, namespace, not_before)
        labels = self._namespace_labels(namespace, not_before) if spec.needs_namespace_labels else {}
        if not spec.allows(namespace, labels):
            raise ConnectionProblem(
                "ConnectionNotAllowed",
                f"{ref} does not allow namespace {namespace} (see its spec.namespaces and namespaceSelector)",
            )
        return self.connection_endpoint(spec, not_before)

    def connection(self, ref: ConnectionRef, namespace: str, not_before: float = math.inf) -> ConnectionSpec:
        where = f"{ref.kind} {ref.name}" + (
            f" in namespace {namespace}" if ref.kind == NAMESPACED_CONNECTION else ""
        )

        def read() -> Any:
            if ref.kind == NAMESPACED_CONNECTION:
                return self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, NAMESPACED_PLURAL, ref.name
                )
            return self._custom.get_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, ref.name)

        key = (ref.kind, namespace if ref.kind == NAMESPACED_CONNECTION else "", ref.name)
        body = self._read(key, not_before, read, where, "ConnectionNotFound")
        return parse_connection(ref.kind, body, self.operator_namespace)

    def connection_endpoint(self, spec: ConnectionSpec, not_before: float = math.inf) -> Endpoint:
        token = None
        if spec.token is not None:
            token = self._value(spec, spec.token, not_before, token=True).decode().strip()
            if not token:
                raise ConnectionProblem(
                    "ConnectionSecretInvalid", f"{self._where(spec, spec.token)} is empty"
                )
        ca = self._value(spec, spec.ca, not_before, token=False) if spec.ca is not None else None
        return Endpoint(spec.address, spec.tls, token, ca)

    def namespace_terminating(self, namespace: str) -> bool:
        try:
            found = self._core.read_namespace(namespace)
        except kubernetes.client.ApiException as err:
            return bool(err.status == 404)  # gone already: as good as terminating
        return found.metadata.deletion_timestamp is not None

    def _namespace_labels(self, namespace: str, not_before: float) -> Mapping[str, str]:
        found = self._read(
            ("Namespace", namespace),
            not_before,
            lambda: self._core.read_namespace(namespace),
            f"namespace {namespace}",
            "ConnectionNotAllowed",
        )
        return dict(found.metadata.labels or {})

    def _where(self, spec: ConnectionSpec, ref: KeyRef) -> str:
        return f"{ref.kind} {ref.name} (key {ref.key}) in namespace {spec.secrets_namespace}"

    def _value(self, spec: ConnectionSpec, ref: KeyRef, not_before: float, token: bool) -> bytes:
        """A key's bytes from the connection's own namespace. The value never enters a message."""
        where = self._where(spec, ref)
        ns = spec.secrets_namespace
        if ref.kind == "Secret":
            obj = self._read(
                ("Secret", ns, ref.name),
                not_before,
                lambda: self._core.read_namespaced_secret(ref.name, ns),
                where,
                "ConnectionSecretNotFound",
            )
            if token and (obj.metadata.labels or {}).get(TOKEN_LABEL) != "true":
                raise ConnectionProblem(
                    "ConnectionSecretNotLabeled",
                    f"Secret {ref.name} in namespace {ns} lacks the label {TOKEN_LABEL}=true that marks "
                    "it as a pachd token (only Secrets marked so are ever sent to pachd)",
                )
            encoded = (obj.data or {}).get(ref.key)
            if encoded is None:
                raise ConnectionProblem("ConnectionSecretInvalid", f"{where}: no such key")
            return base64.b64decode(encoded)
        obj = self._read(
            ("ConfigMap", ns, ref.name),
            not_before,
            lambda: self._core.read_namespaced_config_map(ref.name, ns),
            where,
            "ConnectionSecretNotFound",
        )
        if ref.key in (obj.data or {}):
            return str(obj.data[ref.key]).encode()
        if ref.key in (obj.binary_data or {}):
            return base64.b64decode(obj.binary_data[ref.key])
        raise ConnectionProblem("ConnectionSecretInvalid", f"{where}: no such key")

    def _read(
        self, key: tuple[str, ...], not_before: float, read: Callable[[], T], where: str, missing: str
    ) -> T:
        with self._locks.setdefault(key, threading.Lock()):
            cached = self._cache.get(key)
            if cached is not None and cached[0] >= not_before:
                value: T = cached[1]
                return value
            started = time.monotonic()
            try:
                value = read()
            except kubernetes.client.ApiException as err:
                raise _problem(err, where, missing) from None
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = (started, value)
            return value


def _problem(err: kubernetes.client.ApiException, where: str, missing: str) -> ConnectionProblem:
    """An API error as a problem that names the object; never the response body."""
    if err.status == 404:
        return ConnectionProblem(missing, f"{where} not found")
    if err.status == 403:
        return ConnectionProblem(
            "ConnectionForbidden",
            f"the operator may not read {where} (bind ClusterRole {SECRET_READER_ROLE} there)",
        )
    return ConnectionProblem(
        "ConnectionUnavailable", f"reading {where} failed: {err.reason}", permanent=False
    )
