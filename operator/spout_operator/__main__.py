"""Run the operator: `python -m spout_operator` (or `kopf run -m spout_operator.handlers`).

Watches the namespaces listed in SPOUT_OPERATOR_NAMESPACES, or all of them, and
serves kopf's liveness endpoint (it never depends on pachd). With
SPOUT_OPERATOR_LEADER_ELECTION=true, kopf runs only while this replica holds the
Lease (see leader.py); a standby serves the liveness endpoint itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp.web
import kopf

from spout_operator import leader, logs, memory, metrics, tracing
from spout_operator.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def main() -> int:
    memory.limit_arenas()  # before any thread starts
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from spout_operator import handlers  # noqa: F401  (registers the handlers)

    logs.configure(
        settings.log_format,
        verbose=os.environ.get("SPOUT_OPERATOR_VERBOSE") == "1",
        trace=os.environ.get(tracing.ENV) == "1",
    )
    log.info(
        "Watching %s; connection Secrets of ClusterPachdConnections in %s; drift check every %ss",
        ", ".join(settings.namespaces) or "all namespaces",
        settings.operator_namespace,
        settings.drift_interval_s,
    )
    liveness = os.environ.get("SPOUT_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz")
    # Every replica serves /metrics from its start, leading or not: a scrape of a standby
    # answers (spout_operator_leader 0), so a ServiceMonitor over all pods has no target down.
    metrics.serve(settings.metrics_port)
    if not settings.leader_election:
        metrics.lead_by(lambda: True)
        asyncio.run(_operator(settings, liveness, None, None))
    else:
        asyncio.run(_elected(settings, liveness))
    return 0


async def _operator(
    settings: Settings,
    liveness: str,
    stop: asyncio.Event | None,
    elector: leader.Elector | None,
    ready: asyncio.Event | None = None,
) -> None:
    await kopf.operator(
        ready_flag=ready,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        standalone=True,  # no kopf peering: one replica, or the Lease holder only
        liveness_endpoint=liveness,
        stop_flag=stop,
        memo=kopf.Memo(leading=elector.leading) if elector is not None else None,
    )


async def _elected(settings: Settings, liveness: str) -> None:
    from spout_operator.kube import Kube

    kube = Kube(pool_size=4)
    store = leader.KubeLeaseStore(kube.api, settings.lease_namespace, settings.lease_name)
    elector = leader.Elector(store, leader.identity())
    metrics.lead_by(elector.leading)
    terminating = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def run(stop: asyncio.Event) -> None:
        ready = asyncio.Event()

        def on_signal() -> None:
            terminating.set()
            stop.set()

        async def take_signals() -> None:
            # kopf installs its own SIGTERM handler while it starts; stopped by a signal while
            # a stop flag is given, it then waits 5 s for the flag's waiter. Once kopf is ready,
            # a signal sets the stop flag instead, and kopf stops at once.
            await ready.wait()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)

        taking = asyncio.ensure_future(take_signals())  # created before kopf: not one of its tasks
        try:
            await _operator(settings, liveness, stop, elector, ready)
        finally:
            taking.cancel()

    @contextlib.asynccontextmanager
    async def standby() -> AsyncIterator[None]:
        # kopf handles SIGTERM while it runs (and then stops by itself); a standby, here.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, terminating.set)
        async with _standby_health(liveness):
            yield

    log.info(f"Campaigning for Lease {settings.lease_namespace}/{settings.lease_name} as {elector.name}")
    try:
        await leader.elect(elector, run, terminating, standby)
    finally:
        kube.close()


@contextlib.asynccontextmanager
async def _standby_health(url: str) -> AsyncIterator[None]:
    """/healthz for a standby (kopf serves it while leading): the process is alive."""
    parts = urlsplit(url)
    app = aiohttp.web.Application()

    async def ok(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"standby": True})

    app.router.add_get(parts.path or "/", ok)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, parts.hostname, parts.port or 80)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
