"""The fleet client as a supervised service: sessions, reconnects, the telemetry outbox.

`FleetService` drives a `FleetProtocol` with real inputs — MQTT sessions through
`MqttConnection`, health samples from an injected callable, the injected clock — and carries
out its outputs: publishes, subscriptions and device actions. Per CONNECT it bumps the
persisted session counter `sid` first (research fleet-ota §4.3). While the broker is away,
durable publishes (health, reported state) wait in a bounded SQLite outbox; on the next
session they go out first, only the newest per retained topic, then birth, status and a fresh
health snapshot. A clean stop publishes `disconnected` and sends DISCONNECT with reason 0, so
the broker drops the will. This module holds no protocol rules of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.clock import Clock
from appliance.errors import ApplianceError
from appliance.fleet.client import Broker, Closed, MqttConnection, MqttError
from appliance.fleet.protocol import (
    ApplyConfig,
    FactoryReset,
    FleetProtocol,
    Identify,
    Output,
    Publish,
    Reboot,
    RestartComponent,
    SetLogLevel,
    Subscribe,
)
from appliance.fleet.signing import parse_public_key
from appliance.store import DurableQueue, Overflow, Store
from appliance.supervisor import Condition, RestartPolicy, ServiceContext

_LOGGER = logging.getLogger(__name__)

SID_KEY = "fleet.sid"
OUTBOX = "fleet.telemetry"
OUTBOX_MAX = 500
ACK_TIMEOUT_S = 5.0
STABLE_SESSION_S = 30.0
RECONNECT = RestartPolicy(base_s=1.0, factor=2.0, max_s=60.0, jitter=0.2)

MqttVersion = Literal["5", "3.1.1", "auto"]
HealthSource = Callable[[], Awaitable[Mapping[str, Any]]]


class DeviceActions(Protocol):
    """What fleet commands may do to the device; bootstrap binds these to the supervisor."""

    def identify(self, duration_s: float) -> None:
        """Show the identify LED pattern."""
        ...

    def restart(self, component: str) -> None:
        """Restart one supervised service; KeyError when there is no such service."""
        ...

    def set_log_level(self, level: str) -> None:
        """Change the log level of the whole appliance."""
        ...

    async def reboot(self) -> None:
        """Reboot the device."""
        ...

    async def factory_reset(self) -> None:
        """Wipe provisioning and data, then reboot."""
        ...


class FleetService:
    """Keeps one MQTT session to the fleet broker alive and speaks the fleet protocol on it."""

    name = "fleet"

    def __init__(
        self,
        protocol: FleetProtocol,
        broker: Broker,
        *,
        store: Callable[[], Awaitable[Store]],
        clock: Clock,
        health: HealthSource,
        device: DeviceActions,
        mqtt_version: MqttVersion = "auto",
        command_key_files: Sequence[Path] = (),
        reconnect: RestartPolicy = RECONNECT,
        outbox_max: int = OUTBOX_MAX,
        rng: random.Random | None = None,
    ) -> None:
        self.protocol = protocol
        self._broker = broker
        self._store_fn = store
        self._clock = clock
        self._health = health
        self._device = device
        self._version = mqtt_version
        self._key_files = tuple(command_key_files)
        self._reconnect = reconnect
        self._outbox_max = outbox_max
        self._rng = rng or random.Random()
        self._conn: MqttConnection | None = None
        self._outbox: DurableQueue | None = None

    @property
    def connected(self) -> bool:
        """Whether a broker session is up now."""
        return self._conn is not None and self._conn.connected

    async def run(self, ctx: ServiceContext) -> None:
        """Connect, serve and reconnect until cancelled; say goodbye on the way out."""
        if self._key_files:
            keys = await asyncio.to_thread(load_command_keys, self._key_files)
            self.protocol.set_command_keys(keys)
            _LOGGER.info("Trusting %d fleet command key(s)", len(keys))
        store = await self._store_fn()
        self._outbox = store.queue(
            OUTBOX, max_items=self._outbox_max, overflow=Overflow.DROP_OLDEST
        )
        ctx.set_condition(Condition.OFFLINE, True, "connecting to the fleet broker")
        ctx.ready()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._sample_loop())
            group.create_task(self._session_loop(ctx, store))

    # --- sessions ---------------------------------------------------------------------------

    async def _session_loop(self, ctx: ServiceContext, store: Store) -> None:
        mqtt5, failures = self._version != "3.1.1", 0
        while True:
            sid = await store.kv.increment(SID_KEY)
            will = self.protocol.begin_session(sid, self._clock.time())
            conn = MqttConnection(replace(self._broker, mqtt5=mqtt5), will, self._clock)
            try:
                await conn.connect()
            except MqttError as err:
                if err.unsupported_protocol and mqtt5 and self._version == "auto":
                    _LOGGER.info("Broker does not speak MQTT 5; using 3.1.1")
                    mqtt5 = False
                    continue
                failures += 1
                await self._wait_to_retry(failures, str(err))
                continue
            _LOGGER.info("Connected to the fleet broker %s (session %d)", self._where, sid)
            ctx.set_condition(Condition.OFFLINE, False)
            connected_at = self._clock.monotonic()
            reason = await self._serve(conn)
            ctx.set_condition(Condition.OFFLINE, True, reason)
            # A session the broker keeps closing at once backs off like a refused CONNECT.
            stable = self._clock.monotonic() - connected_at >= STABLE_SESSION_S
            failures = 1 if stable else failures + 1
            await self._wait_to_retry(failures, reason)

    async def _wait_to_retry(self, failures: int, reason: str) -> None:
        delay_s = self._reconnect.delay_s(failures, self._rng)
        _LOGGER.warning(
            "Fleet broker %s unavailable (%s); retrying in %.1f s", self._where, reason, delay_s
        )
        await self._clock.sleep(delay_s)

    @property
    def _where(self) -> str:
        return f"{self._broker.host}:{self._broker.port}"

    async def _serve(self, conn: MqttConnection) -> str:
        """Run one session until it closes; the reason it closed."""
        self._conn = conn
        try:
            outputs = self.protocol.connected(self._clock.time(), mqtt5=conn.broker.mqtt5)
            subscriptions = [o for o in outputs if isinstance(o, Subscribe)]
            await self._execute(subscriptions)
            await self._drain_outbox(conn)
            await self._execute([o for o in outputs if not isinstance(o, Subscribe)])
            while True:
                event = await conn.events.get()
                if isinstance(event, Closed):
                    return f"session closed: {event.reason}"
                now = self._clock.time()
                await self._execute(
                    self.protocol.message(event.topic, event.payload, event.props, now)
                )
        except asyncio.CancelledError:
            await self._goodbye(conn)
            raise
        finally:
            self._conn = None
            await conn.close()

    async def _goodbye(self, conn: MqttConnection) -> None:
        """Publish `disconnected`, wait for the broker to take it, then DISCONNECT cleanly."""
        if not conn.connected:
            return
        (status,) = [
            o for o in self.protocol.shutdown(self._clock.time()) if isinstance(o, Publish)
        ]
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                await conn.publish(status)
        except (TimeoutError, MqttError) as err:
            _LOGGER.debug("Final status not acknowledged: %s", err)
        await conn.disconnect()
        _LOGGER.info("Disconnected from the fleet broker %s", self._where)

    # --- health -------------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        while True:
            sample = dict(await self._health())
            queues = dict(sample.get("queues") or {})
            queues["telemetry"] = await self._outbox_depth()
            sample["queues"] = queues
            await self._execute(self.protocol.health(sample, self._clock.time()))
            await self._clock.sleep(self.protocol.telemetry.health_min_interval_s)

    async def _outbox_depth(self) -> int:
        return await self._outbox.depth() if self._outbox is not None else 0

    # --- outputs ------------------------------------------------------------------------------

    async def _execute(self, outputs: Sequence[Output]) -> None:
        """Carry out the protocol's outputs in order."""
        sent: list[asyncio.Future[None]] = []
        for output in outputs:
            if isinstance(output, Publish):
                await self._publish(output, sent)
            elif isinstance(output, Subscribe):
                if self._conn is not None:
                    self._conn.subscribe(output.filters)
            elif isinstance(output, Reboot | FactoryReset):
                await self._acknowledged(sent)
                await self._restart_device(output)
            else:
                await self._act(output)

    async def _publish(self, message: Publish, sent: list[asyncio.Future[None]]) -> None:
        conn = self._conn
        if conn is not None and conn.connected:
            future = conn.publish(message)
            future.add_done_callback(_retrieve)
            sent.append(future)
        elif message.durable and self._outbox is not None:
            await self._outbox.put(_encode_queued(message), now=self._clock.time())
        else:
            _LOGGER.debug("Offline: dropping a publish on %s", message.topic)

    async def _acknowledged(self, sent: list[asyncio.Future[None]]) -> bool:
        """Wait until the broker has every message sent so far; False on timeout or error."""
        if not sent:
            return True
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                await asyncio.gather(*sent)
        except (TimeoutError, MqttError):
            return False
        return True

    async def _act(self, action: Output) -> None:
        if isinstance(action, Identify):
            self._device.identify(action.duration_s)
        elif isinstance(action, SetLogLevel):
            self._device.set_log_level(action.level)
        elif isinstance(action, ApplyConfig):
            _LOGGER.info("Fleet telemetry settings now %s", action.telemetry)
        elif isinstance(action, RestartComponent):
            await self._restart_component(action)

    async def _restart_component(self, action: RestartComponent) -> None:
        try:
            self._device.restart(action.component)
        except KeyError:
            outputs = self.protocol.complete(
                action.request_id, self._clock.time(), ok=False, detail="unknown_component"
            )
        else:
            outputs = self.protocol.complete(
                action.request_id,
                self._clock.time(),
                ok=True,
                result={"component": action.component},
            )
        await self._execute(outputs)

    async def _restart_device(self, action: Reboot | FactoryReset) -> None:
        what = "reboot" if isinstance(action, Reboot) else "factory_reset"
        _LOGGER.warning("Fleet command %s: %s", action.request_id, what)
        try:
            if isinstance(action, Reboot):
                await self._device.reboot()
            else:
                await self._device.factory_reset()
        except (OSError, RuntimeError, NotImplementedError) as err:
            _LOGGER.error("Fleet command %s (%s) failed: %s", action.request_id, what, err)
            outputs = self.protocol.complete(
                action.request_id, self._clock.time(), ok=False, detail=f"{what}_failed"
            )
            await self._execute(outputs)

    # --- outbox -------------------------------------------------------------------------------

    async def _drain_outbox(self, conn: MqttConnection) -> None:
        """Send what waited while offline: everything, but only the newest per retained topic."""
        outbox = self._outbox
        if outbox is None:
            return
        items = await outbox.peek(self._outbox_max, now=self._clock.time())
        if not items:
            return
        queued = [_decode_queued(item.payload) for item in items]
        newest = {m.topic: i for i, m in enumerate(queued) if m is not None and m.retain}
        sent = [
            conn.publish(m)
            for i, m in enumerate(queued)
            if m is not None and (not m.retain or newest[m.topic] == i)
        ]
        for future in sent:
            future.add_done_callback(_retrieve)
        if await self._acknowledged(sent):
            await outbox.ack(item.id for item in items)
            _LOGGER.info("Sent %d of %d queued fleet messages", len(sent), len(items))


def load_command_keys(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    """The public keys in `paths` (files, or directories of *.pub / *.pem); blocking I/O."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".pub", ".pem")))
        else:
            files.append(path)
    keys = []
    for file in files:
        try:
            keys.append(parse_public_key(file.read_bytes()))
        except (OSError, ValueError, UnsupportedAlgorithm) as err:
            raise CommandKeyError(
                f"Fleet command key {file} is unusable ({err}); the fleet client did not start"
            ) from err
    return keys


class CommandKeyError(ApplianceError):
    """A configured fleet command public key could not be read or parsed."""

    code = "fleet_command_key_invalid"


def _encode_queued(message: Publish) -> str:
    return json.dumps(
        {
            "topic": message.topic,
            "payload": message.payload.decode("utf-8"),
            "qos": message.qos,
            "retain": message.retain,
        }
    )


def _decode_queued(raw: bytes) -> Publish | None:
    try:
        data = json.loads(raw)
        return Publish(
            str(data["topic"]),
            str(data["payload"]).encode(),
            int(data["qos"]),
            bool(data["retain"]),
        )
    except (ValueError, KeyError, TypeError):
        _LOGGER.warning("Dropping an unreadable queued fleet message")
        return None


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a publish's failure as seen: the session's end already reports it."""
    if not future.cancelled():
        future.exception()
