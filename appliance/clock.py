"""The clock every timed part uses, injected so tests never sleep (STYLE rule 6).

`FakeClock` for tests lives in `tests/fakes/clock.py`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time, wall time and an awaitable sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch (wall clock; may jump)."""
        ...

    async def sleep(self, delay_s: float) -> None:
        """Suspend the caller for `delay_s` seconds."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds on the system's monotonic clock."""
        return time.monotonic()

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time()

    async def sleep(self, delay_s: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(delay_s)


async def wait_for(event: asyncio.Event, clock: Clock, timeout_s: float) -> bool:
    """Until `event` is set (True) or `timeout_s` passes on `clock` (False)."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(timeout_s))
    await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiter, sleeper):
        task.cancel()
    await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()
