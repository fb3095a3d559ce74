"""Logs with a timestamp, level and logger name (JSON on a setting); Events reported as the
operator, from this replica's pod."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import kopf
import pytest
from spout_operator import logs
from spout_operator.runtime import configure_kopf
from spout_operator.settings import Settings, SettingsError


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, as it was before the test configured it."""
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def formatted(logger: logging.Logger, record: logging.LogRecord) -> str:
    handler = logger.handlers[-1]
    assert handler.filter(record)
    return handler.format(record)


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_text_logs_carry_a_timestamp_the_level_and_the_logger(root: logging.Logger) -> None:
    logs.configure("text")
    line = formatted(root, record("spout_operator.leader", logging.WARNING, "Lease lost by a"))
    assert re.match(
        r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] WARNING spout_operator\.leader: Lease lost by a$",
        line,
    ), line
    assert root.level == logging.INFO
    about = record("kopf.objects", logging.INFO, "Handler succeeded")
    about.k8s_ref = {"namespace": "ns", "name": "one"}
    assert formatted(root, about).endswith("INFO    kopf.objects: [ns/one] Handler succeeded")


def test_json_logs_are_one_object_a_line_with_the_logger_and_the_resource(root: logging.Logger) -> None:
    logs.configure("json")
    plain = json.loads(formatted(root, record("spout_operator.sweep", logging.INFO, "Swept")))
    assert plain["message"] == "Swept"
    assert plain["logger"] == "spout_operator.sweep"
    assert plain["severity"] == "info"
    assert plain["timestamp"]
    about = record("kopf.objects", logging.ERROR, "Handler failed")
    about.k8s_ref = {"kind": "SpoutPipeline", "namespace": "ns", "name": "one"}
    line = formatted(root, about)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["object"] == {"kind": "SpoutPipeline", "namespace": "ns", "name": "one"}
    assert parsed["severity"] == "error"
    logs.configure("json")  # configured again (an in-process restart): still one filter
    assert len([f for f in root.handlers[-1].filters if isinstance(f, logs._LoggerName)]) == 1


def test_events_are_reported_as_the_operator_from_this_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "spout-operator-7c9-abcde")
    settings = kopf.OperatorSettings()
    assert (settings.posting.reporting_component, settings.posting.reporting_instance) == ("kopf", "dev")
    configure_kopf(settings)
    assert settings.posting.reporting_component == "spout-operator"
    assert settings.posting.reporting_instance == "spout-operator-7c9-abcde"
    assert settings.posting.event_name_prefix == "spout-operator-"


def test_without_a_pod_name_the_instance_is_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.setattr(logs.socket, "gethostname", lambda: "laptop")
    assert logs.instance() == "laptop"


def test_the_log_format_is_a_setting() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"SPOUT_OPERATOR_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SettingsError, match="SPOUT_OPERATOR_LOG_FORMAT must be one of text, json"):
        Settings.from_env({"SPOUT_OPERATOR_LOG_FORMAT": "xml"})
