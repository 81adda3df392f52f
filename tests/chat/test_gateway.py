"""The local gateway end to end on loopback: real WebSocket clients, the hub, the real model."""

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from appliance.bootstrap import StandaloneContext, checkout_dir, dev_config, standalone_responder
from appliance.chat.adapters.gateway import GatewayAdapter
from appliance.chat.hub import ChatHub
from appliance.chat.service import AdapterService
from appliance.clock import SystemClock
from appliance.config import ApplianceConfig, GatewayAdapterConfig
from appliance.skills.responder import Answer
from appliance.store import Store

CONFIG = dev_config(ApplianceConfig(), checkout_dir())


@pytest.fixture
def db_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp) / "chat.db"


@dataclass
class Running:
    adapter: GatewayAdapter
    hub: ChatHub
    url: str


@pytest.fixture
async def gateway(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[Running]:
    options = getattr(request, "param", {})
    cfg = GatewayAdapterConfig(type="gateway", port=0, **options.get("cfg", {}))
    async with standalone_responder(CONFIG) as responder:
        store = await Store.open(db_path)

        async def answer(event: object, trusted: bool) -> Answer:
            return await responder.answer(event.text, is_owner=trusted)  # type: ignore[attr-defined]

        async def opened() -> Store:
            return store

        adapter = GatewayAdapter(cfg, dev=options.get("dev", True))
        hub = ChatHub(
            store=opened, answer=answer, adapters={"gateway": adapter}, clock=SystemClock()
        )

        async def kv() -> object:
            return store.kv

        hub_ctx, adapter_ctx = StandaloneContext("chat"), StandaloneContext("chat:gateway")
        tasks = [
            asyncio.create_task(hub.run(hub_ctx)),
            asyncio.create_task(AdapterService(adapter, hub, kv).run(adapter_ctx)),
        ]  # type: ignore[arg-type]
        await asyncio.wait_for(adapter_ctx.is_ready.wait(), 10)
        try:
            yield Running(adapter, hub, f"ws://127.0.0.1:{adapter.port}")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()


async def ask(ws: object, message_id: str, text: str) -> dict[str, object]:
    await ws.send(json.dumps({"type": "message", "id": message_id, "text": text}))  # type: ignore[attr-defined]
    return json.loads(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[attr-defined]


async def test_a_client_gets_an_engine_made_reply(gateway: Running) -> None:
    async with connect(gateway.url) as ws:
        reply = await ask(ws, "m1", "which model are you running?")
    assert reply["type"] == "reply" and reply["id"] == "m1"
    assert reply["intent"] == "model_info" and "minilm" in str(reply["text"])


async def test_malformed_frames_get_clear_errors_and_the_connection_stays(gateway: Running) -> None:
    async with connect(gateway.url) as ws:
        for frame, code in [
            ("{nope", "bad_json"),
            ("[1]", "bad_json"),
            ('{"type": "hello", "id": "x"}', "bad_type"),
            ('{"type": "message", "text": "hi"}', "bad_id"),
            ('{"type": "message", "id": "e", "text": ""}', "bad_text"),
            (json.dumps({"type": "message", "id": "l", "text": "a" * 5000}), "too_long"),
        ]:
            await ws.send(frame)
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (error["type"], error["code"]) == ("error", code), frame
        assert (await ask(ws, "ok", "hello"))["intent"] == "greeting"


async def test_an_oversize_frame_closes_the_connection_with_1009(gateway: Running) -> None:
    async with connect(gateway.url, max_size=None) as ws:
        await ws.send("x" * (70 * 1024))
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_a_flood_is_rate_limited_without_dropping_the_connection(gateway: Running) -> None:
    async with connect(gateway.url) as ws:
        for i in range(30):
            await ws.send(json.dumps({"type": "message", "id": f"f{i}", "text": "hi"}))
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(30)]
    limited = [f for f in frames if f["type"] == "error" and f["code"] == "rate_limited"]
    replies = [f for f in frames if f["type"] == "reply"]
    assert limited and replies and len(limited) + len(replies) == 30


@pytest.mark.parametrize("gateway", [{"dev": False}], indirect=True)
async def test_without_dev_mode_loopback_needs_a_token(gateway: Running) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(gateway.url):
            pass
    assert info.value.response.status_code == 401


@pytest.mark.parametrize("gateway", [{"dev": False, "cfg": {"token": "s3cret"}}], indirect=True)
async def test_bearer_token_in_the_header_or_the_query(gateway: Running) -> None:
    async with connect(gateway.url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        assert (await ask(ws, "1", "hello"))["type"] == "reply"
    async with connect(gateway.url + "/?token=s3cret") as ws:
        assert (await ask(ws, "2", "hello"))["type"] == "reply"
    with pytest.raises(InvalidStatus):
        async with connect(gateway.url + "/?token=wrong"):
            pass


@pytest.mark.parametrize("gateway", [{"cfg": {"max_connections_per_peer": 2}}], indirect=True)
async def test_connections_per_peer_are_limited(gateway: Running) -> None:
    async with connect(gateway.url), connect(gateway.url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(gateway.url):
                pass
    assert info.value.response.status_code == 429


def test_connection_ids_differ_between_runs() -> None:
    # Dedupe persists event ids, so a restarted gateway must not reuse them.
    first = GatewayAdapter(GatewayAdapterConfig(type="gateway"))
    second = GatewayAdapter(GatewayAdapterConfig(type="gateway"))
    assert first._run_id != second._run_id


async def test_a_reply_over_16_kib_arrives_as_one_binary_message(gateway: Running) -> None:
    from appliance.chat.events import OutboundMessage

    async with connect(gateway.url) as ws:
        await ask(ws, "warm", "hello")
        [chat_id] = list(gateway.adapter._connections)
        big = "é" * 20_000  # 40,000 bytes of UTF-8
        result = await gateway.adapter.send(
            OutboundMessage(chat_id, big, reply_to=f"{chat_id}/b", intent="faq")
        )
        assert result.ok
        data = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(data, bytes)
    assert json.loads(data) == {"type": "reply", "id": "b", "text": big, "intent": "faq"}
