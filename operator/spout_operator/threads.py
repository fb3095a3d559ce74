"""Blocking work (pachd's gRPC, the Kubernetes client) off kopf's event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_pool(executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking `fn` in a thread pool, in a copy of this context as kopf does for sync
    handlers (kopf.event posts from an object's handling context only)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)
