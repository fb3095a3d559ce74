"""The operator's status write: one request that replaces the whole status."""

from __future__ import annotations

from typing import Any

import kubernetes
from spout_operator.kube import Kube


class FakeCustom:
    def __init__(self, error: int | None = None) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.error = error

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise kubernetes.client.ApiException(status=self.error, reason="boom")


def kube(custom: FakeCustom) -> Kube:
    k = Kube.__new__(Kube)  # no API server: only the status write is under test
    k.custom = custom  # type: ignore[assignment]
    return k


def test_write_status_replaces_the_whole_status_in_one_json_patch() -> None:
    custom = FakeCustom()
    status = {"summary": "Ready", "spout": {"name": "s", "state": "RUNNING"}}
    assert kube(custom).write_status("ns", "name", status)
    (args, kwargs) = custom.calls[0]
    assert args[-1] == [{"op": "add", "path": "/status", "value": status}]
    assert kwargs["_content_type"] == "application/json-patch+json"


def test_write_status_reports_failure_and_treats_a_gone_resource_as_done() -> None:
    assert not kube(FakeCustom(error=500)).write_status("ns", "name", {})
    assert kube(FakeCustom(error=404)).write_status("ns", "name", {})
