"""Small services that behave in one known way, for supervisor tests."""

from __future__ import annotations

import asyncio

from appliance.supervisor import ServiceContext


class ReadyService:
    """Becomes ready at once and runs until cancelled; logs start and stop."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.runs = 0

    async def run(self, ctx: ServiceContext) -> None:
        self.runs += 1
        self.log.append(f"start {self.name}")
        try:
            ctx.ready()
            await asyncio.Event().wait()
        finally:
            self.log.append(f"stop {self.name}")


class CrashingService:
    """Raises `crashes` times before behaving; counts its runs."""

    def __init__(self, name: str, crashes: int) -> None:
        self.name = name
        self.crashes = crashes
        self.runs = 0

    async def run(self, ctx: ServiceContext) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        ctx.ready()
        await asyncio.Event().wait()


class SilentService:
    """Runs but never calls ready()."""

    name = "silent"

    async def run(self, ctx: ServiceContext) -> None:
        await asyncio.Event().wait()


class StubbornService:
    """Ready at once, then ignores cancellation until `release` is set."""

    name = "stubborn"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, ctx: ServiceContext) -> None:
        ctx.ready()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue
