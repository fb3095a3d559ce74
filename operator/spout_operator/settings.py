"""The operator's own configuration, from SPOUT_OPERATOR_* environment variables.

Read and validated once at start-up: a bad value stops the operator with a
message that names the variable, instead of failing later in a handler.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "SPOUT_OPERATOR_"
# Where Kubernetes tells a pod its own namespace.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_OPERATOR_NAMESPACE = "spout-operator-system"
# Read before connections existed; refused rather than ignored, so an upgrade that keeps a
# token in the operator's environment fails loudly instead of holding a credential unused.
REMOVED = ("PACHD_ADDRESS", "PACHD_AUTH_TOKEN")
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    """No pachd address or token here: those live in (Cluster)PachdConnections that an
    admin owns, so nothing a tenant writes can borrow the operator's credentials."""

    drift_interval_s: float = 30.0  # the safety net: worker events repair drift at once
    pachd_timeout_s: float = 10.0
    retry_delay_s: float = 15.0
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    metrics_port: int = 9090  # Prometheus metrics; 0 turns them off
    # A pachd channel no resource used for this long is closed (at least 3 sweeps: see channel_idle_s).
    gateway_idle_s: float = 300.0
    # Two or more replicas: only the holder of this Lease runs (controller-runtime's timings).
    leader_election: bool = False
    lease_namespace: str = "default"  # unset: the operator's own namespace (POD_NAMESPACE), else this
    lease_name: str = "spout-operator"
    # pachd's Kubernetes namespaces: their worker RCs are watched to repair drift at once
    worker_namespaces: tuple[str, ...] = ()
    # Judge Ready by the worker pods there too (workers.py). Off only where no pod can ever run
    # (a control plane without nodes): there every pipeline would wait for its workers forever.
    worker_health: bool = True
    # The only namespace whose Secrets ClusterPachdConnections may name (the operator's own).
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    connection_check_interval_s: float = 30.0  # how often each connection's Ready is checked
    # status.dataFlow is rewritten when DataFlowing changes, or when a timestamp in it moved this much
    dataflow_resolution_s: float = 60.0
    log_format: str = "text"  # text (timestamp, level, logger, message) or json (one object a line)

    @property
    def channel_idle_s(self) -> float:
        """How long a pachd channel may go unasked before it is closed: every resource asks
        for its own at each sweep, so never less than three sweeps."""
        return max(self.gateway_idle_s, 3 * self.drift_interval_s)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        for gone in REMOVED:
            if env.get(PREFIX + gone, "").strip():
                raise SettingsError(
                    f"{PREFIX}{gone} is no longer read: pachd's address and token belong in a "
                    "ClusterPachdConnection (see docs/security.md); unset it"
                )
        defaults = cls()
        return cls(
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
            worker_health=_flag(env, "WORKER_HEALTH", defaults.worker_health),
            metrics_port=_port(env, "METRICS_PORT", defaults.metrics_port),
            operator_namespace=env.get(PREFIX + "NAMESPACE", "").strip() or _pod_namespace(),
            connection_check_interval_s=_seconds(
                env, "CONNECTION_CHECK_SECONDS", defaults.connection_check_interval_s
            ),
            dataflow_resolution_s=_seconds(
                env, "DATAFLOW_RESOLUTION_SECONDS", defaults.dataflow_resolution_s
            ),
            log_format=_choice(env, "LOG_FORMAT", LOG_FORMATS, defaults.log_format),
        )


def _pod_namespace() -> str:
    try:
        return POD_NAMESPACE_FILE.read_text().strip() or DEFAULT_OPERATOR_NAMESPACE
    except OSError:  # not in a pod (a local run): the namespace manifests/ installs into
        return DEFAULT_OPERATOR_NAMESPACE


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(PREFIX + name, "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{PREFIX}{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(PREFIX + name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise SettingsError(f"{PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


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
