"""The operator's process asks glibc for few malloc arenas (its RSS at 500 resources)."""

from __future__ import annotations

import platform

from spout_operator.__main__ import fewer_malloc_arenas


def test_glibc_takes_the_arena_limit() -> None:
    assert platform.libc_ver()[0] == "glibc"  # as on the machines the operator and its tests run
    assert fewer_malloc_arenas(8) is True  # the default for 1 core: harmless to the test process
