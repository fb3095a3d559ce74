"""Each connection's Ready: reachable, pachd's version, the token accepted. One loop checks
every known connection each interval, and a new or changed one at once.

No kopf daemon or timer per connection: kopf puts a finalizer on objects that have one,
and a connection must never hold up its namespace's deletion (nor outlive an uninstalled
operator). An event handler keeps the index (ConnectionChecks.seen) without a finalizer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Mapping
from typing import Any

from spout_operator.connection_model import (
    CheckResult,
    ConnectionProblem,
    ConnectionSpec,
    connection_status,
    parse_connection,
)
from spout_operator.gateway import Gateway, Gateways
from spout_operator.kube import Kube
from spout_operator.names import CONNECTION_KINDS
from spout_operator.pachd_api import Endpoint, PachdError, PachdRejected
from spout_operator.resolver import Resolver
from spout_operator.threads import in_pool

ConnectionKey = tuple[str, str, str]  # (plural, namespace or "", name)


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


class ConnectionChecks:
    """The index of connections, and the loop that checks them. Used from the event loop;
    the checks themselves (Secret reads, pachd calls, the status write) run in `executor`."""

    def __init__(
        self,
        resolver: Resolver,
        gateways: Gateways,
        kube: Kube,
        executor: concurrent.futures.Executor,
        interval_s: float,
        now: Callable[[], str],
    ) -> None:
        self._resolver, self._gateways, self._kube = resolver, gateways, kube
        self._executor, self._interval_s, self._now = executor, interval_s, now
        self._index: dict[ConnectionKey, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None

    async def seen(self, event: Mapping[str, Any], body: Mapping[str, Any], plural: str) -> None:
        """A watch event of a connection: index it, and check a new or changed one at once."""
        meta = body.get("metadata", {})
        key = (plural, str(meta.get("namespace") or ""), str(meta.get("name")))
        if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
            self._index.pop(key, None)
            return
        self._index[key] = dict(body)
        if (body.get("status") or {}).get("observedGeneration") != meta.get("generation"):
            await in_pool(self._executor, self._check, key, dict(body))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="connection-checks")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            checks = [
                in_pool(self._executor, self._check, key, body) for key, body in list(self._index.items())
            ]
            await asyncio.gather(*checks, return_exceptions=True)

    def _check(self, key: ConnectionKey, body: dict[str, Any]) -> None:
        """One connection's check and status write (blocking: runs in the pool)."""
        plural, namespace, name = key
        status = checked_status(CONNECTION_KINDS[plural], body, self._resolver, self._gateways, self._now())
        if status is None or not self._kube.merge_status(plural, namespace, name, status):
            return
        if key in self._index:  # so the next check compares against what it wrote, not the old status
            self._index[key] = {**self._index[key], "status": {**(body.get("status") or {}), **status}}
