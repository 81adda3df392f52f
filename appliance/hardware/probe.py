"""The one module that reads the machine: device tree, DMI, procfs, sysfs and `vcgencmd`.

Everything it reads is under `root` (normally `/`), so tests point it at recorded board trees;
`vcgencmd` is a callable so tests feed it recorded output. It blocks (file reads, a
subprocess): call it through `asyncio.to_thread`, never on the event loop. Parsing lives in
`machine.py` and `throttling.py`; this module must not interpret what it reads beyond that.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.hardware.machine import (
    CpuInfo,
    Machine,
    block_device_of,
    decode_pi_revision,
    parse_cpuinfo,
    parse_device_tree_string,
    parse_khz,
    parse_meminfo,
    parse_millidegrees,
    parse_wireless,
    root_source,
    storage_kind,
)
from appliance.hardware.throttling import Throttling, parse_get_throttled
from appliance.inference.runtime import Runtime, available_runtimes

_LOGGER = logging.getLogger(__name__)

Vcgencmd = Callable[[], "str | None"]
"""Returns the output of `vcgencmd get_throttled`, or None where there is no vcgencmd."""

# Thermal zone types that measure the CPU itself, best first.
CPU_ZONES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "coretemp")
VIRTUAL_DISKS = ("loop", "ram", "zram", "dm-", "md", "sr")


def run_vcgencmd() -> str | None:
    """`vcgencmd get_throttled` on this machine; None when absent or failing."""
    command = shutil.which("vcgencmd")
    if command is None:
        return None
    try:
        done = subprocess.run(
            [command, "get_throttled"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        _LOGGER.debug("vcgencmd failed: %s", err)
        return None
    return done.stdout if done.returncode == 0 else None


def no_runtimes() -> list[Runtime]:
    """For probing a recorded tree: report no runtimes rather than this machine's."""
    return []


def probe(
    root: Path = Path("/"),
    *,
    vcgencmd: Vcgencmd = run_vcgencmd,
    runtimes: Callable[[], Sequence[Runtime]] = available_runtimes,
) -> Machine:
    """Read the machine under `root` (blocking)."""
    cpuinfo = parse_cpuinfo(_text(root / "proc/cpuinfo") or "")
    revision = decode_pi_revision(cpuinfo.revision) if cpuinfo.revision else None
    memory = parse_meminfo(_text(root / "proc/meminfo") or "")
    cpufreq = root / "sys/devices/system/cpu/cpu0/cpufreq"
    governor = _text(cpufreq / "scaling_governor")
    max_khz = _text(cpufreq / "cpuinfo_max_freq")
    return Machine(
        board=_board(root, cpuinfo),
        arch=cpuinfo.arch,
        soc=revision.soc if revision else cpuinfo.hardware,
        cpu=cpuinfo.cpu,
        cores=cpuinfo.cores or os.cpu_count() or 1,
        features=cpuinfo.features,
        governor=governor.strip() if governor else None,
        max_freq_mhz=parse_khz(max_khz) if max_khz else None,
        ram_mib=memory.get("MemTotal"),
        available_mib=memory.get("MemAvailable"),
        temp_c=read_temperature(root),
        throttling=read_throttling(root, vcgencmd),
        storage=_storage(root),
        runtimes=tuple((r.name, r.version) for r in runtimes()),
        pi_revision=revision,
    )


def read_throttling(root: Path = Path("/"), vcgencmd: Vcgencmd = run_vcgencmd) -> Throttling | None:
    """The throttling bits from vcgencmd, else from the firmware's sysfs file; None if neither."""
    output = vcgencmd()
    if output:
        found = parse_get_throttled(output, "vcgencmd")
        if found is not None:
            return found
    for path in sorted(root.glob("sys/devices/platform/*/*firmware/get_throttled")):
        text = _text(path)
        if text:
            return parse_get_throttled(text, "sysfs")
    return None


def read_wifi_signal(root: Path = Path("/")) -> dict[str, float]:
    """Wi-Fi signal level in dBm per interface; empty without Wi-Fi."""
    return parse_wireless(_text(root / "proc/net/wireless") or "")


def read_temperature(root: Path = Path("/")) -> float | None:
    """The CPU's temperature in °C from the thermal zones (the CPU zone if named)."""
    zones = {}
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        temp = parse_millidegrees(_text(zone / "temp") or "")
        if temp is not None:
            zones[(_text(zone / "type") or "").strip()] = temp
    for kind in CPU_ZONES:
        if kind in zones:
            return zones[kind]
    return next(iter(zones.values()), None)


def _board(root: Path, cpuinfo: CpuInfo) -> str:
    for path in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        data = _bytes(root / path)
        if data:
            return parse_device_tree_string(data)
    if cpuinfo.model:
        return cpuinfo.model
    dmi = root / "sys/class/dmi/id"
    vendor, product = _text(dmi / "sys_vendor"), _text(dmi / "product_name")
    if product:
        return " ".join(p.strip() for p in (vendor, product) if p and p.strip())
    return f"generic {cpuinfo.arch} ({cpuinfo.cpu})"


def _storage(root: Path) -> str | None:
    source = root_source(_text(root / "proc/mounts") or "")
    device = block_device_of(source) if source else None
    if device is None or not (root / "sys/block" / device).exists():
        device = next(
            (
                d.name
                for d in sorted((root / "sys/block").glob("*"))
                if not d.name.startswith(VIRTUAL_DISKS)
            ),
            None,
        )
    if device is None:
        return None
    block = root / "sys/block" / device
    return storage_kind(
        device,
        mmc_type=_text(block / "device/type"),
        usb="/usb" in str(block.resolve()),
    )


def _text(path: Path) -> str | None:
    data = _bytes(path)
    return data.decode("utf-8", "replace") if data is not None else None


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
