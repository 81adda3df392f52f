"""FleetService against a real Mosquitto on loopback: sessions, will, commands, outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.clock import SystemClock
from appliance.fleet.signing import sign_command
from appliance.store import Store
from appliance.supervisor import Condition, RestartPolicy
from tests.fakes.clock import FakeClock
from tests.fakes.mosquitto import Mosquitto, free_port
from tests.fleet.device_process import (
    DEVICE,
    FAST_RECONNECT,
    FLEET,
    RecordingDevice,
    health_sample,
    make_service,
)
from tests.fleet.observer import Observer

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2]  # resolved at import: no stat() on the loop
BASE = f"appliance/v1/{FLEET}/{DEVICE}"
STATUS, BIRTH, HEALTH = f"{BASE}/status", f"{BASE}/birth", f"{BASE}/health"


class Context:
    """A ServiceContext that records readiness and conditions."""

    name = "fleet"

    def __init__(self) -> None:
        import logging

        self.logger = logging.getLogger("test")
        self.is_ready = False
        self.conditions: dict[Condition, bool] = {}

    def ready(self) -> None:
        self.is_ready = True

    def set_condition(self, condition: Condition, active: bool, detail: str = "") -> None:
        self.conditions[condition] = active

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        pass


class Device:
    """An in-process FleetService with a controllable health sample."""

    def __init__(
        self, store: Store, port: int, reconnect: RestartPolicy = FAST_RECONNECT, **options: Any
    ) -> None:
        self.sample = health_sample()
        self.actions = RecordingDevice()
        self.ctx = Context()

        async def health() -> Mapping[str, Any]:
            return self.sample

        options.setdefault("clock", SystemClock())
        self.service = make_service(
            store,
            port,
            health=health,
            device=self.actions,
            reconnect=reconnect,
            **options,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.service.run(self.ctx))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto.start(tmp_path) as running:
        yield running


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "data" / "appliance.db")
    try:
        yield opened
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def observing(
    broker: Mosquitto, *topics: str, port: int | None = None
) -> AsyncIterator[Observer]:
    observer = await asyncio.to_thread(Observer, broker.host, port or broker.port)
    for topic in topics or (f"{BASE}/#",):
        observer.subscribe(topic)
    try:
        yield observer
    finally:
        await asyncio.to_thread(observer.close)


@contextlib.asynccontextmanager
async def running(
    store: Store,
    broker: Mosquitto,
    reconnect: RestartPolicy = FAST_RECONNECT,
    *,
    port: int | None = None,
    **options: Any,
) -> AsyncIterator[Device]:
    device = Device(store, port or broker.port, reconnect, **options)
    device.start()
    try:
        yield device
    finally:
        await device.stop()


async def wait(observer: Observer, topic: str, timeout_s: float = 10, **fields: Any) -> Any:
    return await asyncio.to_thread(observer.await_doc, topic, timeout_s, **fields)


async def test_birth_status_and_health_are_retained_for_late_subscribers(
    broker: Mosquitto, store: Store
) -> None:
    async with running(store, broker) as device:
        async with observing(broker) as early:
            await wait(early, STATUS, state="ready")
        assert device.ctx.is_ready and device.ctx.conditions[Condition.OFFLINE] is False
        async with observing(broker) as late:
            birth = await wait(late, BIRTH)
            status = await wait(late, STATUS, state="ready")
            health = await wait(late, HEALTH)
    assert birth["sid"] == status["sid"] == health["sid"] == 1
    assert birth["seq"] < status["seq"] < health["seq"]
    assert health["kind"] == "snapshot" and health["components"][0]["name"] == "engine"
    assert "reboot" in birth["capabilities"]["cmds"]
    assert all(m.retain for m in late.messages)


async def test_a_clean_stop_says_disconnected_and_the_will_is_not_sent(
    broker: Mosquitto, store: Store
) -> None:
    async with observing(broker, STATUS) as observer:
        async with running(store, broker):
            await wait(observer, STATUS, state="ready", sid=1)
        await wait(observer, STATUS, state="disconnected", sid=1)
        # The will delay is 1 s: a will would have arrived by now if it was still armed.
        assert not await asyncio.to_thread(
            observer.wait, lambda: observer.find(STATUS, state="lost"), 2.0
        )
        async with running(store, broker):
            await wait(observer, STATUS, state="ready", sid=2)


async def test_kill_9_makes_the_broker_say_lost_after_the_will_delay_and_sid_grows(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    data = tmp_path / "device"
    async with observing(broker, STATUS) as observer:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fleet.device_process",
            "--port",
            str(broker.port),
            "--data",
            str(data),
            "--will-delay-s",
            "1",
            cwd=CHECKOUT,
            stdout=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        )
        try:
            ready = await wait(observer, STATUS, 20, state="ready")
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        lost = await wait(observer, STATUS, 10, state="lost")
        assert lost["sid"] == ready["sid"]
        with_data = await Store.open(data / "appliance.db")
        try:
            async with running(with_data, broker):
                await wait(observer, STATUS, state="ready", sid=ready["sid"] + 1)
        finally:
            await with_data.close()


async def test_a_command_round_trip_with_response_topic_and_correlation(
    broker: Mosquitto, store: Store
) -> None:
    replies = "ops/replies/1"
    async with (
        observing(broker, STATUS, replies, f"{BASE}/cmd/res") as observer,
        running(store, broker) as device,
    ):
        await wait(observer, STATUS, state="ready")
        request = {
            "v": 1,
            "id": "c-1",
            "cmd": "identify",
            "args": {"duration_s": 3},
            "ts": 0,
            "expires": None,
            "sig": None,
        }
        observer.request(f"{BASE}/cmd/req", request, response_topic=replies, correlation=b"corr-1")
        result = await wait(observer, replies, id="c-1")
        assert (result["status"], result["code"]) == ("done", 200)
        (reply,) = [m for m in observer.messages if m.topic == replies]
        assert reply.properties.CorrelationData == b"corr-1"  # type: ignore[union-attr]
        assert device.actions.done == [("identify", 3)]
        observer.request(f"{BASE}/cmd/req", {**request, "id": "c-2", "cmd": "reboot"})
        refused = await wait(observer, f"{BASE}/cmd/res", id="c-2")
        assert refused["detail"] == "signature_required"


async def test_a_broker_outage_queues_the_newest_state_and_telemetry_resumes(
    broker: Mosquitto, store: Store
) -> None:
    async with running(store, broker) as device:
        async with observing(broker, STATUS) as observer:
            await wait(observer, STATUS, state="ready", sid=1)
        await broker.stop()
        await asyncio.to_thread(_until, lambda: not device.service.connected)
        device.sample = health_sample(cpu_pct=80.0)
        queue = store.queue("fleet.telemetry", max_items=500)
        await _until_async(lambda: queue.depth(), lambda n: n >= 1)
        device.sample = health_sample(cpu_pct=99.0, cpu_temp_c=70.0)
        await _until_async(lambda: queue.depth(), lambda n: n >= 2)
        await broker.start()
        async with observing(broker, STATUS, HEALTH) as observer:
            ready = await wait(observer, STATUS, 15, state="ready", sid=lambda sid: sid > 1)
            await wait(observer, HEALTH, kind="snapshot", sid=ready["sid"], cpu_pct=99.0)
        assert await queue.depth() == 0
        assert device.ctx.conditions[Condition.OFFLINE] is False


async def test_queued_state_is_delivered_newest_only_before_the_new_birth(
    broker: Mosquitto, store: Store
) -> None:
    # Reconnect attempts 1 s apart, so the observer is back on the broker before the device.
    slow = RestartPolicy(base_s=1.0, factor=1.0, max_s=1.0, jitter=0.0)
    async with running(store, broker, slow) as device:
        async with observing(broker, STATUS) as observer:
            await wait(observer, STATUS, state="ready", sid=1)
        await broker.stop()
        await asyncio.to_thread(_until, lambda: not device.service.connected)
        queue = store.queue("fleet.telemetry", max_items=500)
        for depth, cpu in ((1, 80.0), (2, 20.0), (3, 95.0)):
            device.sample = health_sample(cpu_pct=cpu)
            await _until_async(queue.depth, lambda n, d=depth: n >= d)
        await broker.start()
        async with observing(broker, BIRTH, HEALTH) as observer:
            await wait(observer, HEALTH, 15, sid=lambda sid: sid > 1)
            live = [(m.topic, json.loads(m.payload)) for m in observer.messages if not m.retain]
    queued = [doc for topic, doc in live if topic == HEALTH and doc["sid"] == 1]
    assert [doc["cpu_pct"] for doc in queued] == [95.0]
    topics = [topic for topic, _ in live]
    assert topics.index(HEALTH) < topics.index(BIRTH)


def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _now(read: Any) -> Any:
    """An async reader of a plain value, for `_until_async`."""

    async def value() -> Any:
        return read()

    return value


async def _until_async(read: Any, check: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check(await read()):  # noqa: ASYNC110 - the store has no change event
            await asyncio.sleep(0.05)


async def test_a_signed_reboot_from_a_trusted_key_file_reaches_the_device(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    keys = tmp_path / "keys"
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    await asyncio.to_thread(keys.mkdir)
    await asyncio.to_thread((keys / "ops.pub").write_bytes, pem)
    async with (
        observing(broker, STATUS, f"{BASE}/cmd/res") as observer,
        running(store, broker, command_key_files=(keys,)) as device,
    ):
        await wait(observer, STATUS, state="ready")
        request = {"v": 1, "id": "r-1", "cmd": "reboot", "args": {}, "ts": 0, "expires": None}
        observer.request(f"{BASE}/cmd/req", sign_command(request, key))
        accepted = await wait(observer, f"{BASE}/cmd/res", id="r-1")
        await wait(observer, STATUS, state="rebooting")
        assert (accepted["status"], accepted["code"]) == ("accepted", 202)
        await asyncio.to_thread(_until, lambda: ("reboot", None) in device.actions.done)


async def test_mutual_tls_with_the_fleet_ca_and_the_pattern_acl(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path, tls=True, fleet=FLEET) as broker:
        files = await broker.issue_device(DEVICE)
        db = await Store.open(tmp_path / "data" / "appliance.db")
        try:
            async with (
                observing(broker, f"{BASE}/#", port=broker.local_port) as observer,
                running(db, broker, tls=(files.ca, files.cert, files.key)),
            ):
                await wait(observer, STATUS, state="ready", sid=1)
                await wait(observer, BIRTH, sid=1)
                await wait(observer, HEALTH, sid=1)
        finally:
            await db.close()


@contextlib.asynccontextmanager
async def mqtt311_only(upstream_port: int) -> AsyncIterator[int]:
    """A proxy to Mosquitto that refuses MQTT 5 like a 3.1.1-only broker (CONNACK rc 1)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(4096)
        # CONNECT: 0x10, the remaining length (1-4 bytes, high bit = more), "\0\4MQTT", level.
        length_bytes = next(i for i in range(1, 5) if first[i] < 0x80)
        if first[:1] == b"\x10" and first[length_bytes + 7] == 5:
            writer.write(b"\x20\x02\x00\x01")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        up_writer.write(first)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_falls_back_to_mqtt_311_when_the_broker_refuses_5(
    broker: Mosquitto, store: Store
) -> None:
    async with (
        mqtt311_only(broker.port) as port,
        observing(broker, STATUS, BIRTH, f"{BASE}/cmd/res") as observer,
        running(store, broker, port=port) as device,
    ):
        birth = await wait(observer, BIRTH)
        assert birth["capabilities"]["mqtt"] == "3.1.1"
        ready = await wait(observer, STATUS, state="ready")
        assert ready["sid"] == 2  # one refused MQTT 5 CONNECT, then 3.1.1
        request = {"v": 1, "id": "c-3", "cmd": "identify", "args": {}, "ts": 0, "expires": None}
        observer.request(f"{BASE}/cmd/req", request, response_topic="ignored/on/311")
        result = await wait(observer, f"{BASE}/cmd/res", id="c-3")
        assert result["status"] == "done" and device.actions.done == [("identify", 15)]


async def test_reconnects_back_off_on_the_injected_clock(clock: FakeClock, store: Store) -> None:
    device = Device(
        store,
        free_port(),  # nothing listens: every CONNECT is refused at once
        RestartPolicy(base_s=1.0, factor=2.0, max_s=60.0, jitter=0.0),
        clock=clock,
    )
    device.start()
    try:
        for sid, delay_s in ((1, 1.0), (2, 2.0), (3, 4.0)):
            await _until_async(lambda: store.kv.get("fleet.sid"), lambda v, s=sid: v == str(s))
            # The refused CONNECT runs in a thread: wait until the backoff sleep has begun.
            backoff_ends = clock.monotonic() + delay_s
            await _until_async(
                _now(clock.deadlines),
                lambda ends, at=backoff_ends: any(abs(e - at) < 1e-6 for e in ends),
            )
            await clock.advance(delay_s - 0.01)
            assert await store.kv.get("fleet.sid") == str(sid)
            await clock.advance(0.01)
        await _until_async(lambda: store.kv.get("fleet.sid"), lambda v: v == "4")
        assert device.ctx.is_ready and device.ctx.conditions[Condition.OFFLINE] is True
    finally:
        await device.stop()
