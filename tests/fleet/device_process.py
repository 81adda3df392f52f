"""A FleetService in a process of its own, for tests that kill the appliance with SIGKILL.

    python -m tests.fleet.device_process --port P --data DIR [--will-delay-s 1]

It runs until killed; it prints "running" once the service started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.clock import Clock, SystemClock
from appliance.fleet.client import Broker
from appliance.fleet.desired import Telemetry
from appliance.fleet.protocol import FleetProtocol
from appliance.fleet.service import FleetService, HealthSource
from appliance.fleet.topics import DeviceTopics
from appliance.store import Store
from appliance.supervisor import RestartPolicy

FLEET, DEVICE = "lab", "pi-1"
FAST_RECONNECT = RestartPolicy(base_s=0.1, factor=2.0, max_s=0.5, jitter=0.1)


def health_sample(**changes: Any) -> dict[str, Any]:
    """A plausible health sample."""
    sample: dict[str, Any] = {
        "overall": "healthy",
        "uptime_s": 10.0,
        "cpu_pct": 10.0,
        "cpu_temp_c": 50.0,
        "throttled": {"now": [], "since_boot": []},
        "mem_used_mb": 500,
        "mem_total_mb": 4000,
        "disk_used_mb": 100,
        "disk_total_mb": 1000,
        "net": {"iface": "lo", "ip": "127.0.0.1", "rssi_dbm": None},
        "engine": {"p50_ms": 1.0, "p95_ms": 2.0, "count": 1, "errors": 0},
        "queues": {"inbox": 0, "outbox": 0},
        "components": [{"name": "engine", "state": "ready", "restarts": 0}],
        "model": {"name": "m", "version": "1", "sha256": "00" * 32},
    }
    sample.update(changes)
    return sample


class RecordingDevice:
    """DeviceActions that remember what they were asked to do."""

    def __init__(self) -> None:
        self.done: list[tuple[str, Any]] = []

    def identify(self, duration_s: float) -> None:
        self.done.append(("identify", duration_s))

    def restart(self, component: str) -> None:
        if component != "engine":
            raise KeyError(component)
        self.done.append(("restart", component))

    def set_log_level(self, level: str) -> None:
        self.done.append(("log_level", level))

    async def reboot(self) -> None:
        self.done.append(("reboot", None))

    async def factory_reset(self) -> None:
        raise NotImplementedError("factory reset is not wired in tests")


def make_service(
    store: Store,
    port: int,
    *,
    clock: Clock,
    health: HealthSource,
    device: RecordingDevice,
    will_delay_s: int = 1,
    mqtt_version: str = "auto",
    command_keys: tuple[Any, ...] = (),
    min_interval_s: float = 0.2,
    reconnect: RestartPolicy = FAST_RECONNECT,
    tls: tuple[Path, Path, Path] | None = None,
    command_key_files: tuple[Path, ...] = (),
) -> FleetService:
    """A FleetService on loopback with fast timings."""
    protocol = FleetProtocol(
        DeviceTopics(FLEET, DEVICE),
        inventory={"hw": {"model": "test"}, "sw": {"app": "test"}},
        versions={"app": "test"},
        command_keys=command_keys,
        telemetry=Telemetry(health_min_interval_s=min_interval_s),
        will_delay_s=will_delay_s,
    )

    async def wait_store() -> Store:
        return store

    return FleetService(
        protocol,
        Broker(
            "127.0.0.1",
            port,
            client_id=f"{FLEET}.{DEVICE}",
            keepalive_s=5,
            ca_file=tls[0] if tls else None,
            cert_file=tls[1] if tls else None,
            key_file=tls[2] if tls else None,
        ),
        store=wait_store,
        clock=clock,
        health=health,
        device=device,
        mqtt_version=mqtt_version,  # type: ignore[arg-type]
        reconnect=reconnect,
        command_key_files=command_key_files,
        rng=random.Random(1),
    )


class PrintContext:
    """A ServiceContext that prints readiness."""

    name = "fleet"
    logger = logging.getLogger("device_process")

    def ready(self) -> None:
        print("running", flush=True)

    def set_condition(self, condition: Any, active: bool, detail: str = "") -> None:
        pass

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        pass


async def main(port: int, data: Path, will_delay_s: int) -> None:
    store = await Store.open(data / "appliance.db")

    async def health() -> Mapping[str, Any]:
        return health_sample()

    service = make_service(
        store,
        port,
        clock=SystemClock(),
        health=health,
        device=RecordingDevice(),
        will_delay_s=will_delay_s,
    )
    await service.run(PrintContext())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--will-delay-s", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.data, args.will_delay_s))
