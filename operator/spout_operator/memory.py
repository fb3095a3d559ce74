"""The process's malloc: few arenas, so memory freed by one pool thread serves the others,
and what is free handed back to the system once per sweep interval.

glibc gives each new thread that allocates an arena of its own, up to eight per core, and keeps
what is freed in it for that arena. The operator's 40-odd threads (the pass pool, the starting
polls, watch threads, gRPC) each decode a listing or a watch event now and then, so each arena
grows to its thread's peak and stays there: resident memory that grows with uptime, not with
resources. Two arenas hold the same work; the passes wait on pachd and the API server, not on
malloc's locks. And glibc returns freed memory to the system only from the top of a heap, above
a threshold it raises after every large block (a listing of 500 resources): after a burst the
free pages stay resident until `malloc_trim` hands them back, so the operator trims once per
sweep interval. Elsewhere than glibc (musl) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)
ARENAS = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)


def _function(name: str) -> Any:
    """A function of the C library, or None (no glibc)."""
    libc = _libc()
    return getattr(libc, name, None) if libc is not None else None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on (call it before any). Whether
    it took: False where the C library is not glibc."""
    mallopt = _function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Hand every free page of every arena back to the system. Whether any was."""
    malloc_trim = _function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(malloc_trim(0))


async def keep_trimmed(interval_s: float) -> None:
    """Trim every `interval_s` (in a thread: it walks the arenas), until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)
