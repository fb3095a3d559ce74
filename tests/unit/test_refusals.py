"""What the integration tests count as the API server refusing the operator."""

from __future__ import annotations

from devstack.testing import refusals


def test_a_refusal_is_found_as_the_client_and_kopf_log_it() -> None:
    output = "\n".join(
        [
            "[2026-12-07 06:45:48,403] kopf.objects [INFO] [default] Handler 'connection_seen' succeeded.",
            "kubernetes.client.exceptions.ApiException: (403)",
            "Reason: Forbidden",
            "Watch workers-pachyderm restarts: 403 Forbidden",
        ]
    )
    assert refusals(output) == output.splitlines()[1:]


def test_milliseconds_are_not_a_refusal() -> None:
    assert refusals("[2026-12-07 06:45:48,403] kopf.objects [INFO] ok\n[06:45:50,403] done") == []
