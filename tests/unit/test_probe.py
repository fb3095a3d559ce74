"""The liveness probe answers from the event loop, whatever the pool of passes is doing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import SimpleNamespace

from spout_operator import handlers


def test_the_probe_answers_while_every_worker_waits_on_pachd() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(2)
    release = threading.Event()
    try:
        for _ in range(4):  # every thread busy, more queued: a pachd that stopped answering
            pool.submit(release.wait, 30)
        memo = SimpleNamespace(executor=pool, controller=SimpleNamespace(gateways=[1, 2]))

        async def probe() -> int:
            return await asyncio.wait_for(handlers.gateways_probe(memo=memo), timeout=5)  # type: ignore[arg-type]

        assert asyncio.run(probe()) == 2
    finally:
        release.set()
        pool.shutdown()
