"""The liveness probe answers from the event loop, whatever the pool of passes is doing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import SimpleNamespace
from typing import Any

import kopf
from spout_operator import handlers
from spout_operator.pachd_api import Endpoint
from spout_operator.runtime import Operator
from spout_operator.settings import Settings


def test_the_probe_answers_while_every_worker_waits_on_pachd() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(2)
    release = threading.Event()
    try:
        for _ in range(4):  # every thread busy, more queued: a pachd that stopped answering
            pool.submit(release.wait, 30)

        async def probe() -> int:
            operator = Operator(Settings(), pool, kube=SimpleNamespace(core=None, custom=None))  # type: ignore[arg-type]
            for port in (1, 2):  # two channels (gRPC dials lazily: nothing is sent)
                operator.gateways.get(Endpoint(f"grpc://127.0.0.1:{port}"))
            gateways_probe: Any = handlers.gateways_probe  # kopf types it by its own signature
            try:
                return int(
                    await asyncio.wait_for(gateways_probe(memo=kopf.Memo(operator=operator)), timeout=5)
                )
            finally:
                operator.gateways.close()

        assert asyncio.run(probe()) == 2
    finally:
        release.set()
        pool.shutdown()


def test_the_probe_answers_before_the_operator_is_built() -> None:
    """kopf probes from its first second; start-up may still be retrying (a port taken)."""
    gateways_probe: Any = handlers.gateways_probe
    assert asyncio.run(gateways_probe(memo=kopf.Memo())) == 0
