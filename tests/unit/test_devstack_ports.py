"""The stack's port picker: never a port an outgoing connection can take, never one in use."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from devstack import stack


def test_ports_lie_outside_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    low, high = stack.ephemeral_range()
    ports = [stack.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= port <= high and port >= 10000 for port in ports)


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        spare = stack.free_port()
        stack._handed_out.discard(spare)

        def candidates() -> Iterator[int]:
            return iter([taken, spare])

        monkeypatch.setattr(stack, "_candidates", candidates)
        assert stack.free_port() == spare


def test_no_candidate_left_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "_candidates", lambda: iter(()))
    with pytest.raises(stack.StackError, match="no free port"):
        stack.free_port()
