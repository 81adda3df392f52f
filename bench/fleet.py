"""How many devices one `fleet status` consumer keeps up with on one local Mosquitto (DESIGN §9).

N simulated devices (one asyncio process, raw MQTT 3.1.1 over loopback: a paho client per
device would need a thread each) publish retained health reports to a real Mosquitto, each
once a second: ten times the protocol's ceiling of one report per 10 s per device, so each
step is a worst case. The consumer in this process is the `fleet status --watch` path
(`OperatorClient` + `FleetView`); its lag is receive time minus the report's `ts`. N doubles
from 250 until the consumer's p99 lag reaches 1 s or it loses messages, or time runs out.

Run as `python -m bench.fleet simulate ...` it is the device simulator (a child process, so
the consumer is measured without sharing its interpreter with N devices).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.fleet import payloads
from appliance.fleet.payloads import Envelope, HealthKind
from bench.report import Result
from provisioning import broker_config
from provisioning.fleet_view import FleetView
from provisioning.operator import Connection, OperatorClient

MOSQUITTO = "/usr/sbin/mosquitto"
STEPS = (250, 500, 1000, 2000, 4000, 8000, 16000)
PERIOD_S = 1.0  # each device's report interval during a step
STEP_S = 6.0  # how long the devices publish in each step
TIME_CAP_S = 100.0  # the whole run stops starting new steps after this
LAG_LIMIT_MS = 1000.0
MIN_DELIVERED = 0.99
MIN_OFFERED = 0.9  # below this the simulator, not the consumer, is the limit
CONNECTS_IN_FLIGHT = 200


@dataclass
class Step:
    """What the consumer saw while N devices reported."""

    devices: int
    sent: int = 0
    received: int = 0
    lags_ms: list[float] = field(default_factory=list)
    connected: int = 0

    @property
    def p99_ms(self) -> float:
        """The consumer's 99th-percentile lag."""
        return float(np.percentile(self.lags_ms, 99)) if self.lags_ms else float("inf")

    @property
    def delivered(self) -> float:
        """The share of sent reports that reached the consumer."""
        return self.received / self.sent if self.sent else 0.0

    @property
    def offered(self) -> float:
        """The share of the nominal load the simulator managed to send."""
        nominal = self.devices * STEP_S / PERIOD_S
        return self.sent / nominal if nominal else 0.0

    @property
    def full_load(self) -> bool:
        """Whether every device connected and reported at its full rate."""
        return self.connected == self.devices and self.offered >= MIN_OFFERED

    @property
    def kept_up(self) -> bool:
        """Whether the consumer stayed under the lag limit without losing reports."""
        return self.p99_ms < LAG_LIMIT_MS and self.delivered >= MIN_DELIVERED

    @property
    def ok(self) -> bool:
        """A valid step the consumer passed."""
        return self.full_load and self.kept_up

    def describe(self) -> str:
        """One line for the progress output."""
        return (
            f"{self.devices} devices: p99 lag {self.p99_ms:.0f} ms, {self.delivered:.1%} "
            f"delivered, {self.sent / STEP_S:.0f} msg/s offered ({self.offered:.0%} of nominal)"
        )


# --- the device simulator (child process) -------------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, keepalive_s: int = 60) -> bytes:
    """MQTT 3.1.1 CONNECT with a clean session."""
    body = _string("MQTT") + bytes([4, 0x02]) + keepalive_s.to_bytes(2, "big") + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, *, retain: bool) -> bytes:
    """MQTT PUBLISH at QoS 0."""
    body = _string(topic) + payload
    return bytes([0x30 | int(retain)]) + _remaining_length(len(body)) + body


def _health_template() -> dict[str, object]:
    sample = {
        "overall": "healthy",
        "uptime_s": 100,
        "cpu_pct": 12.0,
        "cpu_temp_c": 51.0,
        "mem_used_mb": 512,
        "mem_total_mb": 4096,
        "engine": {"p50_ms": 30.0, "p95_ms": 70.0},
        "queues": {"inbox": 0, "outbox": 0, "telemetry": 0},
    }
    health = payloads.check_health(sample)
    return payloads.health_payload(Envelope(0, 1, 0), HealthKind.DELTA, health)


@dataclass
class _Roll:
    """The simulator's roll call: everyone connected (or failed) before anyone reports."""

    devices: int
    connected: int = 0
    failed: int = 0
    everyone: asyncio.Event = field(default_factory=asyncio.Event)
    start: asyncio.Event = field(default_factory=asyncio.Event)
    stop_at: float = 0.0

    def answered(self, ok: bool) -> None:
        if ok:
            self.connected += 1
        else:
            self.failed += 1
        if self.connected + self.failed == self.devices:
            self.everyone.set()


async def _device(index: int, port: int, fleet: str, gate: asyncio.Semaphore, roll: _Roll) -> int:
    try:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(connect_packet(f"sim-{fleet}-{index}"))
            if (await reader.readexactly(4))[3] != 0:
                raise ConnectionError("CONNACK refused")
    except (OSError, asyncio.IncompleteReadError):
        roll.answered(False)
        return -1
    roll.answered(True)
    await roll.start.wait()
    topic = f"appliance/v1/{fleet}/sim-{index:05d}/health"
    document = _health_template()
    loop = asyncio.get_running_loop()
    # Spread the devices over the period, as real devices are.
    next_at = loop.time() + PERIOD_S * (index % 1000) / 1000
    sent = 0
    while True:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        if loop.time() >= roll.stop_at:
            break
        document.update(ts=int(time.time() * 1000), seq=sent)
        writer.write(publish_packet(topic, payloads.encode(document), retain=True))
        await writer.drain()
        sent += 1
        next_at += PERIOD_S
    writer.write(b"\xe0\x00")  # DISCONNECT
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return sent


async def _simulate(devices: int, port: int, fleet: str, seconds: float) -> None:
    """Connect every device, say `ready`, report for `seconds`, then print what was sent."""
    gate, roll = asyncio.Semaphore(CONNECTS_IN_FLIGHT), _Roll(devices)
    tasks = [asyncio.create_task(_device(i, port, fleet, gate, roll)) for i in range(devices)]
    await roll.everyone.wait()
    roll.stop_at = asyncio.get_running_loop().time() + seconds
    print(json.dumps({"ready": True, "connected": roll.connected}), flush=True)
    roll.start.set()
    sent = [n for n in await asyncio.gather(*tasks) if n >= 0]
    print(json.dumps({"sent": sum(sent), "connected": len(sent)}), flush=True)


# --- the consumer (this process) ------------------------------------------------------------


def _raise_fd_limit() -> None:
    # Mosquitto and the simulator inherit this: one descriptor per device connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _mosquitto(directory: Path, port: int) -> AsyncIterator[None]:
    settings = broker_config.BrokerSettings(
        fleet="bench",
        acl_path=directory / "acl",
        local_port=port,
        local_access="readwrite",
        run_as=broker_config.default_run_as(),
        log_dest="none",
    )
    conf = directory / "mosquitto.conf"
    broker_config.write(settings, conf, force=True)
    process = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-c", str(conf), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield
    finally:
        process.terminate()
        await process.wait()


async def _step(client: OperatorClient, port: int, devices: int) -> Step:
    fleet = f"bench-{devices}"
    view, step = FleetView(fleet), Step(devices)
    await client.subscribe(view.filters, qos=0)
    simulator = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench.fleet", "simulate", str(devices), str(port), fleet, str(STEP_S)),
        stdout=asyncio.subprocess.PIPE,
    )
    assert simulator.stdout is not None
    prefix = f"appliance/v1/{fleet}/"

    async def consume() -> None:
        while True:
            message = await client.receive()
            if not message.topic.startswith(prefix):
                continue
            view.apply(message.topic, message.payload)
            seen = view.last_seen_ms(message.topic[len(prefix) :].split("/", 1)[0])
            if seen is not None:
                step.received += 1
                step.lags_ms.append(time.time() * 1000 - seen)

    consumer = asyncio.create_task(consume())
    try:
        await simulator.stdout.readline()  # ready
        summary = json.loads(await simulator.stdout.readline() or b"{}")
        await simulator.wait()
        step.sent, step.connected = summary.get("sent", 0), summary.get("connected", 0)
        await _drain(step)
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    return step


async def _drain(step: Step, quiet_s: float = 1.0) -> None:
    """Let the consumer catch up: until all arrived or nothing new for `quiet_s`."""
    last = -1
    while step.received < step.sent and step.received != last:
        last = step.received
        await asyncio.sleep(quiet_s)


async def _measure() -> list[Step]:
    _raise_fd_limit()
    port = _free_port()
    steps: list[Step] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            _mosquitto(Path(tmp), port),
            OperatorClient.connect(Connection("127.0.0.1", port)) as client,
        ):
            for devices in STEPS:
                if time.monotonic() - started > TIME_CAP_S - 2 * STEP_S:
                    break
                step = await _step(client, port, devices)
                steps.append(step)
                print(f"    {step.describe()}", file=sys.stderr, flush=True)
                if not step.ok:
                    break
    return steps


def run() -> list[Result]:
    """The largest fleet one consumer keeps under 1 s of lag, and its message rate there."""
    if not Path(MOSQUITTO).exists():
        print("    skipped: mosquitto is not installed", file=sys.stderr)
        return []
    steps = asyncio.run(_measure())
    passed = [s for s in steps if s.ok]
    best = passed[-1] if passed else steps[0]
    last = steps[-1]
    limit = f"no step failed up to {last.devices} devices"
    if not last.ok:
        limit = f"at {last.devices}: p99 {last.p99_ms:.0f} ms, {last.delivered:.1%} delivered"
        if not last.full_load:
            limit += f", the simulator itself sent only {last.offered:.0%} of the nominal load"
    return [
        Result(
            "fleet: devices, consumer lag p99 < 1 s",
            best.devices if best.ok else 0,
            STEPS[0],
            "devices",
            True,
            f"{PERIOD_S:g} health report/s per device (10x the protocol's ceiling); p99 lag "
            f"{best.p99_ms:.0f} ms at {best.devices}; {limit}; baseline: the first step",
        ),
        Result(
            f"fleet: consumer msg/s at {best.devices} devices",
            best.received / STEP_S,
            best.devices / PERIOD_S,
            "msg/s",
            True,
            "baseline: the nominal rate the devices offered; one Mosquitto, loopback",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """`simulate N PORT FLEET SECONDS`: the device simulator the benchmark starts."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("role", choices=["simulate"])
    parser.add_argument("devices", type=int)
    parser.add_argument("port", type=int)
    parser.add_argument("fleet")
    parser.add_argument("seconds", type=float)
    args = parser.parse_args(argv)
    _raise_fd_limit()
    asyncio.run(_simulate(args.devices, args.port, args.fleet, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
