"""The fleet as a table, built from the devices' retained status, birth and health. Pure.

Feed it `(topic, payload)` pairs in the order the broker delivers them; read rows or a JSON
document back. It applies the session rule of research fleet-ota §4.3 (Sparkplug bdSeq): a
`status` whose `sid` is smaller than the newest session seen from that device (in any of its
payloads, before or after) is stale, most often the retained will (`lost`) of a session the
device has already replaced. Retained messages arrive in no particular order, so the rule
holds whichever comes first. A payload that
does not parse never raises here: the device is shown with that part `unreadable`.

Time comes in as `now_ms` arguments; this module does no I/O and keeps no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

from appliance.fleet import payloads
from appliance.fleet.payloads import PayloadError
from appliance.fleet.topics import Leaf, TopicError, fleet_filter, parse

UNREADABLE = "unreadable"
VIEW_VERSION = 1
# Twice the 300 s health snapshot interval plus slack: a quieter device needs a look.
SILENT_AFTER_S = 900
KINDS = (Leaf.STATUS, Leaf.BIRTH, Leaf.HEALTH)


class Outcome(StrEnum):
    """What one message did to the view."""

    ACCEPTED = "accepted"
    STALE = "stale"  # an older session's status, dropped by the sid rule
    UNREADABLE = "unreadable"
    CLEARED = "cleared"  # an empty retained payload removed that part
    IGNORED = "ignored"  # not a status/birth/health topic of this fleet


@dataclass(frozen=True)
class Part:
    """One accepted retained payload of a device."""

    sid: int
    seq: int
    ts_ms: int
    document: Mapping[str, Any]


@dataclass
class _Device:
    parts: dict[Leaf, Part] = field(default_factory=dict)
    unreadable: dict[Leaf, str] = field(default_factory=dict)
    newest_sid: int = -1
    stale: int = 0

    @property
    def empty(self) -> bool:
        return not self.parts and not self.unreadable


@dataclass(frozen=True)
class DeviceRow:
    """One line of `fleet status`; None where the device has not said."""

    device: str
    state: str | None
    last_seen_ms: int | None
    model: str | None
    temp_c: float | None
    p95_ms: float | None
    queue_depth: int | None
    sid: int | None
    problems: tuple[str, ...] = ()

    def as_dict(self, now_ms: int) -> dict[str, Any]:
        """The row as JSON-ready values, with the age of the last message in seconds."""
        age = None if self.last_seen_ms is None else round((now_ms - self.last_seen_ms) / 1000, 1)
        return {
            "device": self.device,
            "state": self.state,
            "last_seen_ms": self.last_seen_ms,
            "age_s": age,
            "model": self.model,
            "temp_c": self.temp_c,
            "p95_ms": self.p95_ms,
            "queue_depth": self.queue_depth,
            "sid": self.sid,
            "problems": list(self.problems),
        }


class FleetView:
    """The latest retained status, birth and health of every device of one fleet."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self.filters = [fleet_filter(fleet, kind) for kind in KINDS]
        self._devices: dict[str, _Device] = {}

    def apply(self, topic: str, payload: bytes) -> Outcome:
        """Take one message into the view."""
        try:
            parsed = parse(topic)
        except TopicError:
            return Outcome.IGNORED
        if parsed.fleet != self.fleet or parsed.leaf not in KINDS:
            return Outcome.IGNORED
        kind = Leaf(parsed.leaf)
        device = self._devices.setdefault(parsed.device, _Device())
        outcome = _apply(device, kind, payload)
        if device.empty:
            del self._devices[parsed.device]
        return outcome

    def last_seen_ms(self, device: str) -> int | None:
        """The newest `ts` accepted from `device`."""
        known = self._devices.get(device)
        return _last_seen(known) if known else None

    def rows(self, now_ms: int) -> list[DeviceRow]:
        """Every device, sorted by id."""
        return [_row(name, d, now_ms) for name, d in sorted(self._devices.items())]

    def document(self, now_ms: int) -> dict[str, Any]:
        """The `fleet status --json` document."""
        rows = self.rows(now_ms)
        return {
            "v": VIEW_VERSION,
            "fleet": self.fleet,
            "ts": now_ms,
            "counts": _counts(rows),
            "devices": [row.as_dict(now_ms) for row in rows],
        }


def _apply(device: _Device, kind: Leaf, payload: bytes) -> Outcome:
    if not payload:
        device.parts.pop(kind, None)
        device.unreadable.pop(kind, None)
        return Outcome.CLEARED
    try:
        part = _parse(kind, payload)
    except PayloadError as err:
        device.parts.pop(kind, None)
        device.unreadable[kind] = str(err)
        return Outcome.UNREADABLE
    if kind is Leaf.STATUS and part.sid < device.newest_sid:
        device.stale += 1
        return Outcome.STALE
    device.newest_sid = max(device.newest_sid, part.sid)
    device.unreadable.pop(kind, None)
    device.parts[kind] = part
    return Outcome.ACCEPTED


_PARSERS = {
    Leaf.STATUS: payloads.parse_status,
    Leaf.HEALTH: payloads.parse_health,
    Leaf.BIRTH: payloads.decode_object,
}


def _parse(kind: Leaf, payload: bytes) -> Part:
    document = _PARSERS[kind](payload)
    sid, seq, ts_ms = (document.get(key) for key in ("sid", "seq", "ts"))
    if not (_is_int(sid) and _is_int(seq) and _is_int(ts_ms)):
        raise PayloadError(f"{kind} lacks a non-negative integer sid, seq or ts")
    return Part(sid, seq, ts_ms, document)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _last_seen(device: _Device) -> int | None:
    return max((p.ts_ms for p in device.parts.values()), default=None)


def _row(name: str, device: _Device, now_ms: int) -> DeviceRow:
    status = device.parts.get(Leaf.STATUS)
    stale = device.stale
    if status is not None and status.sid < device.newest_sid:
        # A newer session's birth or health came after this status: the retained status is
        # an older session's (a late will), whatever order the broker delivered them in.
        status, stale = None, stale + 1
    health = device.parts.get(Leaf.HEALTH)
    birth = device.parts.get(Leaf.BIRTH)
    health_doc = health.document if health else {}
    state = status.document.get("state") if status else None
    if Leaf.STATUS in device.unreadable:
        state = UNREADABLE
    last_seen = _last_seen(device)
    return DeviceRow(
        device=name,
        state=state if isinstance(state, str) else None,
        last_seen_ms=last_seen,
        model=_model(birth.document if birth else {}, health_doc, status),
        temp_c=_number(health_doc.get("cpu_temp_c")),
        p95_ms=_number(_get(health_doc, "engine", "p95_ms")),
        queue_depth=_queue_depth(health_doc.get("queues")) if health else None,
        sid=status.sid if status else None,
        problems=tuple(_problems(device, stale, state, health, now_ms)),
    )


def _problems(
    device: _Device, stale: int, state: object, health: Part | None, now_ms: int
) -> Iterable[str]:
    for kind, reason in sorted(device.unreadable.items()):
        yield f"{kind} {UNREADABLE}: {reason[:120]}"
    if stale:
        yield f"ignored {stale} status message(s) of an older session"
    if health and state not in ("lost", "disconnected", "rebooting"):
        silent_s = (now_ms - health.ts_ms) / 1000
        if silent_s > SILENT_AFTER_S:
            yield f"no health for {format_age(silent_s)}"
    if health and health.document.get("overall") not in (None, "healthy"):
        yield f"health {health.document.get('overall')}"


def _model(birth: Mapping[str, Any], health: Mapping[str, Any], status: Part | None) -> str | None:
    for source in (health.get("model"), birth.get("model")):
        if isinstance(source, Mapping) and isinstance(source.get("name"), str):
            version = source.get("version")
            return f"{source['name']}@{version}" if isinstance(version, str) else source["name"]
    versions = status.document.get("versions") if status else None
    model = versions.get("model") if isinstance(versions, Mapping) else None
    return model if isinstance(model, str) else None


def _get(document: Mapping[str, Any], *keys: str) -> object:
    value: object = document
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _queue_depth(queues: object) -> int | None:
    if not isinstance(queues, Mapping):
        return None
    depths = [v for v in queues.values() if isinstance(v, int) and not isinstance(v, bool)]
    return sum(depths) if depths else None


def format_age(seconds: float) -> str:
    """A short human age: `4s`, `12m`, `3h`, `2d`."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


COLUMNS = ("DEVICE", "STATE", "LAST SEEN", "MODEL", "TEMP", "P95", "QUEUE")


def render_table(rows: list[DeviceRow], now_ms: int) -> str:
    """The rows as an aligned text table, problems indented under their device."""
    cells = [COLUMNS] + [_cells(row, now_ms) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if index:
            lines += [f"    ! {_printable(problem)}" for problem in rows[index - 1].problems]
    if not rows:
        lines.append("(no devices have reported)")
    else:
        counts = _counts(rows)
        states = ", ".join(f"{n} {state}" for state, n in counts.items())
        lines += ["", f"{len(rows)} device{'s' if len(rows) != 1 else ''}: {states}"]
    return "\n".join(lines)


def _counts(rows: list[DeviceRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        key = row.state or "unknown"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _cells(row: DeviceRow, now_ms: int) -> tuple[str, ...]:
    seen = "-"
    if row.last_seen_ms is not None:
        seen = f"{format_age((now_ms - row.last_seen_ms) / 1000)} ago"
    return (
        _printable(row.device),
        _printable(row.state or "-"),
        seen,
        _printable(row.model or "-")[:40],
        "-" if row.temp_c is None else f"{row.temp_c:.1f}°C",
        "-" if row.p95_ms is None else f"{row.p95_ms:.0f} ms",
        "-" if row.queue_depth is None else str(row.queue_depth),
    )


def _printable(text: str) -> str:
    # Payload text reaches a terminal: no escape sequences from a device.
    return "".join(ch if ch.isprintable() else "?" for ch in text)
