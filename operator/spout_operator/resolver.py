"""The Kubernetes reads behind a connection reference: the connection, the namespace's
labels, and the Secret or ConfigMap keys it names, turned into an Endpoint.

Blocking (run it in a thread pool); thread-safe. Nothing here asks pachd.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kubernetes

from spout_operator import tracing
from spout_operator.connection_model import (
    SECRET_READER_ROLE,
    TOKEN_LABEL,
    ConnectionProblem,
    ConnectionSpec,
    KeyRef,
    parse_connection,
)
from spout_operator.names import CLUSTER_PLURAL, GROUP, NAMESPACED_CONNECTION, NAMESPACED_PLURAL, VERSION
from spout_operator.pachd_api import Endpoint
from spout_operator.spec import ConnectionRef

CACHE_LIMIT = 4096  # entries; a pass reads a few, so this only bounds what deleted objects leave

T = TypeVar("T")


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
        # The last endpoint resolved through each connection: what a deletion in a namespace
        # being deleted (the connection and its Secret may go first) still reaches pachd with.
        self._last: dict[tuple[str, str, str], Endpoint] = {}
        self._locks: dict[tuple[str, ...], threading.Lock] = {}

    def endpoint(self, ref: ConnectionRef, namespace: str, not_before: float = math.inf) -> Endpoint:
        """The endpoint SpoutPipelines of `namespace` reach through `ref`. Raises
        ConnectionProblem, before anything is sent anywhere, when they may not use it."""
        return self.connection_endpoint(self.allowed_connection(ref, namespace, not_before), not_before)

    def allowed_connection(
        self, ref: ConnectionRef, namespace: str, not_before: float = math.inf
    ) -> ConnectionSpec:
        """The connection `ref` names, if SpoutPipelines of `namespace` may use it at all
        (its policy then says what they may declare); else ConnectionProblem."""
        spec = self.connection(ref, namespace, not_before)
        labels = self._namespace_labels(namespace, not_before) if spec.needs_namespace_labels else {}
        if not spec.allows(namespace, labels):
            raise ConnectionProblem(
                "ConnectionNotAllowed",
                f"{ref} does not allow namespace {namespace} (see its spec.namespaces and namespaceSelector)",
            )
        return spec

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
        endpoint = Endpoint(spec.address, spec.tls, token, ca)
        key = (spec.kind, spec.secrets_namespace if spec.kind == NAMESPACED_CONNECTION else "", spec.name)
        if len(self._last) >= CACHE_LIMIT:
            self._last.clear()
        self._last[key] = endpoint
        return endpoint

    def remembered(self, ref: ConnectionRef, namespace: str) -> Endpoint | None:
        """The endpoint last resolved through `ref` by this process, if any (see _last)."""
        return self._last.get((ref.kind, namespace if ref.kind == NAMESPACED_CONNECTION else "", ref.name))

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
        secret = ref.kind == "Secret"
        kind, read = (
            ("Secret", self._core.read_namespaced_secret)
            if secret
            else ("ConfigMap", self._core.read_namespaced_config_map)
        )
        obj = self._read(
            (kind, ns, ref.name), not_before, lambda: read(ref.name, ns), where, "ConnectionSecretNotFound"
        )
        if secret:
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
                with tracing.step(f"read {key[0]}"):
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
