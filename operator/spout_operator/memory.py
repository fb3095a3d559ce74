"""The process's malloc: few arenas, so memory freed by one pool thread serves the others.

glibc gives each thread that allocates under contention an arena of its own, up to eight per
core, and keeps what is freed in it for that arena. The operator's 40-odd threads (the pass
pool, the starting polls, watch threads, gRPC) each decode a listing or a watch event now and
then, so each arena grows to its thread's peak and stays there: resident memory that grows
with uptime, not with resources. Two arenas hold the same work; the passes wait on pachd and
the API server, not on malloc's locks. Elsewhere than glibc (musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on (call it before any). Whether
    it took: False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
