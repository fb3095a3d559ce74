"""The operator's Kubernetes API session for blocking work (status writes, connection
reads, the worker watch), and kopf's own login on a bounded connection pool.

Blocking calls here run in worker threads, never on kopf's event loop.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import aiohttp
import kopf
import kubernetes

from spout_operator import metrics, tracing
from spout_operator.names import GROUP, PLURAL, VERSION

API_CONNECTIONS = 10  # kopf's connections for requests to the API server (its default: no limit)
WATCH_TIMEOUT_S = 60  # the server ends each watch after this; it is opened again at once
RETRY_S = 1.0  # after a failed listing or watch, list again this much later

log = logging.getLogger(__name__)


class Kube:
    """One API client shared by every thread (each new one builds its own TLS context and pool)."""

    def __init__(self, pool_size: int) -> None:
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        config = kubernetes.client.Configuration.get_default_copy()
        config.connection_pool_maxsize = pool_size
        self.api = kubernetes.client.ApiClient(config)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Replace .status as a whole (a JSON patch `add /status`), so keys that no longer
        hold go with it: a merge patch would keep, say, a pipeline's old foreignOwner.
        Returns whether it was written (a resource already gone counts as done)."""
        patch = [{"op": "add", "path": "/status", "value": status}]
        try:
            with tracing.step("status write"):
                self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    patch,
                    _content_type="application/json-patch+json",
                )
        except kubernetes.client.ApiException as err:  # the next pass writes it again
            if err.status == 404:
                return True
            log.warning(f"Status write for {namespace}/{name} failed: {err.reason}")
            return False
        metrics.STATUS_WRITES.inc()
        return True

    def merge_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch the status of one of our objects (namespaced, or cluster-scoped when
        `namespace` is empty); whether it was written."""
        try:
            if namespace:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, {"status": status}
                )
            else:
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, name, {"status": status}
                )
        except kubernetes.client.ApiException as err:  # deleted meanwhile, or the API hiccuped
            log.warning(f"Status write for {plural}/{name} failed: {err.reason}")
            return False
        return True

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def login_session(
    logger: kopf.Logger, settings: kopf.OperatorSettings, watches: int
) -> kopf.AiohttpSession | None:
    """kopf's own login, on an HTTP session with a bounded number of connections.

    kopf's default session opens a TLS connection for every request in flight (about 80
    when 500 resources arrive at once), and what they allocate stays in the process:
    RSS 171 MB at 500 resources, 152 MB with 10 connections for requests. Each watch
    stream holds a connection for as long as it runs, so those come on top.
    """
    info = kopf.login_via_client(logger=logger, settings=settings)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=API_CONNECTIONS + watches, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


class ListWatch:
    """Lists, then watches, one kind of object in one namespace, from a thread of its own
    (the blocking client stays off kopf's loop), and lists again after any error. A subclass
    says what a listing and each event mean (`listed`, `event`), on that thread."""

    def __init__(self, core: Any, list_method: str, namespace: str, selector: str, name: str) -> None:
        self._core, self._list_method = core, list_method  # e.g. CoreV1Api, "list_namespaced_pod"
        self.namespace, self._selector = namespace, selector
        self._stop = threading.Event()
        self._watch: kubernetes.watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def listed(self, items: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED, with the object as the server sent it."""
        raise NotImplementedError

    def failed(self, err: Exception) -> None:
        log.warning(f"Watch {self._thread.name} restarts: {err}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._relist()
                while not self._stop.is_set():
                    version = self._follow(version)
            except Exception as err:  # API server away, 410 Gone, Forbidden: list again shortly
                if not self._stop.is_set():
                    self.failed(err)
                self._stop.wait(RETRY_S)

    def _relist(self) -> str:
        listing = getattr(self._core, self._list_method)(
            self.namespace, label_selector=self._selector, _request_timeout=30
        )
        raw: dict[str, Any] = self._core.api_client.sanitize_for_serialization(listing)
        self.listed(raw.get("items") or [])
        return str(raw["metadata"]["resourceVersion"])

    def _follow(self, version: str) -> str:
        self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        for event in self._watch.stream(  # type: ignore[no-untyped-call]
            getattr(self._core, self._list_method),
            self.namespace,
            label_selector=self._selector,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_S,
            _request_timeout=WATCH_TIMEOUT_S + 10,
        ):
            if event["type"] == "ERROR":
                raise RuntimeError(f"watch error: {event['raw_object'].get('message')}")
            obj = event["raw_object"]
            version = str(obj["metadata"]["resourceVersion"])
            self.event(event["type"], obj)
        return version
