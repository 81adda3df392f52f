"""The words of each reply, from facts already gathered. Pure: values in, text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from appliance.alerts import Alert
from appliance.skills.facts import DeviceFacts, Interface

HELP = (
    "I run on this device and answer locally. Ask me about: device status (CPU, memory, disk, "
    "temperature), the network, the AI model, recent alerts; ask me to blink my LED so you can "
    "find me; owners can ask me to restart a service. Questions from the shop's FAQ work too."
)


def greeting(device: str) -> str:
    """A hello that says what to ask."""
    return f"Hello! I'm {device}. Ask me how I'm doing, about my network or model, or say help."


def thanks() -> str:
    """A reply to thanks."""
    return "You're welcome!"


def unknown() -> str:
    """What to say when no skill fits."""
    return "Sorry, I can't help with that. Say help to see what I can do."


def device_status(device: str, state: str, facts: DeviceFacts) -> str:
    """CPU, memory, disk, temperature and uptime in two sentences."""
    temp = f", {facts.temp_c:.0f} °C" if facts.temp_c is not None else ""
    return (
        f"{device} is {state}. CPU {facts.cpu_percent:.0f}% (load {facts.load_1m:.2f} on "
        f"{facts.cores} cores){temp}, memory {facts.memory_used_percent:.0f}% of "
        f"{facts.memory_total_mib:.0f} MiB, disk {facts.disk_used_percent:.0f}% used "
        f"({facts.disk_free_gib:.1f} GiB free), up {_duration(facts.uptime_s)}."
    )


def network_status(interfaces: Sequence[Interface]) -> str:
    """Which interfaces are up and their addresses."""
    up = [i for i in interfaces if i.up and i.ipv4]
    if not up:
        return "No network interface is up with an address: I'm offline, but I still answer here."
    parts = [
        f"{i.name} {', '.join(i.ipv4)}" + (f" ({i.speed_mbps} Mb/s)" if i.speed_mbps else "")
        for i in up
    ]
    return "Online: " + "; ".join(parts) + "."


def model_info(info: Mapping[str, Any]) -> str:
    """The model, its runtime and its latency."""
    latency = (
        f", p50 {info['p50_ms']:.1f} ms / p95 {info['p95_ms']:.1f} ms over {info['count']} messages"
        if info.get("p50_ms") is not None
        else ""
    )
    return (
        f"I run {info.get('model', '?')} version {info.get('model_version', '?')} "
        f"({info.get('quantization', 'int8')}) on {info.get('runtime', '?')} with "
        f"{info.get('threads', '?')} thread(s){latency}."
    )


def recent_alerts(alerts: Sequence[Alert], clock_now: float) -> str:
    """The newest alerts with their age."""
    if not alerts:
        return "No alerts recently: everything has run cleanly."
    lines = [f"{_duration(clock_now - a.ts)} ago: {a.message}" for a in alerts]
    return "Recent alerts:\n" + "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
