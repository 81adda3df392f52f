import asyncio

from appliance.clock import wait_for
from tests.fakes.clock import FakeClock


async def test_fake_clock_wakes_sleepers_in_deadline_order(clock: FakeClock) -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, delay_s: float) -> None:
        await clock.sleep(delay_s)
        woke.append((name, clock.monotonic()))

    start = clock.monotonic()
    tasks = [asyncio.create_task(sleeper("b", 2.0)), asyncio.create_task(sleeper("a", 1.0))]
    await clock.advance(0.5)
    assert woke == []
    await clock.advance(2.0)
    assert woke == [("a", start + 1.0), ("b", start + 2.0)]
    await asyncio.gather(*tasks)


async def test_wait_for_returns_on_the_event_or_the_timeout(clock: FakeClock) -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_for(event, clock, 5.0))
    await clock.advance(5.0)
    assert await waiting is False
    waiting = asyncio.create_task(wait_for(event, clock, 5.0))
    await asyncio.sleep(0)
    event.set()
    assert await waiting is True
    assert clock.sleepers == 0, "the timeout's sleep is cancelled"
