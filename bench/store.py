"""Durable queue writes: one transaction per batch against one per message (DESIGN §8).

Batching is what spares the SD card: fewer commits mean fewer WAL syncs and page writes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from appliance.store import Store
from bench.report import Result

MESSAGES = 2000
BATCH = 100


async def _rate(path: Path, *, batched: bool) -> float:
    store = await Store.open(path)
    queue = store.queue("bench", max_items=MESSAGES * 2)
    payloads = [f"message {i}".encode() for i in range(MESSAGES)]
    started = time.perf_counter()
    if batched:
        for i in range(0, MESSAGES, BATCH):
            await queue.put_many(payloads[i : i + BATCH], now=0.0)
    else:
        for payload in payloads:
            await queue.put(payload, now=0.0)
    elapsed = time.perf_counter() - started
    await store.close()
    return MESSAGES / elapsed


def run() -> list[Result]:
    """Messages per second into the durable queue, batched against one by one."""
    with tempfile.TemporaryDirectory() as tmp:
        single = asyncio.run(_rate(Path(tmp) / "single.db", batched=False))
        batched = asyncio.run(_rate(Path(tmp) / "batched.db", batched=True))
    return [
        Result(
            f"store: queue put, batches of {BATCH}",
            batched,
            single,
            "msg/s",
            True,
            "baseline: one transaction per message",
        ),
    ]
