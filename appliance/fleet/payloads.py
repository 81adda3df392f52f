"""Fleet payloads: builders and strict parsers for every JSON message (research fleet-ota §4.4).

Pure: bytes or values in, dicts and bytes out. Every device → fleet payload starts with the
envelope `v`, `ts` (ms since the epoch, UTC), `sid` (the persisted session counter) and `seq`
(per session). Parsers raise `PayloadError` and nothing else, whatever the bytes. Health
payloads are built from an allowlist of fields, so no message text or user id can slip through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ApplianceError

VERSION = 1
MAX_PAYLOAD_BYTES = 128 * 1024  # AWS IoT's limit; research §4.1 rule 2
MAX_ID_CHARS = 128


class PayloadError(ApplianceError, ValueError):
    """A fleet payload that is not valid JSON of the expected shape."""

    code = "fleet_payload_invalid"


class CommandStatus(StrEnum):
    """Where a command is (homie-esp8266's HTTP-like codes go with each)."""

    ACCEPTED = "accepted"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


class Rejection(StrEnum):
    """Stable reasons in `cmd/res` `detail` for a rejected command, with their codes."""

    MALFORMED = "malformed"
    BAD_ARGS = "bad_args"
    SIGNATURE_REQUIRED = "signature_required"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_COMMAND = "unknown_command"
    EXPIRED = "expired"
    RATE_LIMITED = "rate_limited"

    @property
    def http(self) -> int:
        """The HTTP-like code `cmd/res` carries for this rejection."""
        return _REJECTION_CODES[self]


_REJECTION_CODES = {
    Rejection.MALFORMED: 400,
    Rejection.BAD_ARGS: 422,
    Rejection.SIGNATURE_REQUIRED: 401,
    Rejection.BAD_SIGNATURE: 403,
    Rejection.UNKNOWN_COMMAND: 404,
    Rejection.EXPIRED: 410,
    Rejection.RATE_LIMITED: 429,
}


@dataclass(frozen=True)
class Envelope:
    """The fields every device → fleet payload starts with."""

    ts_ms: int
    sid: int
    seq: int

    def fields(self) -> dict[str, int]:
        """The envelope as payload keys."""
        return {"v": VERSION, "ts": self.ts_ms, "sid": self.sid, "seq": self.seq}


def encode(document: Mapping[str, Any]) -> bytes:
    """A payload as compact UTF-8 JSON."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_object(payload: bytes) -> dict[str, Any]:
    """A JSON object from payload bytes; PayloadError for anything else."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"Payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PayloadError(f"Payload is not UTF-8 JSON: {err}") from None
    if not isinstance(value, dict):
        raise PayloadError(f"Payload is JSON {type(value).__name__}, not an object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Strict(BaseModel):
    """A payload shape: strict types, frozen; unknown keys are ignored (newer senders)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], document: Mapping[str, Any], what: str) -> _M:
    try:
        return model.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise PayloadError(f"Invalid {what}: {where}: {first['msg']}") from None
    except (RecursionError, ValueError) as err:
        raise PayloadError(f"Invalid {what}: {err}") from None


class _Request(_Strict):
    v: Literal[1]
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    cmd: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    ts: int = Field(ge=0)
    expires: int | None = None
    sig: str | None = None


@dataclass(frozen=True)
class CommandRequest:
    """A parsed `cmd/req`; `document` is the whole request as received (it is what is signed)."""

    id: str
    cmd: str
    args: Mapping[str, Any]
    ts_ms: int
    expires_ms: int | None
    sig: str | None
    document: Mapping[str, Any]


def parse_command(payload: bytes) -> CommandRequest:
    """A `cmd/req` payload; PayloadError when it is not one."""
    document = decode_object(payload)
    request = _validate(_Request, document, "command request")
    return CommandRequest(
        request.id,
        request.cmd,
        request.args,
        request.ts,
        request.expires,
        request.sig,
        document,
    )


def request_id_of(payload: bytes) -> str:
    """The `id` of a request that failed to parse, when one can be found; else ""."""
    try:
        value = decode_object(payload).get("id")
    except PayloadError:
        return ""
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS else ""


def command_result(
    *,
    request_id: str,
    status: CommandStatus,
    code: int,
    detail: str | None = None,
    result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of a `cmd/res` (without the envelope)."""
    return {
        "id": request_id,
        "status": str(status),
        "code": code,
        "detail": detail,
        "result": dict(result) if result is not None else None,
    }


def rejection(request_id: str, reason: Rejection, message: str | None = None) -> dict[str, Any]:
    """A `cmd/res` body for a rejected command; `detail` is the stable reason."""
    result = {"message": message} if message else None
    return command_result(
        request_id=request_id,
        status=CommandStatus.REJECTED,
        code=reason.http,
        detail=str(reason),
        result=result,
    )


class _Result(_Strict):
    v: Literal[1]
    ts: int
    sid: int
    seq: int
    id: str
    status: Literal["accepted", "done", "rejected", "failed"]
    code: int = Field(ge=100, le=599)
    detail: str | None = None
    result: dict[str, Any] | None = None


def parse_result(payload: bytes) -> dict[str, Any]:
    """A `cmd/res` payload as a checked dict; PayloadError when it is not one."""
    document = decode_object(payload)
    _validate(_Result, document, "command result")
    return document


# --- status and birth ----------------------------------------------------------------------


class DeviceState(StrEnum):
    """The `status` states (DESIGN §9); `lost` is only ever sent by the broker (the will)."""

    BOOTING = "booting"
    READY = "ready"
    DEGRADED = "degraded"
    UPDATING = "updating"
    REBOOTING = "rebooting"
    DISCONNECTED = "disconnected"
    LOST = "lost"


def status_payload(
    envelope: Envelope,
    state: DeviceState,
    *,
    reason: str | None = None,
    versions: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """A `status` document."""
    return {
        **envelope.fields(),
        "state": str(state),
        "reason": reason,
        "versions": dict(versions or {}),
    }


class _Status(_Strict):
    v: Literal[1]
    ts: int
    sid: int = Field(ge=0)
    seq: int = Field(ge=0)
    state: Literal["booting", "ready", "degraded", "updating", "rebooting", "disconnected", "lost"]
    reason: str | None = None


def parse_status(payload: bytes) -> dict[str, Any]:
    """A `status` payload as a checked dict; PayloadError when it is not one."""
    document = decode_object(payload)
    _validate(_Status, document, "status")
    return document


def birth_payload(
    envelope: Envelope, inventory: Mapping[str, Any], capabilities: Mapping[str, Any]
) -> dict[str, Any]:
    """A `birth` document: the inventory (hw, sw, model, adapters) and what the device can do."""
    keep = ("hw", "sw", "model", "adapters", "metrics")
    return {
        **envelope.fields(),
        **{key: inventory[key] for key in keep if key in inventory},
        "capabilities": dict(capabilities),
    }


# --- health -----------------------------------------------------------------------------------


class HealthKind(StrEnum):
    """Why a health report was sent: the periodic snapshot or a significant change."""

    SNAPSHOT = "snapshot"
    DELTA = "delta"


Number = float | int


class _Net(_Strict):
    iface: str | None = None
    ip: str | None = None
    rssi_dbm: Number | None = None


class _Engine(_Strict):
    p50_ms: Number | None = None
    p95_ms: Number | None = None
    count: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)


class _Queues(_Strict):
    inbox: int = Field(default=0, ge=0)
    outbox: int = Field(default=0, ge=0)
    telemetry: int = Field(default=0, ge=0)


class _Component(_Strict):
    name: str = Field(min_length=1, max_length=64)
    state: str = Field(min_length=1, max_length=32)
    restarts: int = Field(default=0, ge=0)


class _Model(_Strict):
    name: str | None = None
    version: str | None = None
    sha256: str | None = None


class _Throttled(_Strict):
    now: list[str] = Field(default_factory=list)
    since_boot: list[str] = Field(default_factory=list)


class Health(_Strict):
    """The health facts a report may carry: an allowlist, so nothing private gets in."""

    overall: Literal["healthy", "degraded", "unhealthy"]
    uptime_s: Number = Field(ge=0)
    cpu_pct: Number | None = Field(default=None, ge=0, le=100)
    cpu_temp_c: Number | None = None
    throttled: _Throttled | None = None
    mem_used_mb: Number = Field(ge=0)
    mem_total_mb: Number = Field(ge=0)
    disk_used_mb: Number | None = Field(default=None, ge=0)
    disk_total_mb: Number | None = Field(default=None, ge=0)
    net: _Net = _Net()
    engine: _Engine = _Engine()
    queues: _Queues = _Queues()
    components: list[_Component] = Field(default_factory=list)
    model: _Model = _Model()

    @property
    def mem_pct(self) -> float | None:
        """Memory in use as a percentage of the total."""
        if not self.mem_total_mb:
            return None
        return 100.0 * float(self.mem_used_mb) / float(self.mem_total_mb)

    def component_states(self) -> dict[str, str]:
        """Each component's state by name."""
        return {c.name: c.state for c in self.components}


def check_health(sample: Mapping[str, Any]) -> Health:
    """The health facts of a sample, unknown keys dropped; PayloadError if a field is wrong."""
    return _validate(Health, sample, "health sample")


def health_payload(envelope: Envelope, kind: HealthKind, health: Health) -> dict[str, Any]:
    """A `health` document; always complete, because the broker retains the last one."""
    return {**envelope.fields(), "kind": str(kind), **health.model_dump(mode="json")}


class _HealthReport(Health):
    v: Literal[1]
    ts: int
    sid: int
    seq: int
    kind: Literal["snapshot", "delta"]


def parse_health(payload: bytes) -> dict[str, Any]:
    """A `health` payload as a checked dict; PayloadError when it is not one."""
    document = decode_object(payload)
    _validate(_HealthReport, document, "health report")
    return document


# --- desired and reported state ------------------------------------------------------------


class _Desired(_Strict):
    v: Literal[1]
    version: int = Field(ge=0)
    desired: dict[str, Any]


@dataclass(frozen=True)
class DesiredState:
    """A parsed `state/desired`: its version and the (not yet checked) desired values."""

    version: int
    desired: Mapping[str, Any]


def parse_desired(payload: bytes) -> DesiredState:
    """A `state/desired` payload; PayloadError when it is not one."""
    document = _validate(_Desired, decode_object(payload), "desired state")
    return DesiredState(document.version, document.desired)


def reported_payload(
    envelope: Envelope,
    version: int,
    reported: Mapping[str, Any],
    errors: Mapping[str, str],
) -> dict[str, Any]:
    """A `state/reported` document: the effective values and why any desired one was refused."""
    return {
        **envelope.fields(),
        "version": version,
        "reported": dict(reported),
        "errors": dict(errors),
    }


def is_finite_number(value: Any) -> bool:
    """Whether `value` is an int or float (not a bool) and finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
