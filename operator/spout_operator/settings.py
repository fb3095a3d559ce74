"""The operator's own configuration, from SPOUT_OPERATOR_* environment variables.

Read and validated once at start-up: a bad value stops the operator with a
message that names the variable, instead of failing later in a handler.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "SPOUT_OPERATOR_"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    # Used by resources that do not name a pachd; Pachyderm's Helm chart serves gRPC
    # on the `pachd` Service, port 30650.
    pachd_address: str = "grpc://pachd.default.svc.cluster.local:30650"
    drift_interval_s: float = 30.0  # the safety net: worker events repair drift at once
    pachd_timeout_s: float = 10.0
    retry_delay_s: float = 15.0
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    metrics_port: int = 9090  # Prometheus metrics; 0 turns them off
    # A pachd channel no resource used for this long is closed (at least 3 sweeps).
    gateway_idle_s: float = 300.0
    # Two or more replicas: only the holder of this Lease runs (controller-runtime's timings).
    leader_election: bool = False
    lease_namespace: str = "default"  # unset: the operator's own namespace (POD_NAMESPACE), else this
    lease_name: str = "spout-operator"
    # pachd's Kubernetes namespaces: their worker RCs are watched to repair drift at once
    worker_namespaces: tuple[str, ...] = ()
    # For resources that name no Secret of their own; kept out of repr so it never hits logs.
    pachd_auth_token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            pachd_address=env.get(PREFIX + "PACHD_ADDRESS", "").strip() or defaults.pachd_address,
            drift_interval_s=_seconds(env, "DRIFT_INTERVAL_SECONDS", defaults.drift_interval_s),
            pachd_timeout_s=_seconds(env, "PACHD_TIMEOUT_SECONDS", defaults.pachd_timeout_s),
            retry_delay_s=_seconds(env, "RETRY_DELAY_SECONDS", defaults.retry_delay_s),
            gateway_idle_s=_seconds(env, "GATEWAY_IDLE_SECONDS", defaults.gateway_idle_s),
            leader_election=_flag(env, "LEADER_ELECTION"),
            lease_namespace=env.get(PREFIX + "LEASE_NAMESPACE", "").strip()
            or env.get("POD_NAMESPACE", "").strip()
            or defaults.lease_namespace,
            lease_name=env.get(PREFIX + "LEASE_NAME", "").strip() or defaults.lease_name,
            namespaces=_names(env, "NAMESPACES"),
            worker_namespaces=_names(env, "WORKER_NAMESPACES"),
            pachd_auth_token=env.get(PREFIX + "PACHD_AUTH_TOKEN", "").strip(),
            metrics_port=_port(env, "METRICS_PORT", defaults.metrics_port),
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(PREFIX + name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{PREFIX}{name} must be true or false, got {raw!r}")


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in env.get(PREFIX + name, "").split(",") if n.strip())


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number of seconds, got {raw!r}") from None
    if not 0.1 <= value <= 86400:
        raise SettingsError(f"{PREFIX}{name} must be between 0.1 and 86400 seconds, got {raw!r}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError(f"{PREFIX}{name} must be a port number (0 turns it off), got {raw!r}")
    return int(raw)
