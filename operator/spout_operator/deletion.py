"""Deleting a SpoutPipeline: its pipelines go from pachd (processor first) unless
deletionPolicy: Orphan keeps them, and the finalizer is never held for ever.

The controller calls `Deleter.delete` under the resource's lock with its newest status
(which says whether and where pipelines were created); it writes the status a waiting
deletion returns and forgets the resource once deletion is done.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spout_operator import ownership
from spout_operator import render as rendering
from spout_operator.conditions import now
from spout_operator.connection_model import ConnectionProblem
from spout_operator.fencing import Fenced
from spout_operator.pachd_api import Endpoint, PachdRejected, Pachds, PachdUnavailable
from spout_operator.reconcile import Removal, remove
from spout_operator.resolver import Resolver
from spout_operator.resource import Resource
from spout_operator.spec import ConnectionRef, DeletionPolicy, SpecError, parse
from spout_operator.status import deleting_status

# How long a deletion in a namespace being deleted waits for a pachd that does not answer.
NAMESPACE_GONE_GRACE_S = 60.0


@dataclass(frozen=True)
class Deletion:
    done: bool
    message: str
    status: dict[str, Any] | None = None  # what to show while deletion waits


class Deleter:
    """Reaches pachd only through the resource's admin-owned connection, and writes to it
    only while leading (Fenced)."""

    def __init__(self, gateways: Pachds, resolver: Resolver, leading: Callable[[], bool]) -> None:
        self.gateways = gateways
        self.resolver = resolver
        self.leading = leading

    def delete(self, resource: Resource) -> Deletion:
        """Never wedges: a resource that never created anything (status.managed unset:
        invalid, not allowed, never reachable) goes at once, and one whose connection or pachd
        is gone goes within a bounded time when its namespace is being deleted (see
        ownership.finish_without_pachd). Otherwise deletionPolicy: Orphan lets it go."""
        try:
            spec = parse(resource.spec, resource.name)
        except SpecError:
            return Deletion(True, "Spec is invalid, so no pipeline was ever created; nothing to delete")
        if spec.deletion_policy is DeletionPolicy.ORPHAN:
            return Deletion(True, "Deletion policy is Orphan: pipelines stay in pachd")
        recorded = ownership.recorded_connection(resource.status)
        ref = recorded or spec.connection  # where the pipelines were created, if anything was
        try:
            gateway = Fenced(self.gateways.get(self._endpoint(ref, resource)), self.leading)
        except (ConnectionProblem, PachdRejected) as err:  # PachdRejected: an address no pachd can have
            permanent = not isinstance(err, ConnectionProblem) or err.permanent
            if self._may_finish(resource, recorded is not None, permanent):
                where = f"; pipelines may remain in pachd ({ref})" if recorded else ""
                return Deletion(True, f"Deleted without reaching pachd: {err}{where}")
            return _waiting(
                f"cannot delete pipelines through {ref}: {err}. Restore it, or set "
                "spec.deletionPolicy: Orphan to leave the pipelines in pachd",
                resource,
            )
        removal = remove(rendering.render(spec, resource.owner), resource.owner, gateway)
        if removal.error is None and not removal.remaining:
            return Deletion(True, _foreign_note(removal))
        unanswered = recorded is None or isinstance(removal.error, PachdUnavailable)
        if (
            removal.error is not None
            and unanswered
            and self._may_finish(resource, recorded is not None, False)
        ):
            return Deletion(True, f"Deleted without reaching pachd: {removal.error}")
        message = (
            f"waiting to delete pipelines {', '.join(removal.remaining)}: {removal.error or 'still present'}"
        )
        if recorded is not None:
            message += " (or set spec.deletionPolicy: Orphan to leave them)"
        return _waiting(message, resource)

    def _endpoint(self, ref: ConnectionRef, resource: Resource) -> Endpoint:
        """The connection's endpoint now; or, when its namespace is being deleted and took the
        connection or its Secret with it (they carry no finalizer, so they may go first), the
        endpoint this process last resolved through it: the pipelines it created are deleted
        as deletionPolicy says instead of being left running in pachd."""
        try:
            return self.resolver.endpoint(ref, resource.namespace, time.monotonic())
        except ConnectionProblem as err:
            if not err.permanent or not self.resolver.namespace_terminating(resource.namespace):
                raise
            remembered = self.resolver.remembered(ref, resource.namespace)
            if remembered is None:
                raise
            return remembered

    def _may_finish(self, resource: Resource, managed: bool, permanent: bool) -> bool:
        if not managed:
            return True  # nothing recorded: no need to ask whether the namespace is going
        waited_s = 0.0
        if resource.deleted_at:
            deleted = datetime.datetime.fromisoformat(resource.deleted_at.replace("Z", "+00:00"))
            waited_s = (datetime.datetime.now(datetime.UTC) - deleted).total_seconds()
        terminating = self.resolver.namespace_terminating(resource.namespace)
        return ownership.finish_without_pachd(True, permanent, terminating, waited_s, NAMESPACE_GONE_GRACE_S)


def _waiting(message: str, resource: Resource) -> Deletion:
    return Deletion(False, message, deleting_status(message, resource.generation, resource.status, now()))


def _foreign_note(removal: Removal) -> str:
    if removal.foreign:
        return f"Pipelines {', '.join(removal.foreign)} belong to another owner; left in pachd"
    return "Pipelines deleted"
