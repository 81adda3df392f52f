"""The local gateway: round trip against the engine alone, and 100 concurrent clients.

Both run in this process on loopback, with the real model, hub and durable queues.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from appliance.bootstrap import StandaloneContext, checkout_dir, dev_config, standalone_responder
from appliance.chat.adapter import AdapterStatus, KeyValueStore
from appliance.chat.adapters.gateway import GatewayAdapter
from appliance.chat.events import ChatKind, InboundEvent, OutboundMessage, SendResult
from appliance.chat.hub import ChatHub
from appliance.chat.service import AdapterService
from appliance.clock import SystemClock
from appliance.config import ApplianceConfig, GatewayAdapterConfig
from appliance.skills.responder import Responder
from appliance.store import Store
from bench.report import Result

CONFIG = dev_config(ApplianceConfig(), checkout_dir())
ROUND_TRIPS = 200
CLIENTS = 100
PER_CLIENT = 5
TEXT = "which model do you run?"


@dataclass
class Timings:
    """Everything one run measures, in seconds."""

    engine_only: list[float]
    gateway: list[float]
    durable: list[float]
    rate: float
    latencies: list[float]


class LoopbackAdapter:
    """A durable platform inside this process: the hub's queues without any network."""

    platform = "loopback"
    max_text_chars = 4096
    trusted = True
    connection_bound = False

    def __init__(self) -> None:
        self.replied: asyncio.Future[None] | None = None

    async def run(self, ctx: object) -> None:
        await asyncio.Event().wait()

    async def send(self, message: OutboundMessage) -> SendResult:
        if self.replied is not None and not self.replied.done():
            self.replied.set_result(None)
        return SendResult.sent()


async def _measure(db: Path) -> Timings:
    async with standalone_responder(CONFIG) as responder:
        # The baseline is the same reply made in-process: the engine embeds, the skills answer.
        # The difference to a round trip is the transport and the hub (and its durable queues).
        for _ in range(ROUND_TRIPS // 4):  # warm-up: caches, allocator, XNNPACK buffers
            await responder.answer(TEXT, is_owner=True)
        store = await Store.open(db)

        async def opened() -> Store:
            return store

        async def kv() -> KeyValueStore:
            return store.kv

        cfg = GatewayAdapterConfig(
            type="gateway", port=0, max_connections_per_peer=CLIENTS + 1, max_messages_per_s=100
        )
        adapter = GatewayAdapter(cfg, dev=True)
        loopback = LoopbackAdapter()
        hub = ChatHub(
            store=opened,
            adapters={"gateway": adapter, "loopback": loopback},
            clock=SystemClock(),
            answer=lambda e, t: responder.answer(e.text, is_owner=t),
        )
        ready = StandaloneContext("chat:gateway")
        tasks = [
            asyncio.create_task(hub.run(StandaloneContext("chat"))),
            asyncio.create_task(AdapterService(adapter, hub, kv).run(ready)),
        ]
        await ready.is_ready.wait()
        hub.set_status("loopback", AdapterStatus.READY)
        url = f"ws://127.0.0.1:{adapter.port}"
        try:
            engine_only, round_trips, durable = await _interleaved(responder, url, hub, loopback)
            rate, latencies = await _concurrent(url)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()
        return Timings(engine_only, round_trips, durable, rate, latencies)


async def _interleaved(
    responder: Responder, url: str, hub: ChatHub, loopback: LoopbackAdapter
) -> tuple[list[float], list[float], list[float]]:
    """The baseline and both paths, measured in turn message by message.

    Whatever else the machine does then falls on all three alike.
    """
    engine_only: list[float] = []
    gateway: list[float] = []
    durable: list[float] = []
    async with connect(url) as ws:
        for i in range(ROUND_TRIPS):
            started = time.perf_counter()
            await responder.answer(TEXT, is_owner=True)
            engine_only.append(time.perf_counter() - started)

            started = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "id": str(i), "text": TEXT}))
            await ws.recv()
            gateway.append(time.perf_counter() - started)

            # Accept → inbox commit → answer → outbox commit → send.
            loopback.replied = asyncio.get_running_loop().create_future()
            started = time.perf_counter()
            await hub.accept(InboundEvent("loopback", f"b{i}", "c", ChatKind.DIRECT, "s", TEXT))
            await loopback.replied
            durable.append(time.perf_counter() - started)
    return engine_only, gateway, durable


async def _concurrent(url: str) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def client(n: int) -> None:
        async with connect(url) as ws:
            for i in range(PER_CLIENT):
                started = time.perf_counter()
                await ws.send(json.dumps({"type": "message", "id": f"{n}.{i}", "text": TEXT}))
                await ws.recv()
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return CLIENTS * PER_CLIENT / (time.perf_counter() - started), latencies


def ms(timings: list[float], percentile: float) -> float:
    """A percentile of timings in seconds, in milliseconds."""
    return float(np.percentile(timings, percentile)) * 1000


def run() -> list[Result]:
    """Gateway and hub benchmarks."""
    with tempfile.TemporaryDirectory() as tmp:
        t = asyncio.run(_measure(Path(tmp) / "bench.db"))
    return [
        Result(
            "gateway: round trip p50 (same reply in-process = baseline)",
            ms(t.gateway, 50),
            ms(t.engine_only, 50),
            "ms",
            False,
            f"p95 {ms(t.gateway, 95):.2f} ms vs {ms(t.engine_only, 95):.2f} ms; answered in "
            "memory (replies are bound to the connection)",
        ),
        Result(
            "hub durable path p50: inbox + outbox commits (same baseline)",
            ms(t.durable, 50),
            ms(t.engine_only, 50),
            "ms",
            False,
            f"p95 {ms(t.durable, 95):.2f} ms; the path Discord and Telegram messages take, "
            "without their network",
        ),
        Result(
            f"gateway: {CLIENTS} concurrent clients",
            t.rate,
            1000 / ms(t.gateway, 50),
            "msg/s",
            True,
            f"p99 latency {ms(t.latencies, 99):.1f} ms; baseline: one client in turn",
        ),
    ]
