"""A SpoutPipeline's operating handles, read from its annotations (pure).

- `spout-operator.dev/paused: "true"`: no write reaches pachd for this resource (create,
  update, repair, start, stop, restart) while it is still observed and reported. Deletion
  still works, as its deletionPolicy says.
- `spout-operator.dev/reconcile-requested-at: <token>`: any new token runs one pass at once,
  with a fresh look at pachd; status.lastHandledReconcileAt acknowledges it (Flux's way).
- `spout-operator.dev/restart-spout` / `restart-processor: <token>`: any new token restarts
  that pipeline's workers once (pachd stop, then start: no new version, no drift); the
  outcome is acknowledged in status.restarts.<role>. Refused on a paused or Stopped resource.

Annotations rather than spec fields: they change no `generation`, so kstatus never sees a
paused or refreshed resource as out of date (Flux's spec.suspend did, flux2#4738).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spout_operator.names import PAUSED_ANNOTATION, RECONCILE_ANNOTATION, RESTART_ANNOTATIONS

ROLES = ("spout", "processor")


@dataclass(frozen=True)
class Handles:
    paused: bool = False
    reconcile_token: str = ""
    restart_tokens: Mapping[str, str] | None = None  # role -> token


def read(annotations: Mapping[str, str]) -> Handles:
    restart = {role: annotations[key] for role, key in RESTART_ANNOTATIONS.items() if annotations.get(key)}
    return Handles(
        paused=annotations.get(PAUSED_ANNOTATION, "").strip().lower() == "true",
        reconcile_token=annotations.get(RECONCILE_ANNOTATION, ""),
        restart_tokens=restart,
    )


@dataclass(frozen=True)
class RestartRequest:
    role: str
    token: str
    refusal: str = ""  # why it will not run; empty: restart it


def restart_requests(handles: Handles, previous: Mapping[str, Any], running: bool) -> list[RestartRequest]:
    """The restart tokens not acknowledged yet, each with its refusal if it cannot run."""
    handled = previous.get("restarts") or {}
    requests = []
    for role, token in (handles.restart_tokens or {}).items():
        if (handled.get(role) or {}).get("token") == token:
            continue
        refusal = ""
        if handles.paused:
            refusal = f"reconciliation is paused ({PAUSED_ANNOTATION}): nothing is written to pachd"
        elif not running:
            refusal = "the resource declares state: Stopped; a stopped pipeline has no workers to restart"
        requests.append(RestartRequest(role, token, refusal))
    return requests


ACKNOWLEDGED = ("lastHandledReconcileAt", "restarts", "autoRestart")


def carried(previous: Mapping[str, Any]) -> dict[str, Any]:
    """The acknowledgements a status written whole keeps from the one before it."""
    return {key: previous[key] for key in ACKNOWLEDGED if key in previous}
