"""The health sample the fleet reports, put together from what the appliance already knows.

`assemble_health` is pure: device facts, network interfaces, the engine's snapshot, the chat
queue depths and the supervisor's service views in, the health dict of research fleet-ota §4.4
out. `HealthSampler` gathers those inputs (blocking reads in a worker thread; throttling through
`appliance.hardware.probe`, the one reader of vcgencmd and sysfs). Only figures and
names of services go in: never message text, never user ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.hardware.probe import read_throttling, read_wifi_signal
from appliance.hardware.throttling import BITS, Throttling
from appliance.skills.facts import DeviceFacts, Interface, read_device_facts, read_interfaces
from appliance.supervisor import ServiceState, ServiceView


def assemble_health(
    facts: DeviceFacts,
    interfaces: Sequence[Interface],
    engine: Mapping[str, Any],
    depths: Mapping[str, int],
    views: Sequence[ServiceView],
    throttling: Throttling | None = None,
    wifi_dbm: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The health sample from its parts."""
    mem_total_mb = facts.memory_total_mib
    disk_free_mb = facts.disk_free_gib * 1024
    disk_total_mb = (
        disk_free_mb / (1 - facts.disk_used_percent / 100)
        if facts.disk_used_percent < 100
        else None
    )
    return {
        "overall": overall(views),
        "uptime_s": round(max(0.0, facts.uptime_s), 1),
        "cpu_pct": round(min(100.0, max(0.0, facts.cpu_percent)), 1),
        "cpu_temp_c": None if facts.temp_c is None else round(facts.temp_c, 1),
        "throttled": throttled(throttling),
        "mem_used_mb": round(mem_total_mb * facts.memory_used_percent / 100, 1),
        "mem_total_mb": round(mem_total_mb, 1),
        "disk_used_mb": None if disk_total_mb is None else round(disk_total_mb - disk_free_mb, 1),
        "disk_total_mb": None if disk_total_mb is None else round(disk_total_mb, 1),
        "net": _net(interfaces, wifi_dbm or {}),
        "engine": {
            "p50_ms": engine.get("p50_ms"),
            "p95_ms": engine.get("p95_ms"),
            "count": int(engine.get("count", 0)),
            "errors": int(engine.get("errors", 0)),
        },
        "queues": {"inbox": int(depths.get("inbox", 0)), "outbox": int(depths.get("outbox", 0))},
        "components": [
            {"name": v.name, "state": str(v.state), "restarts": v.restarts} for v in views
        ],
        "model": {
            "name": engine.get("model"),
            "version": engine.get("model_version"),
            "sha256": engine.get("model_sha256"),
        },
    }


def overall(views: Sequence[ServiceView]) -> str:
    """Healthy when every service is ready; unhealthy when one is parked; else degraded."""
    if any(v.state is ServiceState.PARKED for v in views):
        return "unhealthy"
    if all(v.state is ServiceState.READY and v.healthy for v in views):
        return "healthy"
    return "degraded"


def throttled(throttling: Throttling | None) -> dict[str, list[str]] | None:
    """The firmware's throttling bits as flags now and since boot; None where unknown."""
    if throttling is None:
        return None
    now = [BITS[bit] for bit in _NOW_BITS if throttling.is_set(bit)]
    since_boot = [BITS[bit + 16] for bit in _NOW_BITS if throttling.is_set(bit + 16)]
    return {"now": now, "since_boot": [flag.removesuffix("_occurred") for flag in since_boot]}


_NOW_BITS = (0, 1, 2, 3)


def _net(interfaces: Sequence[Interface], wifi_dbm: Mapping[str, float]) -> dict[str, Any]:
    for interface in interfaces:
        if interface.up and interface.ipv4:
            rssi = wifi_dbm.get(interface.name)
            return {"iface": interface.name, "ip": interface.ipv4[0], "rssi_dbm": rssi}
    return {"iface": None, "ip": None, "rssi_dbm": None}


@dataclass(frozen=True)
class HealthSampler:
    """Gathers a health sample from the running appliance; the fleet service calls it."""

    data_dir: Path
    engine: Callable[[], Mapping[str, Any]]
    depths: Callable[[], Awaitable[Mapping[str, int]]]
    views: Callable[[], Sequence[ServiceView]]

    async def __call__(self) -> dict[str, Any]:
        """One sample now."""
        facts, interfaces, throttling, wifi = await asyncio.to_thread(self._read)
        return assemble_health(
            facts, interfaces, self.engine(), await self.depths(), self.views(), throttling, wifi
        )

    def _read(
        self,
    ) -> tuple[DeviceFacts, list[Interface], Throttling | None, dict[str, float]]:
        facts, interfaces = read_device_facts(self.data_dir), read_interfaces()
        return facts, interfaces, read_throttling(), read_wifi_signal()
