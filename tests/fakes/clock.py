"""FakeClock: time moves only when a test calls `advance()`; sleepers wake in deadline order."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


async def settle(rounds: int = 50) -> None:
    """Let every ready task on the loop run until nothing is left to do right now."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """A Clock for tests: `sleep()` waits until `advance()` moves time past its deadline."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, delay_s: float) -> None:
        if delay_s <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + delay_s, next(self._ids), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def deadlines(self) -> list[float]:
        """When the pending sleeps end, in fake monotonic seconds, soonest first."""
        return sorted(d for d, _, f in self._sleepers if not f.done())

    async def advance(self, delta_s: float) -> None:
        """Move time forward by `delta_s`, waking each sleeper at its own deadline in order."""
        target = self._now + delta_s
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self._now = target
        await settle()

    async def run_until(
        self, predicate: Callable[[], bool], *, step_s: float = 0.1, limit_s: float = 3600
    ) -> None:
        """Advance in steps until `predicate()` is true; fail after `limit_s` of fake time."""
        spent = 0.0
        while not predicate():
            if spent >= limit_s:
                raise AssertionError(f"condition not reached within {limit_s} s of fake time")
            await self.advance(step_s)
            spent += step_s
