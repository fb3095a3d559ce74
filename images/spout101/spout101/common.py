"""Helpers shared by both workers: env parsing with clear errors, logging setup."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

LOG_LEVEL_ENV = "SPOUT101_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class SettingsError(ValueError):
    """An environment knob holds a value the worker cannot use."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """The stripped value of ``name``; empty or unset means ``default``."""
    value = env.get(name, "").strip()
    return value or default


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_int_list(
    env: Mapping[str, str], name: str, default: tuple[int, ...], *, minimum: int
) -> tuple[int, ...]:
    """A comma-separated list of whole numbers, e.g. ``1024,2048``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    values: list[int] = []
    for part in raw.split(","):
        item = part.strip()
        try:
            value = int(item)
        except ValueError:
            raise SettingsError(
                f"{name} must be a comma-separated list of whole numbers, got {raw!r}"
            ) from None
        if value < minimum:
            raise SettingsError(f"{name} entries must be >= {minimum}, got {value}")
        values.append(value)
    return tuple(values)


def configure_logging(env: Mapping[str, str] | None = None) -> None:
    """Log to stderr, which pachd collects as the worker's log."""
    source = os.environ if env is None else env
    level_name = env_str(source, LOG_LEVEL_ENV, "INFO").upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        raise SettingsError(
            f"{LOG_LEVEL_ENV} must be a logging level such as INFO or DEBUG, got {level_name!r}"
        )
    logging.basicConfig(level=level, format=LOG_FORMAT)
