"""Offline first through the real hub, store and Telegram adapter: the network vanishes between
accepting a message and sending its reply; the reply waits and is delivered once it is back."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.bootstrap import StandaloneContext
from appliance.chat.adapters.telegram import TelegramAdapter
from appliance.chat.events import InboundEvent
from appliance.chat.hub import ChatHub
from appliance.chat.policy import PlatformPolicy
from appliance.chat.service import AdapterService
from appliance.config import TelegramAdapterConfig
from appliance.skills.responder import Answer
from appliance.store import Store
from tests.fakes.clock import FakeClock
from tests.fakes.telegram import PROXY_502_PAGE, TOKEN, FakeTelegram, Reply


async def answer(event: InboundEvent, is_owner: bool) -> Answer:
    return Answer("greeting", 0.9, f"reply to {event.text}", 1.0)


async def until(predicate: Callable[[], Any], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_replies_wait_out_a_network_outage_and_are_delivered_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = await Store.open(tmp_path / "chat.db")

    async def opened() -> Store:
        return store

    async def kv() -> Any:
        return store.kv

    async with FakeTelegram() as api:
        adapter = TelegramAdapter(
            TelegramAdapterConfig(
                type="telegram", token=TOKEN, api_base=api.base_url, poll_timeout_s=1
            ),
            clock=clock,
        )
        hub = ChatHub(
            store=opened,
            answer=answer,
            adapters={"telegram": adapter},
            clock=clock,
            policies={"telegram": PlatformPolicy(dm_policy="open")},
        )
        tasks = [
            asyncio.create_task(hub.run(StandaloneContext("chat"))),
            asyncio.create_task(AdapterService(adapter, hub, kv).run(StandaloneContext("tg"))),
        ]
        try:
            await until(lambda: api.polls())
            # The message arrives; its reply meets a proxy whose upstream is gone, then nothing.
            api.script("sendMessage", Reply.raw(PROXY_502_PAGE, 502))
            api.push("update_private_text")
            await until(lambda: any(c.method == "sendMessage" for c in api.calls))
            await api.go_down("refused")
            for _ in range(3):  # retries while the network is away: all fail, none lost
                await clock.advance(10)
                await asyncio.sleep(0.1)
            assert api.sent == []
            assert (await hub.depths())["outbox"] == 1

            await api.come_back()
            for _ in range(40):
                await clock.advance(10)
                await asyncio.sleep(0.05)
                if api.sent and (await hub.depths())["outbox"] == 0:
                    break
            for _ in range(5):  # more time passes: a second copy would show up now
                await clock.advance(60)
                await asyncio.sleep(0.05)
            assert [m["text"] for m in api.sent] == ["reply to how hot is the cpu?"]
            assert await hub.depths() == {"inbox": 0, "outbox": 0}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()
