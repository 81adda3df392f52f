"""The local gateway: round trip against the engine alone, and 100 concurrent clients.

Both run in this process on loopback, with the real model, hub and durable queues.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from appliance.bootstrap import StandaloneContext, checkout_dir, dev_config, standalone_responder
from appliance.chat.adapter import KeyValueStore
from appliance.chat.adapters.gateway import GatewayAdapter
from appliance.chat.hub import ChatHub
from appliance.chat.service import AdapterService
from appliance.clock import SystemClock
from appliance.config import ApplianceConfig, GatewayAdapterConfig
from appliance.store import Store
from bench.report import Result

CONFIG = dev_config(ApplianceConfig(), checkout_dir())
ROUND_TRIPS = 200
CLIENTS = 100
PER_CLIENT = 5
TEXT = "which model do you run?"


async def _measure(db: Path) -> tuple[list[float], list[float], float, list[float]]:
    async with standalone_responder(CONFIG) as responder:
        engine_only = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            await responder.embed([TEXT])
            engine_only.append(time.perf_counter() - started)
        store = await Store.open(db)

        async def opened() -> Store:
            return store

        async def kv() -> KeyValueStore:
            return store.kv

        cfg = GatewayAdapterConfig(
            type="gateway", port=0, max_connections_per_peer=CLIENTS + 1, max_messages_per_s=100
        )
        adapter = GatewayAdapter(cfg, dev=True)
        hub = ChatHub(
            store=opened,
            adapters={"gateway": adapter},
            clock=SystemClock(),
            answer=lambda e, t: responder.answer(e.text, is_owner=t),
        )
        ready = StandaloneContext("chat:gateway")
        tasks = [
            asyncio.create_task(hub.run(StandaloneContext("chat"))),
            asyncio.create_task(AdapterService(adapter, hub, kv).run(ready)),
        ]
        await ready.is_ready.wait()
        url = f"ws://127.0.0.1:{adapter.port}"
        try:
            round_trips = await _round_trips(url)
            rate, latencies = await _concurrent(url)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()
        return engine_only, round_trips, rate, latencies


async def _round_trips(url: str) -> list[float]:
    timings = []
    async with connect(url) as ws:
        for i in range(ROUND_TRIPS):
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "id": str(i), "text": TEXT}))
            await ws.recv()
            timings.append(time.perf_counter() - started)
    return timings


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
    """Gateway benchmarks."""
    with tempfile.TemporaryDirectory() as tmp:
        engine_only, trips, rate, latencies = asyncio.run(_measure(Path(tmp) / "bench.db"))
    return [
        Result(
            "gateway: round trip p50 (engine alone = baseline)",
            ms(trips, 50),
            ms(engine_only, 50),
            "ms",
            False,
            f"p95 {ms(trips, 95):.2f} ms vs {ms(engine_only, 95):.2f} ms; includes the "
            "durable inbox and outbox",
        ),
        Result(
            f"gateway: {CLIENTS} concurrent clients",
            rate,
            1000 / ms(trips, 50),
            "msg/s",
            True,
            f"p99 latency {ms(latencies, 99):.1f} ms; baseline: one client in turn",
        ),
    ]
