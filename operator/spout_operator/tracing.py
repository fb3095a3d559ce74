"""Where a pass's time goes: each step's end and length, as an offset since the change began.

A pass runs inside `traced(...)` (runtime.py); the code on its path marks its steps with
`step(name)` (the pachd gateway for each call, the Kubernetes reads and status writes), and
nothing is recorded outside a traced pass. Each step is observed in the
`spout_operator_pass_step_duration_seconds` histogram (a bounded set of names: pachd's gRPC
methods and a few fixed ones) and, with SPOUT_OPERATOR_TRACE=1, logged at DEBUG as one line
with its offset since the watch event that started the change:

    Trace team-a/spout101 change: pachd CreatePipeline +0.412s (38 ms)

The origin is when the operator first saw the change (the watch event), so the lines of the
handler's pass and of the passes after it until Ready read as one timeline. Cheap: a
ContextVar lookup and a histogram observation per step.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from spout_operator import metrics

log = logging.getLogger(__name__)
ENV = "SPOUT_OPERATOR_TRACE"  # "1": the DEBUG lines of this module are written


@dataclass(frozen=True)
class PassTrace:
    """One pass: who and why (for the log line), and the instant its offsets count from."""

    where: str  # namespace/name
    trigger: str
    origin: float  # time.monotonic() of the watch event that began the change (or the pass)

    def mark(self, name: str, began: float, ended: float | None = None) -> float:
        """Record one step that ran from `began` to `ended` (now); its end's offset."""
        ended = time.monotonic() if ended is None else ended
        metrics.PASS_STEP_SECONDS.labels(name).observe(max(0.0, ended - began))
        offset = ended - self.origin
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                f"Trace {self.where} {self.trigger}: {name} +{offset:.3f}s ({(ended - began) * 1000:.0f} ms)"
            )
        return offset


_current: contextvars.ContextVar[PassTrace | None] = contextvars.ContextVar("pass_trace", default=None)


def current() -> PassTrace | None:
    return _current.get()


@contextlib.contextmanager
def traced(where: str, trigger: str, origin: float | None = None) -> Iterator[PassTrace]:
    """Trace the pass run inside (in this context: the thread it runs in)."""
    trace = PassTrace(where, trigger, time.monotonic() if origin is None else origin)
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Time one step of the traced pass, if any (it counts as done when it raised, too)."""
    trace = _current.get()
    if trace is None:
        yield
        return
    began = time.monotonic()
    try:
        yield
    finally:
        trace.mark(name, began)
