"""A stream kept open: opened again whenever it ends, with back-off while it delivers nothing.

pachd's commit streams (spec_streams.py, flow_streams.py) end at their deadline, when pachd
goes away, or when the repo is not there yet. A stream that delivered (its history at
least) is opened again at once; one that did not backs off, so a pachd that is away is not
asked once per pipeline each second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

RETRY_S = (1.0, 30.0)  # back-off between attempts while pachd refuses or is away

T = TypeVar("T")


async def keep_open(
    open_stream: Callable[[], AsyncGenerator[T, None]],
    receive: Callable[[T], None],
    what: str,
    retry_s: tuple[float, float] = RETRY_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Feed each item of `open_stream()` to `receive`, opening it again whenever it ends,
    until cancelled. `what` names the stream in the log."""
    delay = retry_s[0]
    while True:
        heard = False
        try:
            # Closed on every way out, so the stream's own clean-up (its gRPC call, its
            # timers) runs before the next attempt.
            async with contextlib.aclosing(open_stream()) as items:
                async for item in items:
                    heard = True
                    receive(item)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # pachd away, the repo not there yet, the stream's deadline
            log.debug(f"{what} ends: {err}")
        delay = retry_s[0] if heard else min(2 * delay, retry_s[1])
        await sleep(0 if heard else delay)
