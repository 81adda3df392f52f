"""What the probe found out about the machine, and the pure parsers that turn text into it.

Every function here takes the text of a procfs, sysfs or device-tree file and returns values;
none of them reads a file (`probe.py` does that, DESIGN §6). Formats: `/proc/cpuinfo` as the
Linux arm64, arm and x86 kernels print it; Raspberry Pi revision codes as documented in the
Raspberry Pi hardware docs ("new-style" codes, bit 23 set); `/proc/meminfo` in kB.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.hardware.throttling import Throttling

# ARM "CPU part" ids (implementer 0x41) of the cores on the boards the library knows.
ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xb76": "ARM1176",
    "0xc07": "Cortex-A7",
}

# Raspberry Pi revision code fields (bits 4-11 type, 12-15 processor, 20-22 memory).
PI_TYPES = {
    0x04: "2B",
    0x08: "3B",
    0x0D: "3B+",
    0x0E: "3A+",
    0x11: "4B",
    0x12: "Zero 2 W",
    0x13: "400",
    0x14: "CM4",
    0x15: "CM4S",
    0x17: "5",
    0x18: "CM5",
    0x19: "500",
    0x1A: "CM5 Lite",
}
PI_SOCS = {0: "BCM2835", 1: "BCM2836", 2: "BCM2837", 3: "BCM2711", 4: "BCM2712"}
PI_MEMORY_MIB = {0: 256, 1: 512, 2: 1024, 3: 2048, 4: 4096, 5: 8192, 6: 16384}

# Features worth showing a person: the SIMD that int8 kernels use (all others stay in the data).
NOTABLE_FEATURES = (
    "neon",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
)


@dataclass(frozen=True)
class PiRevision:
    """A decoded new-style Raspberry Pi revision code."""

    code: int
    board_type: str
    soc: str
    memory_mib: int
    pcb_revision: str


@dataclass(frozen=True)
class CpuInfo:
    """The parts of `/proc/cpuinfo` the tuner uses."""

    cores: int = 0
    physical_cores: int | None = None
    cpu: str = "unknown"
    arch: str = "unknown"
    features: tuple[str, ...] = ()
    hardware: str | None = None
    revision: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Machine:
    """Everything the probe found: board, CPU, memory, heat, throttling, storage, runtimes."""

    board: str
    arch: str
    soc: str | None
    cpu: str
    cores: int
    features: tuple[str, ...] = ()
    governor: str | None = None
    max_freq_mhz: float | None = None
    ram_mib: int | None = None
    available_mib: int | None = None
    temp_c: float | None = None
    throttling: Throttling | None = None
    storage: str | None = None
    runtimes: tuple[tuple[str, str], ...] = ()
    pi_revision: PiRevision | None = field(default=None, repr=False)

    @property
    def runtime(self) -> str:
        """The preferred runtime as `name version`, or "none"."""
        return " ".join(self.runtimes[0]) if self.runtimes else "none"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the throttling bits decoded."""
        data = asdict(self)
        data["features"] = [f for f in NOTABLE_FEATURES if f in self.features]
        data["throttling"] = self.throttling.as_dict() if self.throttling else None
        data["runtimes"] = [f"{name} {version}" for name, version in self.runtimes]
        return data


def parse_cpuinfo(text: str) -> CpuInfo:
    """Cores, CPU name, features and the Raspberry Pi lines of a `/proc/cpuinfo` text."""
    blocks = [_fields(block) for block in re.split(r"\n\s*\n", text) if block.strip()]
    processors = [b for b in blocks if "processor" in b]
    tail: dict[str, str] = {}
    for block in blocks:
        tail.update({k: v for k, v in block.items() if k in ("Hardware", "Revision", "Model")})
    first = processors[0] if processors else {}
    features = first.get("Features", first.get("flags", "")).split()
    physical = first.get("cpu cores")
    return CpuInfo(
        cores=len(processors),
        physical_cores=int(physical) if physical and physical.isdigit() else None,
        cpu=_cpu_name(first),
        arch=_arch(first),
        features=tuple(features),
        hardware=tail.get("Hardware"),
        revision=tail.get("Revision"),
        model=tail.get("Model"),
    )


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_name(first: dict[str, str]) -> str:
    part = first.get("CPU part", "").lower()
    if part in ARM_PARTS and first.get("CPU implementer", "").lower() == "0x41":
        return ARM_PARTS[part]
    if part:
        return f"ARM part {part}"
    return first.get("model name", "unknown")


def _arch(first: dict[str, str]) -> str:
    if "vendor_id" in first:
        return "x86_64" if " lm " in f" {first.get('flags', '')} " else "i686"
    return {"8": "aarch64", "7": "armv7l", "6": "armv6l"}.get(
        first.get("CPU architecture", ""), "unknown"
    )


def decode_pi_revision(code: str) -> PiRevision | None:
    """A new-style revision code (e.g. "c03114") decoded; None for old-style or garbage."""
    try:
        value = int(code, 16)
    except ValueError:
        return None
    if not value & (1 << 23):
        return None  # old-style codes (first-generation boards) carry no fields
    kind = (value >> 4) & 0xFF
    return PiRevision(
        code=value,
        board_type=PI_TYPES.get(kind, f"type 0x{kind:02x}"),
        soc=PI_SOCS.get((value >> 12) & 0xF, f"processor {(value >> 12) & 0xF}"),
        memory_mib=PI_MEMORY_MIB.get((value >> 20) & 0x7, 0),
        pcb_revision=f"1.{value & 0xF}",
    )


def parse_meminfo(text: str) -> dict[str, int]:
    """`/proc/meminfo` as MiB per field (MemTotal, MemAvailable, ...)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w[\w()]*):\s+(\d+)(?:\s+kB)?\s*", line)
        if match:
            values[match[1]] = int(match[2]) // 1024
    return values


def parse_device_tree_string(data: bytes) -> str:
    """A device-tree string property: NUL-terminated, possibly with trailing NULs."""
    return data.split(b"\x00", 1)[0].decode("utf-8", "replace").strip()


def parse_millidegrees(text: str) -> float | None:
    """A thermal zone's `temp` (millidegrees Celsius) in °C, or None when unreadable."""
    try:
        return int(text.strip()) / 1000
    except ValueError:
        return None


def parse_khz(text: str) -> float | None:
    """A cpufreq frequency file (kHz) in MHz, or None when unreadable."""
    try:
        return int(text.strip()) / 1000
    except ValueError:
        return None


def parse_wireless(text: str) -> dict[str, float]:
    """Signal level in dBm per Wi-Fi interface, from `/proc/net/wireless`.

    After two header lines each line reads `wlan0: 0000   54.  -56.  -256  0 0 0 0 24 0`:
    interface, status, link quality, level, noise, ...; levels may carry a trailing dot. A
    positive level is a driver reporting a percentage instead of dBm, which is left out.
    """
    levels: dict[str, float] = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if not name.strip() or len(fields) < 3:
            continue
        try:
            level = float(fields[2].rstrip("."))
        except ValueError:
            continue
        if -120.0 <= level < 0.0:
            levels[name.strip()] = level
    return levels


def storage_kind(device: str, *, mmc_type: str | None = None, usb: bool = False) -> str:
    """The kind of a block device by its kernel name: sd, emmc, nvme, usb, ssd or other."""
    if device.startswith("mmcblk"):
        return "emmc" if (mmc_type or "").strip().upper() == "MMC" else "sd"
    if device.startswith("nvme"):
        return "nvme"
    if re.fullmatch(r"sd[a-z]+", device):
        return "usb" if usb else "ssd"
    if device.startswith("vd"):
        return "virtio"
    return "other"


def block_device_of(source: str) -> str | None:
    """The whole-disk name behind a mount source: "/dev/mmcblk0p2" → "mmcblk0"."""
    name = source.removeprefix("/dev/")
    if name == source or "/" in name:
        return None
    for pattern in (
        r"(mmcblk\d+)(?:p\d+)?",
        r"(nvme\d+n\d+)(?:p\d+)?",
        r"((?:sd|vd|xvd|hd)[a-z]+)\d*",
    ):
        match = re.fullmatch(pattern, name)
        if match:
            return match[1]
    return None  # /dev/root, a mapper device or a network source: the caller looks further


def root_source(mounts: str) -> str | None:
    """The device mounted on / in a `/proc/mounts` text."""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "/":
            return parts[0]
    return None
