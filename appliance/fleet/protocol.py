"""The device's fleet protocol, sans I/O (DESIGN §9, research fleet-ota §4.3-§4.4).

`FleetProtocol` takes inputs — a new session, the broker connection, an MQTT message, a health
sample, a tick of the clock, a finished device action, shutdown — and returns outputs: MQTT
publishes and subscriptions, and device actions (identify, restart a component, set the log
level, reboot, factory reset, apply config) for the client to carry out. Time is always an
argument (`now`, seconds since the epoch); this module never reads a clock, never touches a
socket and never logs message contents.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.fleet import payloads
from appliance.fleet.desired import LOG_LEVELS, Telemetry, apply_desired
from appliance.fleet.payloads import (
    CommandRequest,
    CommandStatus,
    DeviceState,
    Envelope,
    Health,
    HealthKind,
    PayloadError,
    Rejection,
)
from appliance.fleet.signing import verify_command
from appliance.fleet.topics import DEVICE_INBOUND, RETAINED, DeviceTopics, Leaf

_LOGGER = logging.getLogger(__name__)

REMEMBERED_COMMANDS = 256
REBIRTH_COOLDOWN_S = 30.0
IDENTIFY_DEFAULT_S = 15.0
IDENTIFY_MAX_S = 300.0
SIGNED_COMMANDS = frozenset({"reboot", "factory_reset"})
COMMANDS = ("identify", "rebirth", "restart", "set_log_level", "reboot", "factory_reset")


@dataclass(frozen=True)
class Rbe:
    """Report-by-exception thresholds (balena's: cpu 20 points, temperature 5 °C, memory 10)."""

    cpu_pct: float = 20.0
    cpu_temp_c: float = 5.0
    mem_pct: float = 10.0


@dataclass(frozen=True)
class Props:
    """The MQTT 5 properties the protocol reads or sets (ignored on 3.1.1)."""

    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry_s: int | None = None
    will_delay_s: int | None = None


@dataclass(frozen=True)
class Publish:
    """Publish `payload` on `topic`; `durable` ones wait in the outbox while offline."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Props = Props()
    durable: bool = False


@dataclass(frozen=True)
class Subscribe:
    """Subscribe to these topic filters (QoS 1)."""

    filters: tuple[str, ...]


@dataclass(frozen=True)
class Identify:
    """Show the identify LED pattern for `duration_s`."""

    duration_s: float


@dataclass(frozen=True)
class RestartComponent:
    """Restart one supervised service; report back with `FleetProtocol.complete`."""

    component: str
    request_id: str


@dataclass(frozen=True)
class SetLogLevel:
    """Change the appliance's log level."""

    level: str


@dataclass(frozen=True)
class Reboot:
    """Reboot the device (after the `rebooting` status has been published)."""

    request_id: str


@dataclass(frozen=True)
class FactoryReset:
    """Wipe provisioning and data, then reboot."""

    request_id: str


@dataclass(frozen=True)
class ApplyConfig:
    """The effective desired values after a `state/desired` document."""

    telemetry: Telemetry


Action = Identify | RestartComponent | SetLogLevel | Reboot | FactoryReset | ApplyConfig
Output = Publish | Subscribe | Action


@dataclass(frozen=True)
class Will:
    """The last will the broker publishes when the session dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    delay_s: int


@dataclass
class _HealthState:
    latest: Health | None = None
    published: Health | None = None
    published_at: float | None = None
    snapshot_at: float | None = None
    pending: bool = False


@dataclass
class _Cached:
    body: dict[str, Any]
    pending: bool = False
    reply: Props = field(default_factory=Props)


class FleetProtocol:
    """One device's side of the fleet protocol; pure state in, outputs out."""

    def __init__(
        self,
        topics: DeviceTopics,
        *,
        inventory: Mapping[str, Any],
        versions: Mapping[str, str | None],
        command_keys: Sequence[Ed25519PublicKey] = (),
        telemetry: Telemetry | None = None,
        will_delay_s: int = 30,
        rbe: Rbe = Rbe(),
        live_inventory: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.topics = topics
        # Inventory that is only known once services run (the model, the tuner's profile).
        self._live_inventory = live_inventory
        self.telemetry = telemetry or Telemetry()
        self._inventory = dict(inventory)
        self._versions = dict(versions)
        self._keys = tuple(command_keys)
        self._will_delay_s = will_delay_s
        self._rbe = rbe
        self._sid: int | None = None
        self._seq = 0
        self._mqtt5 = True
        self._was_connected = False
        self._state = DeviceState.READY
        self._reason: str | None = None
        self._health = _HealthState()
        self._commands: OrderedDict[str, _Cached] = OrderedDict()
        self._rebirth_at: float | None = None
        self._desired_version: int | None = None
        self._desired_errors: dict[str, str] = {}

    def set_command_keys(self, keys: Sequence[Ed25519PublicKey]) -> None:
        """Trust these keys (and only these) for signed commands from now on."""
        self._keys = tuple(keys)

    # --- session lifecycle ----------------------------------------------------------------

    @property
    def sid(self) -> int | None:
        """The session counter of the current (or last) session; None before the first."""
        return self._sid

    def begin_session(self, sid: int, now: float) -> Will:
        """Start session `sid` (already persisted and incremented): seq restarts, the will."""
        self._sid, self._seq = sid, 0
        lost = payloads.status_payload(self._envelope(now), DeviceState.LOST, reason=None)
        return Will(
            self.topics.leaf(Leaf.STATUS), payloads.encode(lost), 1, True, self._will_delay_s
        )

    def connected(self, now: float, *, mqtt5: bool) -> list[Output]:
        """The broker accepted the session: subscribe, then birth, status and a health snapshot."""
        if self._sid is None:
            raise RuntimeError("begin_session() must come before connected()")
        self._mqtt5, self._was_connected = mqtt5, True
        inbound = tuple(self.topics.leaf(leaf) for leaf in DEVICE_INBOUND)
        return [Subscribe((*inbound, self.topics.broadcast)), *self._birth(now)]

    def shutdown(self, now: float, state: DeviceState = DeviceState.DISCONNECTED) -> list[Output]:
        """The clean goodbye: the final status before DISCONNECT (reason 0 drops the will)."""
        self._state, self._reason = state, None
        return [self._status(now)]

    def set_state(self, state: DeviceState, now: float, reason: str | None = None) -> list[Output]:
        """The device's own state changed (ready, degraded, updating); publish it if new."""
        if (state, reason) == (self._state, self._reason):
            return []
        self._state, self._reason = state, reason
        return [self._status(now)] if self._sid is not None else []

    def _birth(self, now: float) -> list[Output]:
        outputs: list[Output] = [self._publish(Leaf.BIRTH, self._birth_doc(now)), self._status(now)]
        if self._health.latest is not None:
            outputs.append(self._publish_health(HealthKind.SNAPSHOT, self._health.latest, now))
        else:
            self._health.snapshot_at = None  # the first sample becomes the snapshot
        return outputs

    def _birth_doc(self, now: float) -> dict[str, Any]:
        capabilities = {"cmds": list(COMMANDS), "mqtt": "5.0" if self._mqtt5 else "3.1.1"}
        metrics = {
            "health_interval_s": self.telemetry.health_snapshot_s,
            "health_min_interval_s": self.telemetry.health_min_interval_s,
            "rbe": {
                "cpu_pct": self._rbe.cpu_pct,
                "cpu_temp_c": self._rbe.cpu_temp_c,
                "mem_pct": self._rbe.mem_pct,
            },
        }
        live = self._live_inventory() if self._live_inventory is not None else {}
        inventory = {**self._inventory, **live, "metrics": metrics}
        return payloads.birth_payload(self._envelope(now), inventory, capabilities)

    def _status(self, now: float) -> Publish:
        doc = payloads.status_payload(
            self._envelope(now), self._state, reason=self._reason, versions=self._versions
        )
        return self._publish(Leaf.STATUS, doc)

    # --- health ---------------------------------------------------------------------------

    def health(self, sample: Mapping[str, Any], now: float) -> list[Output]:
        """A new health sample: publish a snapshot when due, a delta on a significant change."""
        try:
            health = payloads.check_health(sample)
        except PayloadError as err:
            _LOGGER.warning("Health sample skipped: %s", err)
            return []
        self._health.latest = health
        if self._health.published is not None and self._significant(health):
            self._health.pending = True
        return [*self._follow_health(health, now), *self.tick(now)]

    def _follow_health(self, health: Health, now: float) -> list[Output]:
        """`status` follows the overall health between `ready` and `degraded`."""
        if self._state not in (DeviceState.READY, DeviceState.DEGRADED):
            return []  # rebooting or updating say more than health does
        if health.overall == "healthy":
            return self.set_state(DeviceState.READY, now) if self._was_connected else []
        state, reason = DeviceState.DEGRADED, f"health:{health.overall}"
        if not self._was_connected:
            self._state, self._reason = state, reason
            return []
        return self.set_state(state, now, reason)

    def tick(self, now: float) -> list[Output]:
        """Time passed: a due snapshot, or a delta held back by the minimum interval."""
        state, latest = self._health, self._health.latest
        if latest is None or not self._was_connected:
            return []  # before the first connection the connect snapshot says it all
        if state.snapshot_at is None or now - state.snapshot_at >= self.telemetry.health_snapshot_s:
            return [self._publish_health(HealthKind.SNAPSHOT, latest, now)]
        if state.pending and self._interval_passed(now):
            return [self._publish_health(HealthKind.DELTA, latest, now)]
        return []

    def _interval_passed(self, now: float) -> bool:
        last = self._health.published_at
        return last is None or now - last >= self.telemetry.health_min_interval_s

    def _significant(self, new: Health) -> bool:
        old = self._health.published
        assert old is not None
        return (
            old.overall != new.overall
            or old.component_states() != new.component_states()
            or _throttled_now(old) != _throttled_now(new)
            or _moved(old.cpu_pct, new.cpu_pct, self._rbe.cpu_pct)
            or _moved(old.cpu_temp_c, new.cpu_temp_c, self._rbe.cpu_temp_c)
            or _moved(old.mem_pct, new.mem_pct, self._rbe.mem_pct)
        )

    def _publish_health(self, kind: HealthKind, health: Health, now: float) -> Publish:
        state = self._health
        state.published, state.published_at, state.pending = health, now, False
        if kind is HealthKind.SNAPSHOT:
            state.snapshot_at = now
        doc = payloads.health_payload(self._envelope(now), kind, health)
        return self._publish(Leaf.HEALTH, doc, qos=0, durable=True)

    # --- inbound messages -----------------------------------------------------------------

    def message(self, topic: str, payload: bytes, props: Props, now: float) -> list[Output]:
        """An MQTT message on one of the device's subscriptions."""
        if self._sid is None:
            return []
        if topic == self.topics.leaf(Leaf.CMD_REQ):
            return self._command(payload, props, now)
        if topic == self.topics.leaf(Leaf.STATE_DESIRED):
            return self._desired(payload, now)
        if topic == self.topics.broadcast.removesuffix("#") + "rebirth":
            return self._rebirth(now) if self._rebirth_allowed(now) else []
        _LOGGER.debug("Ignoring a message on %s", topic)
        return []

    def _command(self, payload: bytes, props: Props, now: float) -> list[Output]:
        reply = self._reply_props(props)
        try:
            request = payloads.parse_command(payload)
        except PayloadError as err:
            _LOGGER.info("Rejecting a malformed command: %s", err)
            body = payloads.rejection(payloads.request_id_of(payload), Rejection.MALFORMED)
            return [self._result(body, reply, now)]
        cached = self._commands.get(request.id)
        if cached is not None:
            self._commands.move_to_end(request.id)
            return [self._result(cached.body, reply, now)]
        return self._run_command(request, reply, now)

    def _run_command(self, request: CommandRequest, reply: Props, now: float) -> list[Output]:
        rejected = self._check(request, now)
        if rejected is not None:
            return self._finish(request.id, rejected, reply, now)
        handlers = {
            "identify": self._cmd_identify,
            "rebirth": self._cmd_rebirth,
            "restart": self._cmd_restart,
            "set_log_level": self._cmd_set_log_level,
            "reboot": self._cmd_reboot,
            "factory_reset": self._cmd_factory_reset,
        }
        return handlers[request.cmd](request, reply, now)

    def _check(self, request: CommandRequest, now: float) -> dict[str, Any] | None:
        """A rejection body for a request that must not run, else None."""
        if request.expires_ms is not None and _ms(now) > request.expires_ms:
            return payloads.rejection(request.id, Rejection.EXPIRED)
        if request.cmd not in COMMANDS:
            return payloads.rejection(request.id, Rejection.UNKNOWN_COMMAND)
        if request.sig is None and request.cmd in SIGNED_COMMANDS:
            return payloads.rejection(request.id, Rejection.SIGNATURE_REQUIRED)
        if request.sig is not None and not verify_command(request.document, self._keys):
            return payloads.rejection(request.id, Rejection.BAD_SIGNATURE)
        return None

    def _cmd_identify(self, request: CommandRequest, reply: Props, now: float) -> list[Output]:
        duration_s = request.args.get("duration_s", IDENTIFY_DEFAULT_S)
        if not payloads.is_finite_number(duration_s) or not 0 < duration_s <= IDENTIFY_MAX_S:
            return self._bad_args(request, reply, now, f"duration_s: 0 < s <= {IDENTIFY_MAX_S:g}")
        done = _done(request.id, {"duration_s": duration_s})
        return [Identify(float(duration_s)), *self._finish(request.id, done, reply, now)]

    def _cmd_rebirth(self, request: CommandRequest, reply: Props, now: float) -> list[Output]:
        if not self._rebirth_allowed(now):
            body = payloads.rejection(request.id, Rejection.RATE_LIMITED)
            return self._finish(request.id, body, reply, now)
        return [*self._rebirth(now), *self._finish(request.id, _done(request.id), reply, now)]

    def _cmd_restart(self, request: CommandRequest, reply: Props, now: float) -> list[Output]:
        component = request.args.get("component")
        known = self._health.latest.component_states() if self._health.latest else None
        if not isinstance(component, str) or not component or (known and component not in known):
            return self._bad_args(request, reply, now, "component: the name of a running service")
        accepted = _accepted(request.id)
        return [
            *self._finish(request.id, accepted, reply, now, pending=True),
            RestartComponent(component, request.id),
        ]

    def _cmd_set_log_level(self, request: CommandRequest, reply: Props, now: float) -> list[Output]:
        level = request.args.get("level")
        if level not in LOG_LEVELS:
            return self._bad_args(request, reply, now, f"level: one of {', '.join(LOG_LEVELS)}")
        done = _done(request.id, {"level": level})
        return [SetLogLevel(str(level)), *self._finish(request.id, done, reply, now)]

    def _cmd_reboot(self, request: CommandRequest, reply: Props, now: float) -> list[Output]:
        self._state, self._reason = DeviceState.REBOOTING, f"cmd:{request.id}"
        outputs = self._finish(request.id, _accepted(request.id), reply, now, pending=True)
        return [*outputs, self._status(now), Reboot(request.id)]

    def _cmd_factory_reset(self, request: CommandRequest, reply: Props, now: float) -> list[Output]:
        self._state, self._reason = DeviceState.REBOOTING, "factory_reset"
        outputs = self._finish(request.id, _accepted(request.id), reply, now, pending=True)
        return [*outputs, self._status(now), FactoryReset(request.id)]

    def _bad_args(
        self, request: CommandRequest, reply: Props, now: float, message: str
    ) -> list[Output]:
        body = payloads.rejection(request.id, Rejection.BAD_ARGS, message)
        return self._finish(request.id, body, reply, now)

    def complete(
        self,
        request_id: str,
        now: float,
        *,
        ok: bool,
        result: Mapping[str, Any] | None = None,
        detail: str | None = None,
    ) -> list[Output]:
        """A device action for command `request_id` finished: publish done or failed."""
        cached = self._commands.get(request_id)
        if cached is None or not cached.pending:
            return []
        if ok:
            return self._finish(request_id, _done(request_id, result), cached.reply, now)
        body = payloads.command_result(
            request_id=request_id,
            status=CommandStatus.FAILED,
            code=500,
            detail=detail or "failed",
            result=result,
        )
        outputs = self._finish(request_id, body, cached.reply, now)
        if self._state is DeviceState.REBOOTING:  # the reboot or reset did not happen
            self._state, self._reason = DeviceState.READY, None
            outputs.append(self._status(now))
        return outputs

    def _finish(
        self,
        request_id: str,
        body: dict[str, Any],
        reply: Props,
        now: float,
        *,
        pending: bool = False,
    ) -> list[Output]:
        self._commands[request_id] = _Cached(body, pending, reply)
        self._commands.move_to_end(request_id)
        while len(self._commands) > REMEMBERED_COMMANDS:
            self._commands.popitem(last=False)
        return [self._result(body, reply, now)]

    def _result(self, body: Mapping[str, Any], reply: Props, now: float) -> Publish:
        doc = {**self._envelope(now).fields(), **body}
        topic = reply.response_topic or self.topics.leaf(Leaf.CMD_RES)
        props = Props(correlation_data=reply.correlation_data)
        return Publish(topic, payloads.encode(doc), 1, False, props)

    def _reply_props(self, props: Props) -> Props:
        """Where to answer: the MQTT 5 response topic when usable, else `cmd/res`."""
        topic = props.response_topic
        if not self._mqtt5 or not topic or "+" in topic or "#" in topic:
            return Props(correlation_data=props.correlation_data if self._mqtt5 else None)
        return Props(response_topic=topic, correlation_data=props.correlation_data)

    def _rebirth_allowed(self, now: float) -> bool:
        last = self._rebirth_at
        return last is None or not 0 <= now - last < REBIRTH_COOLDOWN_S

    def _rebirth(self, now: float) -> list[Output]:
        self._rebirth_at = now
        return self._birth(now)

    # --- desired state --------------------------------------------------------------------

    def _desired(self, payload: bytes, now: float) -> list[Output]:
        if not payload:
            return []  # the operator cleared the retained document
        try:
            desired = payloads.parse_desired(payload)
        except PayloadError as err:
            _LOGGER.info("Ignoring a malformed desired state: %s", err)
            return [self._reported(now, {"(document)": "malformed"})]
        if self._desired_version is not None and desired.version < self._desired_version:
            return []
        if desired.version == self._desired_version:
            # The broker hands the retained document over again after every reconnect: confirm
            # it again, since a report sent just before a silent disconnect may have been lost.
            return [self._reported(now, self._desired_errors)]
        before = self.telemetry
        self.telemetry, errors = apply_desired(before, desired.desired)
        self._desired_version, self._desired_errors = desired.version, dict(errors)
        outputs: list[Output] = []
        if self.telemetry.log_level != before.log_level:
            outputs.append(SetLogLevel(self.telemetry.log_level))
        outputs.append(ApplyConfig(self.telemetry))
        outputs.append(self._reported(now, errors))
        return outputs

    def _reported(self, now: float, errors: Mapping[str, str]) -> Publish:
        version = self._desired_version if self._desired_version is not None else 0
        doc = payloads.reported_payload(
            self._envelope(now), version, self.telemetry.reported(), errors
        )
        return self._publish(Leaf.STATE_REPORTED, doc, durable=True)

    # --- envelope -------------------------------------------------------------------------

    def _envelope(self, now: float) -> Envelope:
        assert self._sid is not None
        envelope = Envelope(_ms(now), self._sid, self._seq)
        self._seq += 1
        return envelope

    def _publish(
        self, leaf: Leaf, doc: Mapping[str, Any], *, qos: int = 1, durable: bool = False
    ) -> Publish:
        retain = leaf in RETAINED
        return Publish(self.topics.leaf(leaf), payloads.encode(doc), qos, retain, durable=durable)


def _ms(now: float) -> int:
    return int(now * 1000)


def _done(request_id: str, result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return payloads.command_result(
        request_id=request_id, status=CommandStatus.DONE, code=200, result=result
    )


def _accepted(request_id: str) -> dict[str, Any]:
    return payloads.command_result(request_id=request_id, status=CommandStatus.ACCEPTED, code=202)


def _throttled_now(health: Health) -> frozenset[str]:
    return frozenset(health.throttled.now) if health.throttled else frozenset()


def _moved(old: float | None, new: float | None, threshold: float) -> bool:
    """Whether a figure appeared, vanished or moved by at least `threshold`."""
    if old is None or new is None:
        return (old is None) != (new is None)
    return abs(new - old) >= threshold
