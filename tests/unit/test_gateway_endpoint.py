"""Unit tests of the gateway's pure parts: pachd endpoint parsing and gRPC error translation.

No channel is opened: Endpoint is a value object, and _translate maps an error object.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import pytest
from spout_operator.gateway import _translate
from spout_operator.pachd_api import DEFAULT_PORT, Endpoint, PachdError, PachdRejected, PachdUnavailable

# --- Endpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "target", "secure"),
    [
        ("grpc://pachd.pachyderm.svc.cluster.local:30650", "pachd.pachyderm.svc.cluster.local:30650", False),
        ("grpcs://pachd.example.com:443", "pachd.example.com:443", True),
        ("pachd:1650", "pachd:1650", False),
        ("127.0.0.1:31650", "127.0.0.1:31650", False),
        ("grpc://pachd", "pachd:30650", False),
        ("grpcs://pachd", "pachd:30650", True),
        ("pachd", "pachd:30650", False),
        ("http://pachd:80", "pachd:80", False),
        ("https://pachd", "pachd:30650", True),
    ],
)
def test_endpoint_target_and_security(address: str, target: str, secure: bool) -> None:
    endpoint = Endpoint(address)
    assert endpoint.target == target
    assert endpoint.secure is secure


def test_default_port_is_the_helm_charts_grpc_port() -> None:
    assert DEFAULT_PORT == 30650


@pytest.mark.parametrize("address", ["grpc://pachd:30650", "pachd:30650", "pachd"])
def test_tls_flag_makes_any_address_secure(address: str) -> None:
    assert Endpoint(address, tls=True).secure is True


@pytest.mark.parametrize("address", ["tcp://pachd:30650", "unix:///var/run/pachd.sock", "ftp://pachd"])
def test_unsupported_scheme_is_rejected(address: str) -> None:
    with pytest.raises(PachdRejected, match="unsupported pachd address scheme"):
        _ = Endpoint(address).target


@pytest.mark.parametrize("address", ["grpc://", "grpc://:30650", ":30650"])
def test_address_without_host_is_rejected(address: str) -> None:
    with pytest.raises(PachdRejected, match="has no host"):
        _ = Endpoint(address).target


@pytest.mark.parametrize("address", ["grpc://pachd:99999", "pachd:70000"])
def test_port_out_of_range_is_rejected(address: str) -> None:
    with pytest.raises(PachdRejected):
        _ = Endpoint(address).target


def test_endpoints_are_hashable_values() -> None:
    # The handlers share one gateway per distinct endpoint, keyed by the Endpoint itself.
    assert Endpoint("pachd:1", False, "t") == Endpoint("pachd:1", False, "t")
    assert len({Endpoint("pachd:1"), Endpoint("pachd:1"), Endpoint("pachd:1", auth_token="t")}) == 2


# --- gRPC error translation -------------------------------------------------------------------


class FakeCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """The shape of an error a gRPC stub raises: an RpcError that is also a Call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    ],
)
def test_unreachable_pachd_is_unavailable(code: grpc.StatusCode, details: str) -> None:
    error = _translate(FakeCall(code, details))
    assert isinstance(error, PachdUnavailable)
    assert code.name.lower() in str(error)
    assert details in str(error)


def test_not_found_is_a_rejection_marked_not_found() -> None:
    error = _translate(FakeCall(grpc.StatusCode.NOT_FOUND, 'pipeline "spout" not found'))
    assert isinstance(error, PachdRejected)
    assert error.not_found is True
    assert str(error) == 'pipeline "spout" not found'


def test_unknown_not_found_message_is_marked_not_found() -> None:
    details = 'pipeline not found: couldn\'t find up to date spec for pipeline "spout"'
    error = _translate(FakeCall(grpc.StatusCode.UNKNOWN, details))
    assert isinstance(error, PachdRejected)
    assert error.not_found is True


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid pipeline spec: glob must be set"),
        (
            grpc.StatusCode.UNKNOWN,
            "pachyderm community edition supports up to 16 pipelines; an activation key is required",
        ),
        (grpc.StatusCode.UNKNOWN, "a repo with the same name already exists"),
        (grpc.StatusCode.ALREADY_EXISTS, 'pipeline "spout" already exists'),
        (grpc.StatusCode.PERMISSION_DENIED, "not authorized"),
    ],
)
def test_other_errors_are_rejections_with_pachds_message(code: grpc.StatusCode, details: str) -> None:
    error = _translate(FakeCall(code, details))
    assert isinstance(error, PachdRejected)
    assert not isinstance(error, PachdUnavailable)
    assert str(error) == details
    assert error.not_found is False


def test_empty_details_fall_back_to_the_code_name() -> None:
    error = _translate(FakeCall(grpc.StatusCode.INVALID_ARGUMENT, ""))
    assert str(error) == "INVALID_ARGUMENT"


def test_rpc_error_that_is_not_a_call_is_a_rejection() -> None:
    error = _translate(grpc.RpcError("stream broke"))
    assert isinstance(error, PachdRejected)
    assert str(error) == "stream broke"
    assert error.not_found is False


def test_error_hierarchy() -> None:
    assert issubclass(PachdUnavailable, PachdError)
    assert issubclass(PachdRejected, PachdError)
    assert PachdRejected("x").not_found is False


# --- Gateways: idle channels closed -----------------------------------------------------


def test_idle_gateways_are_closed_and_busy_ones_kept() -> None:
    from spout_operator.gateway import Gateways

    now = [0.0]
    gateways = Gateways(timeout_s=1, idle_s=100.0, clock=lambda: now[0])
    old = gateways.get(Endpoint("grpc://127.0.0.1:9"))
    now[0] = 50.0
    busy = gateways.get(Endpoint("grpc://127.0.0.1:10"))
    now[0] = 120.0
    assert gateways.get(Endpoint("grpc://127.0.0.1:10")) is busy  # asked 70 s ago: kept
    assert len(gateways) == 1  # and the one unused for 120 s closed on the way
    assert gateways.get(Endpoint("grpc://127.0.0.1:9")) is not old  # a new channel when needed again
    gateways.close()
    assert len(gateways) == 0


def test_only_answering_pachds_are_listed_and_never_through_a_replaced_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spout_operator.gateway import Gateways

    def refused() -> list[Any]:
        raise PachdUnavailable("pachd unreachable (unavailable): connection refused")

    now = [0.0]
    gateways = Gateways(timeout_s=1, idle_s=100.0, clock=lambda: now[0])
    old = gateways.get(Endpoint("grpc://127.0.0.1:9", auth_token="old"))
    now[0] = 1.0
    new = gateways.get(Endpoint("grpc://127.0.0.1:9", auth_token="new"))  # the token was rotated
    down = gateways.get(Endpoint("grpc://127.0.0.1:10"))
    never = gateways.get(Endpoint("grpc://127.0.0.1:11"))  # not listed yet
    for gateway, listing in ((old, list), (new, list), (down, refused)):
        monkeypatch.setattr(gateway, "list_pipelines", listing)
        with contextlib.suppress(PachdUnavailable):
            gateway.snapshot(not_before=0.0)
    assert old.answering and new.answering and not down.answering and not never.answering
    assert gateways.answering() == [new.endpoint]
    # Listing it under vigil is no use of it: idle, it closes as if it was never listed.
    now[0] = 150.0
    assert gateways.find(new.endpoint) is new
    gateways.get(Endpoint("grpc://127.0.0.1:12"))
    assert gateways.find(new.endpoint) is None
    gateways.close()
