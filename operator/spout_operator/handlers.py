"""kopf handlers: each decorator calls one method of the running Operator (runtime.py)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from spout_operator.kube import login_session
from spout_operator.names import CLUSTER_PLURAL, GROUP, NAMESPACED_PLURAL, PLURAL, VERSION
from spout_operator.runtime import Operator, configure_kopf

RESOURCE = (GROUP, VERSION, PLURAL)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Build and start the operator's services, shared through memo (each object's handlers
    get a shallow copy of it, so only objects made now are shared)."""
    memo.operator = Operator(configure_kopf(settings), settings.execution.executor, memo.get("leading"))
    await memo.operator.start()


@kopf.on.login()
async def login(
    logger: kopf.Logger, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any
) -> kopf.AiohttpSession | None:
    """kopf's own login, on a bounded connection pool (see kube.login_session)."""
    return login_session(logger, settings, memo.operator.api_watches)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.operator.stop()


@kopf.on.probe(id="gateways")
async def gateways_probe(memo: kopf.Memo, **_: Any) -> int:
    """Async, so it runs on the event loop and never queues behind passes on a slow pachd."""
    return memo.operator.channels() if "operator" in memo else 0


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def apply(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await memo.operator.apply(body)


@kopf.on.event(*RESOURCE)
async def index(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.operator.index(event, body)


@kopf.on.delete(*RESOURCE)
async def delete(
    body: kopf.Body, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    await memo.operator.delete(body, logger)


@kopf.on.event(GROUP, VERSION, NAMESPACED_PLURAL)
@kopf.on.event(GROUP, VERSION, CLUSTER_PLURAL)
async def connection_seen(
    event: kopf.RawEvent, body: kopf.Body, resource: kopf.Resource, memo: kopf.Memo, **_: Any
) -> None:
    await memo.operator.connection_checks.seen(event, body, resource.plural)
