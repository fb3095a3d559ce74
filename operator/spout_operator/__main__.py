"""Run the operator: `python -m spout_operator` (or `kopf run -m spout_operator.handlers`).

Watches the namespaces listed in SPOUT_OPERATOR_NAMESPACES, or all of them, and
serves kopf's liveness endpoint (it never depends on pachd).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import kopf

from spout_operator.settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from spout_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=os.environ.get("SPOUT_OPERATOR_VERBOSE") == "1", log_format=kopf.LogFormat.PLAIN)
    logging.getLogger(__name__).info(
        "Watching %s; connection Secrets of ClusterPachdConnections in %s; drift check every %ss",
        ", ".join(settings.namespaces) or "all namespaces",
        settings.operator_namespace,
        settings.drift_interval_s,
    )
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,  # one replica (Deployment strategy Recreate): no peering objects needed
            liveness_endpoint=os.environ.get("SPOUT_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz"),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
