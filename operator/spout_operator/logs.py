"""Logs and Events people can use: who wrote them, when, and how loud.

Logs carry a timestamp, the level and the logger's whole name by default (kopf's FULL format
cuts names to 20 characters: `spout_operator.conne`), resource messages prefixed with
namespace/name; SPOUT_OPERATOR_LOG_FORMAT=json writes one
JSON object a line (kopf's JSON formatter: `timestamp`, `severity`, `message`, the resource
under `object`) with the logger's name under `logger`. Events name the operator as their
reporting component and this replica's pod as the instance (kopf's defaults are `kopf` and
`dev`), so `kubectl describe` says which replica saw what.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, cast

import kopf

from spout_operator import tracing

COMPONENT = "spout-operator"
TEXT_FORMAT = "[%(asctime)s] %(levelname)-7s %(name)s: %(message)s"
# kopf.configure takes a format string as well as a LogFormat (its make_formatter matches both).
FORMATS: dict[str, Any] = {"text": cast(Any, TEXT_FORMAT), "json": kopf.LogFormat.JSON}
JSON_REFKEY = "object"  # where the JSON lines carry the resource a message is about


class _LoggerName(logging.Filter):
    """Adds the logger's name as a field of its own (`logger`) to JSON lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.logger = record.name
        return True


def configure(log_format: str = "text", verbose: bool = False, trace: bool = False) -> None:
    """Set up the root logger once, at process start (before kopf or a campaign runs).
    `trace`: the passes' step lines (tracing.py) at DEBUG, without kopf's own debug logs."""
    kopf.configure(verbose=verbose, log_format=FORMATS[log_format], log_prefix=None, log_refkey=JSON_REFKEY)
    if trace:
        logging.getLogger(tracing.__name__).setLevel(logging.DEBUG)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, _LoggerName) for f in handler.filters):
                handler.addFilter(_LoggerName())


def instance() -> str:
    """This replica's name in its Events: its pod's (POD_NAME, from the downward API), else
    the host's."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def report_as_operator(settings: kopf.OperatorSettings) -> None:
    """Events come from the operator and name the replica (kopf's defaults: `kopf`, `dev`)."""
    settings.posting.reporting_component = COMPONENT
    settings.posting.reporting_instance = instance()
    settings.posting.event_name_prefix = f"{COMPONENT}-"
