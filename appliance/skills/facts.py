"""Live facts about the device for the ops skills: CPU, memory, disk, temperature, network.

Blocking reads through psutil; callers run `read_*` with `asyncio.to_thread`. No message text
and nothing about users is read or kept here.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class DeviceFacts:
    """How the device is doing right now."""

    cpu_percent: float
    load_1m: float
    cores: int
    memory_used_percent: float
    memory_total_mib: float
    disk_used_percent: float
    disk_free_gib: float
    temp_c: float | None
    uptime_s: float


@dataclass(frozen=True)
class Interface:
    """One network interface."""

    name: str
    up: bool
    ipv4: tuple[str, ...]
    speed_mbps: int


def read_device_facts(data_dir: Path) -> DeviceFacts:
    """CPU, memory, disk (of the data directory's file system), temperature and uptime."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(data_dir if data_dir.exists() else Path("/")))
    return DeviceFacts(
        cpu_percent=psutil.cpu_percent(interval=0.1),
        load_1m=psutil.getloadavg()[0],
        cores=psutil.cpu_count() or 1,
        memory_used_percent=memory.percent,
        memory_total_mib=memory.total / 2**20,
        disk_used_percent=disk.percent,
        disk_free_gib=disk.free / 2**30,
        temp_c=_temperature_c(),
        uptime_s=time.time() - psutil.boot_time(),
    )


def _temperature_c() -> float | None:
    if not hasattr(psutil, "sensors_temperatures"):  # not on every platform
        return None
    sensors = psutil.sensors_temperatures()
    for name in ("cpu_thermal", "coretemp", "k10temp", "soc_thermal", "acpitz"):
        if sensors.get(name):
            return float(sensors[name][0].current)
    readings = [r.current for entries in sensors.values() for r in entries]
    return float(max(readings)) if readings else None


def read_interfaces() -> list[Interface]:
    """Every interface but loopback, with its IPv4 addresses."""
    stats = psutil.net_if_stats()
    interfaces = []
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        if name == "lo":
            continue
        ipv4 = tuple(a.address for a in addresses if a.family == socket.AF_INET)
        stat = stats.get(name)
        interfaces.append(
            Interface(name, bool(stat and stat.isup), ipv4, stat.speed if stat else 0)
        )
    return interfaces
