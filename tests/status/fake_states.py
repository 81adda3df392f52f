"""A StateSource for tests: the test sets the state; waiters wake on the next change."""

from __future__ import annotations

import asyncio

from appliance.supervisor import SupervisorState


class FakeStates:
    """Holds a SupervisorState that the test changes with `set()`."""

    def __init__(self, state: SupervisorState) -> None:
        self._state = state
        self._waiters: list[asyncio.Future[None]] = []

    def current(self) -> SupervisorState:
        return self._state

    async def wait_changed(self, seen: SupervisorState) -> SupervisorState:
        while self._state == seen:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return self._state

    def set(self, state: SupervisorState) -> None:
        self._state = state
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
