"""The operator's threads share two malloc arenas (glibc's malloc_stats counts them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[2] / "operator"

# Eight threads alive at once, each allocating (objects over 512 bytes go to malloc), then
# glibc's own report of its arenas on stderr.
THREADS = """
import ctypes, ctypes.util, sys, threading
from spout_operator import memory
if sys.argv[1] == "limit":
    assert memory.limit_arenas()
barrier = threading.Barrier(9)
def work():
    kept = [bytes(1000 + i) for i in range(200)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
barrier.wait()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
for t in threads:
    t.join()
"""


def arenas(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", THREADS, mode],
        env={"PYTHONPATH": str(OPERATOR)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_threads_share_two_arenas_once_limited() -> None:
    if arenas("default") == 0:
        pytest.fail("no malloc_stats report: not glibc? the operator image is Debian's")
    assert arenas("default") > 2  # each thread its own: what the limit is for
    assert 1 <= arenas("limit") <= 2


# A burst of 2 KB blocks (below glibc's mmap threshold, so from the heap) freed all but the
# last: its free pages stay resident until trimmed.
BURST = """
import ctypes, ctypes.util
from spout_operator import memory

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
blocks = [libc.malloc(2048) for _ in range(40_000)]
for b in blocks:
    ctypes.memset(b, 1, 2048)
for b in blocks[:-1]:
    libc.free(b)
before = rss_kb()
assert memory.trim()
print(before - rss_kb())
"""


def test_a_trim_hands_freed_heap_pages_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BURST],
        env={"PYTHONPATH": str(OPERATOR)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert int(done.stdout) > 40_000  # of the ~80 MB freed, most is handed back (kB)
